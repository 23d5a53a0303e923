"""The GPU path: CPU-vs-CUDA agreement and no host synchronisation inside an epoch.

Every test that takes the `cuda` fixture runs only under `pytest --device cuda` on a
machine with CUDA and is skipped with the reason everywhere else (tests/conftest.py).
The guard that switches CUDA's sync-debug mode on for exactly the trainer's step loop is
checked on the CPU too, so a refactor of the loop cannot turn the GPU test into a
vacuous pass.

Tolerances, as relative norms ||gpu - cpu|| / ||cpu|| of the logits. On the CPU, inputs
perturbed by 1e-6 (relative) move the logits by about 6e-8 after one step and 2e-6
after 4 epochs, so the bounds here (1e-4, 5e-3) leave room for CUDA's other reduction
orders and for Adam's first steps, where m / sqrt(v) is about the sign of gradients that
are near zero; a real error (a wrong mask, a missed update) is far above them. tf32
rounds matmul inputs to 10-bit mantissas, bf16 to 7 bits.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import os
import sys
import textwrap
import traceback
import warnings

import numpy as np
import pytest
import torch

import mer_ray
from mer_ray.model import pack as M
from mer_ray.model.shape import ModelShape
import mer_ray.train.trainer as T
from mer_ray.data.store import read_store
from mer_ray.data.synth_files import synthesize_store
from mer_ray.train.masks import PackRandom, member_key
from mer_ray.train.presets import TrainConfig

SPLITS = ("oof", "test1", "test2", "test3")
PACKAGE = os.path.dirname(mer_ray.__file__) + os.sep


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return read_store(synthesize_store(tmp_path_factory.mktemp("st") / "store", seed=0,
                                       scale=0.05))


def config(**kw) -> TrainConfig:
    """Every path of a training step: input dropout, modality dropout from epoch 1,
    feature noise, the contrastive term, clipping, plateau LR, early stopping off."""
    base = dict(hidden_dim=32, epochs=2, batch_size=16, dropout=0.3, modality_dropout=0.3,
                warmup=1, feature_noise_audio=0.1, feature_noise_video=0.2,
                contrastive_weight=0.1, grad_clip=1.0, plateau_patience=0,
                early_stop_patience=None, weight_decay=5e-5, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def assert_close_predictions(got, want, tol, what):
    assert got.member_id == want.member_id
    for s in SPLITS:
        err = rel(got.predictions[s].logits, want.predictions[s].logits)
        assert err < tol, f"{what}: {s} logits differ by {err:.2e} (relative norm; tol {tol})"


# ---------------------------------------------------------------- the step-loop guard
def step_loop_lines(fn=T.train_pack, var: str = "s") -> tuple[int, int]:
    """First and last source line of `for <var> in range(...)` inside `fn` (the trainer's
    step loop). Fails loudly where the loop is gone, so the guard never watches nothing."""
    lines, first = inspect.getsourcelines(fn)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For)
             and isinstance(n.target, ast.Name) and n.target.id == var
             and isinstance(n.iter, ast.Call) and getattr(n.iter.func, "id", "") == "range"]
    assert len(loops) == 1, (f"{fn.__module__}.{fn.__name__} has {len(loops)} loops "
                             f"`for {var} in range(...)`; update tests/test_cuda.py's guard")
    return loops[0].lineno + first - 1, loops[0].end_lineno + first - 1


@contextlib.contextmanager
def inside_step_loop(on, off, fn=T.train_pack, var: str = "s"):
    """Call on() when the step loop of `fn` starts executing a line and off() when `fn`
    runs any line outside it (the epoch's set-up, the end-of-epoch evaluation), so a
    setting applies to the step loop and everything it calls, and nothing else.
    Yields a dict counting the switches."""
    lo, hi = step_loop_lines(fn, var)
    code = fn.__code__
    state = {"inside": False, "entered": 0}

    def local(frame, event, arg):
        if event == "line":
            now = lo <= frame.f_lineno <= hi
            if now != state["inside"]:
                state["inside"] = now
                if now:
                    state["entered"] += 1
                    on()
                else:
                    off()
        return local

    def global_trace(frame, event, arg):
        return local if frame.f_code is code else None

    previous = sys.gettrace()
    sys.settrace(global_trace)
    try:
        yield state
    finally:
        sys.settrace(previous)
        if state["inside"]:
            off()


def test_step_loop_guard_switches_around_every_epochs_steps(store):
    """On the CPU: the guard finds train_pack's step loop, switches on once per epoch
    and off again before each end-of-epoch evaluation."""
    lo, hi = step_loop_lines()
    assert hi - lo >= 10  # the whole body, not the `for` line alone
    log = []
    real_end = T._end_of_epoch

    def end_of_epoch(*args, **kw):
        log.append("eval")
        return real_end(*args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "_end_of_epoch", end_of_epoch)
        with inside_step_loop(lambda: log.append("on"), lambda: log.append("off")) as state:
            T.train_pack(store, config(epochs=3, hidden_dim=8), [(0, 0)])
    assert state["entered"] == 3
    assert log == ["on", "off", "eval"] * 3


class SyncLog:
    """Where CUDA's sync-debug mode fired, with the Python stack of each."""

    def __init__(self):
        self.sites: list[str] = []

    def hook(self, message, category, filename, lineno, file=None, line=None):
        if "synchronizing CUDA operation" in str(message):
            stack = [f for f in traceback.extract_stack()[:-1]
                     if f.filename != warnings.__file__]
            ours = [f for f in stack if f.filename.startswith(PACKAGE)] or stack
            self.sites.append(" <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} "
                                          f"{(f.line or '').strip()}" for f in ours[::-1][:3]))


