"""The pack (mer_ray.model.pack / trainer) against the readable reference (mer_ray.train.reference),
member by member, as PyTorch's ensembling tutorial checks its stacked models against a
loop over the copies. Run them all with `pytest -k reference`.

Tolerances are float32 rounding: the pack's batched matmuls (baddbmm over [K, B, D])
and the module's nn.Linear (addmm over [B, D]) round differently in the last bits.
Two things make more of those bits, neither a difference in what is computed:

- Adam's first step normalises each gradient element, g' / (|g'| + eps) with
  g' = g + weight_decay * w, so where the L2 term nearly cancels the gradient
  (|g'| ~ eps = 1e-8) the last bits decide a step of up to lr. Measured on scale-0.05
  MER2023: 6.9e-5 on 1 of 82k text weights after one step at lr 3e-3 with the
  contrastive term (g' = -8.1e-9 in the pack, -7.4e-9 in the module); a handful of such
  elements, stable afterwards.
- The contrastive term at a high learning rate makes training chaotic: a 1e-7 nudge to
  the reference's own weights after epoch 0 grew to 3e-2 by epoch 8 at lr 2e-2 on toy4
  (1e-5 without the term). So the contrastive recipe below runs at lr 5e-3.

Weights and Adam state are compared at atol 1e-5 on a recipe without the contrastive
term; the contrastive recipe on its epochs, learning rates and predictions.
"""

import numpy as np
import pytest
import torch

import mer_ray.train.reference as R
import mer_ray.train.trainer as T
from mer_ray.model import pack as M
from mer_ray.model.shape import ModelShape
from mer_ray.data.store import read_store
from mer_ray.data.synth_files import synthesize_store
from mer_ray.train.masks import PackRandom, member_key
from mer_ray.train.metrics import score as real_score
from mer_ray.train.presets import TrainConfig
from mer_ray.model.module import AttentionModel
from mer_ray.model.weights import from_state_dict, to_state_dict
from mer_ray.train.reference import train_member

SHAPE = ModelShape((("audio", 24), ("text", 40), ("video", 16)), 16, 6, True)
TOY_SHAPE = ModelShape((("audio", 32), ("video", 24)), 8, 4, False)  # 2 modalities


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread runs them faster than two, and on a shared
    machine two threads wait on each other (a 4-member pack: 0.8 s vs 8 s under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mer_store(tmp_path_factory):
    return read_store(synthesize_store(tmp_path_factory.mktemp("mer") / "store", scale=0.05))


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "store"
    return read_store(synthesize_store(path, scale=0.2, dataset="toy4"))


def config(**kw):
    base = {"hidden_dim": 16, "epochs": 6, "batch_size": 16, "dropout": 0.3,
            "modality_dropout": 0.25, "warmup": 2, "grad_clip": 1.0, "weight_decay": 5e-5,
            "lr": 1e-3, "plateau_patience": 0, "plateau_factor": 0.5, "early_stop_patience": 2}
    return TrainConfig(**{**base, **kw})


def pack_members(shape, k, seed=0):
    return [M.init_member(shape, torch.Generator().manual_seed(seed + i)) for i in range(k)]


# ---------------------------------------------------------------- conversions
@pytest.mark.parametrize("shape", [SHAPE, TOY_SHAPE], ids=["mer2023", "2-modality"])
def test_reference_state_dict_round_trip(shape):
    member = pack_members(shape, 1)[0]
    model = AttentionModel(shape)
    model.load_state_dict(to_state_dict(member), strict=True)  # every key, every shape
    back = from_state_dict(model.state_dict(), shape)
    assert list(back) == list(member)  # model.layer_shapes order
    for name in member:
        assert torch.equal(back[name], member[name]), name
    # and from the module's side: its own (random) init survives the trip
    fresh = AttentionModel(shape)
    again = to_state_dict(from_state_dict(fresh.state_dict(), shape))
    assert again.keys() == fresh.state_dict().keys()
    assert all(torch.equal(again[k], v) for k, v in fresh.state_dict().items())
    assert (model.valence is None) == (not shape.valence)


# ---------------------------------------------------------------- forward
@pytest.mark.parametrize("shape", [SHAPE, TOY_SHAPE], ids=["mer2023", "2-modality"])
def test_reference_forward_matches_pack(shape, device):
    k, batch = 5, 7
    params = {n: p.to(device) for n, p in M.stack(pack_members(shape, k)).items()}
    modules = []
    for i in range(k):
        modules.append(AttentionModel(shape, dropout=0.3).to(device))
        modules[i].load_state_dict(to_state_dict(M.unstack(params, i)))
    g = torch.Generator().manual_seed(1)
    xs = {m: torch.randn(k, batch, d, generator=g).to(device) for m, d in shape.dims}
    widths = [d for _, d in shape.dims] + [len(shape.dims) * shape.hidden]
    rand = PackRandom([member_key(i, 0) for i in range(k)], batch, widths, device)
    rand.start_epoch(3)
    drop = [m.clone() for m in rand.dropout_masks(2, 0.3)]  # the pack's own masks
    modality = rand.modality_mask(2, [0.4] * len(shape.dims))
    assert (modality == 0).any()
    for mask in (None, modality):
        out = M.forward(params, xs, mask, drop)
        for i, module in enumerate(modules):
            ref = module({m: x[i] for m, x in xs.items()}, None if mask is None else mask[i],
                         [d[i] for d in drop])
            torch.testing.assert_close(ref.logits, out.logits[i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ref.fused, out.fused[i], atol=1e-5, rtol=1e-5)
            if shape.valence:
                torch.testing.assert_close(ref.valence, out.valence[i], atol=1e-5, rtol=1e-5)
            else:
                assert ref.valence is None and out.valence is None
    # eval mode, no masks: nn.Dropout is off and the pack's forward has none
    out = M.forward(params, xs)
    for i, module in enumerate(modules):
        module.eval()
        ref = module({m: x[i] for m, x in xs.items()})
        torch.testing.assert_close(ref.logits, out.logits[i], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- training, step by step
def snapshot_pack(monkeypatch):
    """Record every live member's weights and Adam state at the end of each epoch's
    training steps (trainer._end_of_epoch is called right after them)."""
    seen = {}
    real_end = T._end_of_epoch

    def spy(data, config, epoch, live, params, opt, *rest):
        for i, m in enumerate(live):
            seen[(m.fold, m.seed, epoch)] = {
                "weights": M.unstack(params, i), "exp_avg": M.unstack(opt.m, i),
                "exp_avg_sq": M.unstack(opt.v, i), "step": opt.count[i],
                "lr": float(opt.lr[i]), "pack": len(live), "lrs": {float(x) for x in opt.lr}}
        return real_end(data, config, epoch, live, params, opt, *rest)

    monkeypatch.setattr(T, "_end_of_epoch", spy)
    return seen


def module_state(model, optimizer, shape):
    """The module's weights and Adam state in the pack's layout (via from_state_dict)."""
    named = dict(model.named_parameters())
    state = {"weights": from_state_dict({n: p.detach() for n, p in named.items()}, shape)}
    for key in ("exp_avg", "exp_avg_sq"):
        state[key] = from_state_dict({n: optimizer.state[p][key] for n, p in named.items()},
                                     shape)
    steps = {float(optimizer.state[p]["step"]) for p in named.values()}
    assert len(steps) == 1
    state["step"] = steps.pop()
    return state


def epoch_checker(seen, fold, seed, shape, compared):
    """The reference loop's on_epoch: its weights and Adam state against the pack's
    snapshot of the same member and epoch; appends each epoch checked to `compared`."""

    def check(epoch, model, optimizer):
        mine, theirs = module_state(model, optimizer, shape), seen[(fold, seed, epoch)]
        assert mine["step"] == theirs["step"], (fold, seed, epoch)
        for key in ("weights", "exp_avg", "exp_avg_sq"):
            for name, value in mine[key].items():
                where = f"{key} {name}, member ({fold}, {seed}), epoch {epoch}"
                torch.testing.assert_close(value, theirs[key][name], atol=1e-5, rtol=1e-4,
                                           msg=lambda m, where=where: f"{where}: {m}")
        compared.append(epoch)

    return check


@pytest.fixture(scope="module")
def trained_pack(mer_store, device):
    """A 4-member pack with plateau cuts and early stopping, and its epoch snapshots."""
    with pytest.MonkeyPatch.context() as mp:
        seen = snapshot_pack(mp)
        cfg = config(epochs=8, lr=2e-3)
        specs = [(0, 0), (1, 0), (2, 1), (4, 2)]
        return cfg, specs, T.train_pack(mer_store, cfg, specs, device), seen


def test_reference_training_steps_match_pack(mer_store, trained_pack, device):
    cfg, specs, results, seen = trained_pack
    runs = [r.epochs_run for r in results]
    # what the comparison must cover: members that left the pack early (compaction) and
    # members that trained side by side with different learning rates after a cut
    assert len(set(runs)) > 1 and min(runs) < cfg.epochs, runs
    assert any(len(s["lrs"]) > 1 for s in seen.values())
    assert any(s["pack"] < len(specs) for s in seen.values())
    data = T.TrainData(mer_store, cfg, device)
    for (fold, seed), pack in zip(specs, results):
        compared = []
        check = epoch_checker(seen, fold, seed, data.shape, compared)
        ref = train_member(mer_store, cfg, fold, seed, device, data=data, on_epoch=check)
        assert compared == list(range(pack.epochs_run))
        assert ref.best_epoch == pack.best_epoch and ref.epochs_run == pack.epochs_run
        assert [h["lr"] for h in ref.history] == [h["lr"] for h in pack.history]
        for mine, theirs in zip(ref.history, pack.history):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
            assert mine["val_combined"] == pytest.approx(theirs["val_combined"], abs=1e-5)
        for split, (logits, valence) in ref.predictions.items():
            p = pack.predictions[split]
            np.testing.assert_allclose(logits, p.logits, atol=1e-4, err_msg=split)
            np.testing.assert_allclose(valence, p.valence, atol=1e-4, err_msg=split)
        for name, value in from_state_dict(ref.state_dict, data.shape).items():
            torch.testing.assert_close(value.cpu(), pack.weights[name], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- the whole recipe
def test_reference_recipe_with_contrastive_and_noise(toy_store, device):
    """No valence here (toy4: F1 picks the epoch), a contrastive term, feature noise on
    two modalities, modality dropout from the warmup, plateau and early stopping."""
    cfg = config(epochs=12, lr=5e-3, dropout=0.1, contrastive_weight=0.2,
                 contrastive_temperature=0.5, feature_noise_audio=0.5, feature_noise_video=0.2,
                 warmup=2, early_stop_patience=3, plateau_patience=1)
    specs = [(0, 0), (3, 1), (1, 2)]
    results = T.train_pack(toy_store, cfg, specs, device)
    runs = [r.epochs_run for r in results]
    assert len(set(runs)) > 1, runs  # one leaves the pack early: the others train on
    # and the others' best epochs come after the warmup: noise and masks shaped them
    assert sum(r.best_epoch >= cfg.warmup + 3 for r in results) >= 2
    data = T.TrainData(toy_store, cfg, device)
    for (fold, seed), pack in zip(specs, results):
        ref = train_member(toy_store, cfg, fold, seed, device, data=data)
        assert ref.best_epoch == pack.best_epoch and ref.epochs_run == pack.epochs_run
        assert [h["lr"] for h in ref.history] == [h["lr"] for h in pack.history]
        for mine, theirs in zip(ref.history, pack.history):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
            assert mine["val_f1"] == theirs["val_f1"]
        for split, (logits, valence) in ref.predictions.items():
            assert valence is None and pack.predictions[split].valence is None
            # measured: at most 7e-5 (see the module docstring for why not 1e-7)
            np.testing.assert_allclose(logits, pack.predictions[split].logits, atol=2e-4,
                                       err_msg=split)


def test_reference_plateau_and_early_stop_rules_match_the_pack(toy_store, monkeypatch, device):
    """The trainer's hand-written plateau rule (threshold 1e-4 rel, cut only when it
    changes the lr by more than eps 1e-8) and its early stop against
    ReduceLROnPlateau and the reference loop, on a scripted held-out metric: ties,
    gains under the threshold, negative values."""
    values = [-0.5, -0.49996, -0.49996, -0.3, -0.29999, 0.2, 0.2, 0.20001, 0.2, 0.2, 0.1, 0.1,
              0.1, 0.1, 0.1]

    def scripted(calls):
        def fake(logits, labels, valence_pred=None, valence_true=None):
            out = real_score(logits, labels, valence_pred, valence_true)
            if calls[0] < len(values):
                out["f1"] = values[calls[0]]
            calls[0] += 1
            return out
        return fake

    cfg = config(epochs=len(values), hidden_dim=4, batch_size=64, lr=6e-8, warmup=9,
                 plateau_patience=1, early_stop_patience=5)
    monkeypatch.setattr(T, "score", scripted([0]))
    pack = T.train_pack(toy_store, cfg, [(0, 0)], device)[0]
    monkeypatch.setattr(R, "score", scripted([0]))
    ref = train_member(toy_store, cfg, 0, 0, device)
    lrs = [h["lr"] for h in pack.history]
    assert [h["lr"] for h in ref.history] == lrs
    # cut twice (6e-8 -> 3e-8 -> 1.5e-8), then no further: 1.5e-8 - 7.5e-9 < eps
    assert sorted(set(lrs), reverse=True) == [6e-8, 3e-8, 1.5e-8], lrs
    assert ref.best_epoch == pack.best_epoch == 7  # 0.20001 > 0.2; ties never count
    # 5 epochs after the best (epoch 12) is not enough: never before warmup + patience
    assert ref.epochs_run == pack.epochs_run == 14


# ---------------------------------------------------------------- a saved member
def test_reference_loads_a_saved_member(mer_store, trained_pack, tmp_path, device):
    from mer_ray.runs.members import weights_path, write_member
    from mer_ray.train.result import mask_key, mask_sets
    from mer_ray.model.weights import read_weights

    result = trained_pack[2][1]
    state, meta = read_weights(weights_path(write_member(result, tmp_path / "run")))
    shape = ModelShape.from_dict(meta["model"])
    model = AttentionModel(shape).to(device)
    model.load_state_dict(state, strict=True)
    data = T.TrainData(mer_store, TrainConfig(hidden_dim=shape.hidden), device)
    for split in ("test1", "test2", "test3"):
        rows = mer_store.rows(split)
        logits, valence = R.predict(model, data, rows)
        stored = result.predictions[split]
        np.testing.assert_allclose(logits, stored.logits, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(valence, stored.valence, atol=1e-5, rtol=1e-5)
        mods = mask_sets(shape.modalities)[1]  # one modality zeroed
        keep = [0.0 if m in mods else 1.0 for m in shape.modalities]
        masked, _ = R.predict(model, data, rows, keep)
        np.testing.assert_allclose(masked, stored.masked[mask_key(mods)][0], atol=1e-5,
                                   rtol=1e-5)
    assert meta["best_epoch"] == result.best_epoch