@contextlib.contextmanager
def record_syncs():
    """CUDA's sync-debug mode 'warn' (every synchronising call warns) collected with its
    stack, switched on only inside train_pack's step loop."""
    log = SyncLog()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = log.hook
        try:
            with inside_step_loop(lambda: torch.cuda.set_sync_debug_mode("warn"),
                                  lambda: torch.cuda.set_sync_debug_mode(0)) as state:
                yield log, state
        finally:
            torch.cuda.set_sync_debug_mode(0)


def test_sync_record_names_the_step_loops_syncs_only(store, monkeypatch):
    """On the CPU, with CUDA's mode switch and two syncs faked (one inside the step loop,
    one in the end-of-epoch evaluation): only the first is recorded, with its site."""
    mode = {"now": 0}

    def fake_sync():
        if mode["now"] == "warn":
            warnings.warn("called a synchronizing CUDA operation")

    real_mask, real_predict = PackRandom.modality_mask, T.predict_pack

    def modality_mask(self, *args):
        fake_sync()
        return real_mask(self, *args)

    def predict_pack(*args, **kw):
        fake_sync()
        return real_predict(*args, **kw)

    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda m: mode.update(now=m))
    monkeypatch.setattr(PackRandom, "modality_mask", modality_mask)
    monkeypatch.setattr(T, "predict_pack", predict_pack)
    with record_syncs() as (log, state):
        T.train_pack(store, config(hidden_dim=8), [(0, 0)])
    assert state["entered"] == 2 and mode["now"] == 0
    # one per step of epoch 1 (modality dropout starts there), none from the evaluation
    steps = -(-len(T.make_folds(store.emotion[store.rows("train")], 5, 0)[0][0]) // 16)
    assert len(log.sites) == steps, log.sites
    assert all(site.startswith("trainer.py:") and "rand.modality_mask(" in site
               for site in log.sites), log.sites


def test_sync_debug_mode_is_seen(cuda):
    """Control: a deliberate .item() under the mode is recorded (so an empty record
    below means no sync, not a mode that never fires)."""
    log = SyncLog()
    x = torch.ones(3, device=cuda)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = log.hook
        torch.cuda.set_sync_debug_mode("warn")
        try:
            x.sum().item()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert log.sites, "torch.cuda.set_sync_debug_mode('warn') did not report .item()"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_step_loop_never_synchronises_with_the_host(cuda, store, precision):
    """Two epochs (the second with modality dropout and noise) of a 3-member pack: no
    call inside the step loop waits for the GPU. The end-of-epoch evaluation does, by
    design, and is outside the guard."""
    with record_syncs() as (log, state):
        T.train_pack(store, config(precision=precision), [(0, 0), (1, 0), (2, 1)],
                     device=cuda)
    assert state["entered"] == 2
    counts: dict[str, int] = {}
    for site in log.sites:
        counts[site] = counts.get(site, 0) + 1
    assert not counts, ("host synchronisations inside the step loop (count, innermost "
                        "mer_ray frames first):\n" +
                        "\n".join(f"{n:5d} x {site}" for site, n in counts.items()))


# ---------------------------------------------------------------- CPU vs CUDA
def test_pack_randomness_is_bitwise_the_same_on_cuda(cuda):
    keys = [member_key(s, f) for s, f in [(0, 0), (3, 2), (1, 4)]]
    widths = [40, 72, 24, 96]
    draws = {}
    for dev in ("cpu", cuda):
        r = PackRandom(keys, 16, widths, dev)
        r.start_epoch(5)
        draws[dev] = ([m.cpu().clone() for m in r.dropout_masks(7, 0.35)],
                      r.modality_mask(7, [0.2, 0.3, 0.1]).cpu(),
                      r.normal(7, 1, (16, 40)).cpu())
    for a, b in zip(draws["cpu"][0], draws[cuda][0]):
        assert torch.equal(a, b)
    assert torch.equal(draws["cpu"][1], draws[cuda][1])
    torch.testing.assert_close(draws[cuda][2], draws["cpu"][2], atol=1e-5, rtol=1e-5)


def test_forward_matches_cpu_and_reference(cuda):
    """The pack forward on CUDA equals the CPU's, and the reference nn.Module on CUDA."""
    from mer_ray.model.module import AttentionModel
    from mer_ray.model.weights import to_state_dict

    shape = ModelShape((("audio", 64), ("text", 96), ("video", 32)), 32, 6, True)
    params = M.stack([M.init_member(shape, torch.Generator().manual_seed(i)) for i in range(3)])
    g = torch.Generator().manual_seed(9)
    xs = {m: torch.randn(3, 20, d, generator=g) for m, d in shape.dims}
    mask = (torch.rand(3, 20, 3, generator=g) > 0.3).float()
    want = M.forward(params, xs, mask)
    got = M.forward({n: p.to(cuda) for n, p in params.items()},
                    {m: x.to(cuda) for m, x in xs.items()}, mask.to(cuda))
    assert rel(got.logits.cpu(), want.logits) < 1e-5
    assert rel(got.valence.cpu(), want.valence) < 1e-5
    module = AttentionModel(shape).to(cuda).eval()
    module.load_state_dict(to_state_dict(M.unstack(params, 1)))
    with torch.no_grad():
        ref = module({m: x[1].to(cuda) for m, x in xs.items()}, mask[1].to(cuda))
    assert rel(ref.logits.cpu(), want.logits[1]) < 1e-5


def test_one_training_step_matches_cpu(cuda, store):
    """A batch larger than every fold's training rows: one step per epoch, so this is
    one forward, backward, clip and Adam step of each member, then the predictions."""
    cfg = config(epochs=1, warmup=0, batch_size=512)
    specs = [(0, 0), (3, 1)]
    cpu = T.train_pack(store, cfg, specs)
    gpu = T.train_pack(store, cfg, specs, device=cuda)
    for g, c in zip(gpu, cpu):
        assert_close_predictions(g, c, 1e-4, "one step")


def test_a_few_epochs_match_cpu(cuda, store):
    cfg = config(epochs=4, warmup=2)
    specs = [(1, 0), (4, 2)]
    cpu = T.train_pack(store, cfg, specs)
    gpu = T.train_pack(store, cfg, specs, device=cuda)
    for g, c in zip(gpu, cpu):
        losses = [h["train_loss"] for h in g.history], [h["train_loss"] for h in c.history]
        assert rel(*losses) < 1e-3, losses
        assert g.best_epoch == c.best_epoch, (g.best_epoch, c.best_epoch)
        assert_close_predictions(g, c, 5e-3, "4 epochs")


@pytest.mark.parametrize("precision, tol", [("tf32", 2e-2), ("bf16", 1e-1)])
def test_reduced_precision_stays_close_to_fp32(cuda, store, precision, tol):
    """One step in tf32 / bf16 against fp32 on the GPU; the kept weights stay fp32."""
    cfg = config(epochs=1, warmup=0, batch_size=512)
    fp32 = T.train_pack(store, cfg, [(2, 0)], device=cuda)[0]
    low = T.train_pack(store, cfg.replace(precision=precision), [(2, 0)], device=cuda)[0]
    assert all(w.dtype == torch.float32 for w in low.weights.values())
    for s in SPLITS:
        err = rel(low.predictions[s].logits, fp32.predictions[s].logits)
        assert err < tol, f"{precision}: {s} logits differ from fp32 by {err:.2e}"


def test_predict_matches_cpu(cuda, store, tmp_path):
    """A run's kept members predict the same on both devices (mer_ray.predict)."""
    from mer_ray.runs.members import write_member
    from mer_ray.predict import Predictor

    run = tmp_path / "run"
    for r in T.train_pack(store, config(epochs=1, warmup=0), [(f, 0) for f in range(5)]):
        write_member(r, run)
    cpu = Predictor.load(run, device="cpu").predict_store(store, "test2")
    gpu = Predictor.load(run, device=cuda).predict_store(store, "test2")
    assert list(gpu.names) == list(cpu.names)
    assert rel(gpu.logits, cpu.logits) < 1e-5
    for mid, lg in cpu.member_logits.items():
        assert rel(gpu.member_logits[mid], lg) < 1e-5
    assert gpu.labels == cpu.labels or rel(gpu.probabilities, cpu.probabilities) < 1e-5
