"""`mer-ray bench`: the project's performance figures, side by side in one run.

Every figure is measured in the same process run (except the peak-memory figure, which
needs a fresh process of its own) so that ratios compare like with like on a machine
whose speed swings with other load. Figures:

1. feature store read vs per-sample `.npy` read of the same data;
2. the GEMM rate (torch matmuls at the model's own shapes), GFLOP/s;
3. one robust-v3 member's FLOP floor (FLOPs / GEMM rate) vs its measured wall time, the
   way nanoGPT prints MFU;
4. a K-member pack vs the same K members trained one after another (K = 5, 25);
5. peak memory of a 25-member pack (a subprocess, so the high-water mark is its own);
6. Ray overhead: the same small grid through Ray and in-process;
7. members per minute for the warmup grid (30/40/50 x seeds x 5 folds).

Each figure comes from a measurement function in MEASUREMENTS that returns Rows; adding a
figure is one function and one line there. torch, Ray and numpy are imported inside
functions only, so `mer-ray --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mer_ray.constants import MER2023, MODALITIES
from mer_ray.constants import MER2023_FEATURES as DEFAULT_FEATURES

TEST_SPLITS = MER2023.test_splits
from mer_ray.demo import DEMO_SEEDS, DEMO_WARMUPS, demo_pack_size

# The warmup grid of DESIGN.md (modality dropout from epoch 30, 40 or 50 of 100).
GRID_WARMUPS = (30, 40, 50)
GRID_EPOCHS = 100
# Forward passes per predicted sample at the end of a member: unmasked + members.MASKS (6).
PREDICTION_VARIANTS = 7
# The trainer predicts in chunks of at most this many rows (trainer.EVAL_CHUNK); the eval
# GEMM rate is measured at min(held-out rows, this).
EVAL_BATCH_CAP = 1024


# ---------------------------------------------------------------- profiles and rows
@dataclass(frozen=True)
class Profile:
    """How big each measurement is. Printed with the results, so a figure is never read
    without the epochs and scale it was taken at."""

    name: str
    read_scale: float  # synthetic MER2023 fraction for the store-read comparison
    read_repeats: int
    train_scale: float  # store the member / pack / memory figures train on
    member_epochs: int  # the single member of the FLOP-floor figure
    pack_epochs: int  # pack vs sequential
    pack_sizes: tuple[int, ...]
    peak_members: int
    peak_epochs: int
    gemm_min_s: float  # time each GEMM shape for at least this long per round
    gemm_rounds: int  # best of this many rounds over all shapes
    grid_seeds: int  # warmup grid: 3 warmups x grid_seeds x 5 folds
    grid_run_epochs: int | None  # None: extrapolate the grid rate; else measure a grid run
    ray_scale: float = 0.2  # Ray overhead: the demo grid's store
    ray_epochs: int | None = 10  # None: the full recipe (exactly the demo's members)
    ray_seeds: tuple[int, ...] = (0,)  # the full profile: the demo's seeds
    hidden_dim: int | None = None  # None: the preset's (micro shrinks the model)


PROFILES = {
    # Under 5 minutes on the 2-core development VM when it is otherwise idle.
    "quick": Profile("quick", read_scale=1.0, read_repeats=3, train_scale=1.0,
                     member_epochs=3, pack_epochs=2, pack_sizes=(5, 25), peak_members=25,
                     peak_epochs=1, gemm_min_s=0.01, gemm_rounds=5, grid_seeds=5,
                     grid_run_epochs=None),
    "full": Profile("full", read_scale=1.0, read_repeats=7, train_scale=1.0,
                    member_epochs=10, pack_epochs=5, pack_sizes=(5, 25), peak_members=25,
                    peak_epochs=1, gemm_min_s=0.05, gemm_rounds=10, grid_seeds=5,
                    grid_run_epochs=10, ray_epochs=None, ray_seeds=DEMO_SEEDS),
    # Seconds, for tests: tiny data and model; the figures mean nothing.
    "micro": Profile("micro", read_scale=0.05, read_repeats=1, train_scale=0.05,
                     member_epochs=2, pack_epochs=1, pack_sizes=(2, 3), peak_members=3,
                     peak_epochs=1, gemm_min_s=0.0002, gemm_rounds=1, grid_seeds=1,
                     grid_run_epochs=None, ray_scale=0.05, ray_epochs=2, hidden_dim=8),
}


@dataclass
class Row:
    """One figure. value None = not measured (the note says why)."""

    key: str  # stable JSON key
    name: str  # printed label
    value: float | None
    unit: str
    note: str = ""
    target: str = ""  # e.g. "<= 1.5"; empty = informational

    @property
    def met(self) -> bool | None:
        return target_met(self.value, self.target)


def target_met(value, target: str) -> bool | None:
    if value is None or not target:
        return None
    op, bound = target.split()
    bound = float(bound)
    return {"<": value < bound, "<=": value <= bound, ">": value > bound,
            ">=": value >= bound}[op]


def _ms(seconds):
    return None if seconds is None else seconds * 1e3


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


# ---------------------------------------------------------------- small helpers
_T0 = time.perf_counter()  # progress lines count from here (run_bench resets it)


def progress(msg: str) -> None:
    """What is being measured now, on stderr (stdout carries only the table). Wall time
    far above CPU time / threads, or a load average above the core count, says other
    load is slowing the figures down."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"[bench {time.perf_counter() - _T0:6.1f}s cpu {time.process_time():6.1f}s "
          f"load {load:4.1f}] {msg}",
          file=sys.stderr, flush=True)


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer reads the work's end, not its launch."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: page cache, imports
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ---------------------------------------------------------------- 1. store read
@dataclass
class StoreRead:
    samples: int
    floats: int  # per sample, all modalities
    store_s: float  # median
    npy_s: float  # median
    identical: bool

    @property
    def mb(self) -> float:
        return self.samples * self.floats * 4 / 1e6


def read_npy_tree(root: Path, names) -> dict:
    """The MERTools way: one np.load per sample and modality ({modality: [N, D]})."""
    import numpy as np

    return {m: np.stack([np.load(root / DEFAULT_FEATURES[m][0] / f"{n}.npy") for n in names])
            for m in MODALITIES}


def compare_store_read(npy_root, store_path, repeats: int) -> StoreRead:
    """Median time to read the same data from the store and from the .npy tree (from page
    cache: each reader runs once untimed first)."""
    import numpy as np

    from mer_ray.data.store import read_store

    npy_root, store_path = Path(npy_root), Path(store_path)
    store = read_store(store_path)
    t_store = median_time(lambda: read_store(store_path), repeats)
    t_npy = median_time(lambda: read_npy_tree(npy_root, store.names), repeats)
    tree = read_npy_tree(npy_root, store.names)
    same = all(np.array_equal(tree[m], store.features[m]) for m in MODALITIES)
    return StoreRead(len(store), sum(x.shape[1] for x in store.features.values()),
                     t_store, t_npy, same)


# ---------------------------------------------------------------- 2. GEMMs and FLOPs
@dataclass(frozen=True)
class Gemm:
    layer: str
    kind: str  # fwd (x W), wgrad (x^T dY), igrad (dY W^T)
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def first_layers() -> set[str]:
    """Each modality encoder's first Linear: its input is data, so no input gradient."""
    return {f"{m}.0" for m in MODALITIES}


def train_gemms(shapes, batch: int) -> list[Gemm]:
    """The GEMMs of one training step of one member on `batch` rows."""
    out = []
    for name, fan_in, fan_out in shapes:
        out.append(Gemm(name, "fwd", batch, fan_in, fan_out))
        out.append(Gemm(name, "wgrad", fan_in, batch, fan_out))
        if name not in first_layers():
            out.append(Gemm(name, "igrad", batch, fan_out, fan_in))
    return out


def eval_gemms(shapes, batch: int) -> list[Gemm]:
    return [Gemm(name, "fwd", batch, fan_in, fan_out) for name, fan_in, fan_out in shapes]


@dataclass
class FlopModel:
    train_per_row: int  # forward + backward GEMM FLOPs of one training row
    eval_per_row: int  # forward GEMM FLOPs of one row
    train_rows: int
    eval_rows: int
    final_rows: int  # rows predicted once at the end, all variants included
    epochs: int

    @property
    def train(self) -> int:
        return self.epochs * self.train_rows * self.train_per_row

    @property
    def eval(self) -> int:
        return self.epochs * self.eval_rows * self.eval_per_row

    @property
    def final(self) -> int:
        return self.final_rows * self.eval_per_row

    @property
    def total(self) -> int:
        return self.train + self.eval + self.final


def member_flops(shapes, train_rows: int, eval_rows: int, predict_rows: int,
                 epochs: int) -> FlopModel:
    """GEMM FLOPs of one member's run (`shapes` = model.layer_shapes(dims, hidden)).

    Per Linear (fan_in, fan_out) and row: forward 2*in*out; backward 2*in*out for the
    weight gradient plus 2*in*out for the input gradient, except the first layer of each
    modality encoder (its input is data and needs no gradient). Per epoch: training FLOPs
    x training rows (real rows only: the padding of a member's last short batch is waste,
    not work, so the floor leaves it out) + forward FLOPs x held-out rows (the epoch's
    evaluation). Once at the end: forward FLOPs x predict_rows x 7 (oof + test1/2/3,
    unmasked and the 6 modality masks). Bias adds, activations, loss and Adam are
    element-wise, not GEMMs, and are not counted: the floor is the GEMM time alone."""
    fwd = sum(2 * fi * fo for _, fi, fo in shapes)
    igrad = sum(2 * fi * fo for name, fi, fo in shapes if name not in first_layers())
    return FlopModel(train_per_row=2 * fwd + igrad, eval_per_row=fwd, train_rows=train_rows,
                     eval_rows=eval_rows, final_rows=PREDICTION_VARIANTS * predict_rows,
                     epochs=epochs)


def time_gemms(gemms, device: str, min_s: float, rounds: int) -> list[float]:
    """Seconds per call of a float32 matmul of each shape, best of `rounds`. A round times
    every shape once (for at least min_s each), so the repeats of one shape are spread
    over the whole measurement: a burst of other load then spoils one round, not every
    repeat. Best, not median: the floor is what the machine can do, and other load only
    ever slows a repeat down."""
    import torch

    ops = []
    for g in gemms:
        a = torch.randn(g.m, g.k, device=device)
        b = torch.randn(g.k, g.n, device=device)
        out = torch.empty(g.m, g.n, device=device)  # preallocated: time the GEMM, not malloc
        for _ in range(3):
            torch.matmul(a, b, out=out)
        ops.append((a, b, out))
    best = [float("inf")] * len(gemms)
    for _ in range(rounds):
        for i, (a, b, out) in enumerate(ops):
            calls = 0
            sync(device)
            t0 = time.perf_counter()
            while True:
                torch.matmul(a, b, out=out)
                calls += 1
                if calls % 4 == 0:
                    sync(device)
                    elapsed = time.perf_counter() - t0
                    if elapsed >= min_s:
                        break
            best[i] = min(best[i], elapsed / calls)
    return best


def gemm_rate(gemms, times) -> float:
    """FLOP-weighted mean rate, FLOP/s: sum(FLOPs) / sum(time) (the harmonic mean with
    each GEMM weighted by its FLOPs), so that FLOPs / rate is exactly the time the GEMMs
    take; an arithmetic mean would let a fast GEMM hide a slow one."""
    return sum(g.flops for g in gemms) / sum(times)


# ---------------------------------------------------------------- training timings
@dataclass
class TrainRun:
    wall_s: float
    epoch_s: list[float]  # per epoch, from the trainer's per-epoch log lines
    tail_s: float  # after the last epoch: best-epoch predictions and results
    cpu_s: float  # process CPU time: near wall x threads when the machine is ours

    @property
    def steady_epoch_s(self) -> float | None:
        """Median epoch after the first (the first also carries setup)."""
        rest = self.epoch_s[1:] or self.epoch_s
        return statistics.median(rest) if rest else None


def timed_train(store, config, specs, device: str) -> TrainRun:
    """Wall time of one train_pack call; epoch boundaries come from the times at which
    the trainer logs a line starting with "epoch" (its log format may change; then only
    the wall time is known)."""
    from mer_ray.trainer import train_pack

    marks: list[float] = []

    def log(msg):
        if str(msg).startswith("epoch"):
            marks.append(time.perf_counter())

    sync(device)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    train_pack(store, config, specs, device=device, log=log)
    sync(device)
    t1 = time.perf_counter()
    cpu = time.process_time() - cpu0
    if not marks:
        return TrainRun(t1 - t0, [], t1 - t0, cpu)
    bounds = [t0] + marks
    epochs = [b - a for a, b in zip(bounds, bounds[1:])]
    return TrainRun(t1 - t0, epochs, t1 - marks[-1], cpu)


def fold_specs(n: int, seed0: int = 0) -> list[tuple[int, int]]:
    """n members: folds 0-4 of seed 0, then of seed 1, ... (how a grid fills a pack)."""
    return [(i % 5, seed0 + i // 5) for i in range(n)]


# ---------------------------------------------------------------- the run's shared state
@dataclass
class Bench:
    """What the measurement functions share: profile, device, the stores they train on,
    and the figures measured so far (later figures build on earlier ones)."""

    profile: Profile
    device: str
    workdir: Path
    figures: dict[str, Row] = field(default_factory=dict)
    _stores: dict = field(default_factory=dict)
    _warm: bool = False

    def store_path(self, scale: float) -> Path:
        path = self.workdir / f"store-{scale:g}"
        if path not in self._stores:
            progress(f"writing synthetic store (seed 0, scale {scale:g})")
            from mer_ray.data.synth import synthesize_store

            synthesize_store(path, seed=0, scale=scale)
            self._stores[path] = None
        return path

    def store(self, scale: float):
        from mer_ray.data.store import read_store

        path = self.store_path(scale)
        if self._stores[path] is None:
            self._stores[path] = read_store(path)
        return self._stores[path]

    def value(self, key: str):
        row = self.figures.get(key)
        return None if row is None else row.value

    def config(self, epochs: int, warmup: int | None = None):
        """robust_v3 with a fixed number of epochs: early stopping off (every member runs
        all epochs, so timings compare) and modality dropout from epoch 1 (so its cost is
        in the figures) unless a warmup is given."""
        from mer_ray.presets import get_preset

        if warmup is None:
            warmup = 1 if epochs > 1 else 0
        cfg = get_preset("robust_v3").replace(epochs=epochs, early_stop_patience=None,
                                              warmup=warmup)
        if self.profile.hidden_dim is not None:
            cfg = cfg.replace(hidden_dim=self.profile.hidden_dim)
        return cfg

    def shapes(self, scale: float):
        from mer_ray.model import layer_shapes

        store = self.store(scale)
        dims = {m: int(store.features[m].shape[1]) for m in MODALITIES}
        return layer_shapes(dims, self.config(1).hidden_dim)

    def fold_sizes(self, scale: float) -> tuple[int, int]:
        """(training rows, held-out rows) of fold 0."""
        from mer_ray.folds import make_folds

        store, cfg = self.store(scale), self.config(1)
        rows = store.rows("train")
        tr, va = make_folds(store.emotion[rows], cfg.n_folds, cfg.fold_seed)[0]
        return len(tr), len(va)

    def warm_up(self, scale: float) -> None:
        """One untimed 1-epoch member: the process's first training call pays one-off
        costs (allocator growth, kernel selection) that belong to no figure."""
        if not self._warm:
            progress("warm-up: one untimed 1-epoch member")
            timed_train(self.store(scale), self.config(1), [(0, 0)], self.device)
            self._warm = True


# ---------------------------------------------------------------- measurements
def measure_store_read(bench: Bench) -> list[Row]:
    """feature store read vs per-sample .npy read"""
    from mer_ray.data.synth import synthesize

    p = bench.profile
    tree = bench.workdir / f"npy-{p.read_scale:g}"
    progress(f"writing the per-sample .npy tree (scale {p.read_scale:g})")
    synthesize(tree, seed=0, scale=p.read_scale, overwrite=True, progress=False)
    store_path = bench.store_path(p.read_scale)
    progress(f"timing both readers, median of {p.read_repeats}")
    r = compare_store_read(tree / "features", store_path, p.read_repeats)
    data = f"{r.samples} x {r.floats} float32 ({r.mb:.0f} MB), page cache"
    return [
        Row("store_read_s", "feature store read", r.store_s, "s",
            f"{data}; {r.mb / r.store_s:.0f} MB/s; median of {p.read_repeats}"),
        Row("npy_read_s", "per-sample .npy read", r.npy_s, "s",
            f"{r.samples * len(MODALITIES)} files; {r.mb / r.npy_s:.0f} MB/s; "
            f"identical arrays: {r.identical}"),
        Row("store_read_speedup", "store vs .npy speed-up", _ratio(r.npy_s, r.store_s), "x"),
    ]


def measure_gemm(bench: Bench) -> list[Row]:
    """GEMM rate at the model's shapes"""
    p = bench.profile
    shapes = bench.shapes(p.train_scale)
    bs = bench.config(1).batch_size
    eval_batch = min(bench.fold_sizes(p.train_scale)[1], EVAL_BATCH_CAP)
    progress(f"timing {len(shapes)} layers' GEMMs at batch {bs} (train) and {eval_batch} "
             f"(eval), best of {p.gemm_rounds} rounds")
    train, evals = train_gemms(shapes, bs), eval_gemms(shapes, eval_batch)
    times = time_gemms(train + evals, bench.device, p.gemm_min_s, p.gemm_rounds)
    train_t, eval_t = times[: len(train)], times[len(train):]
    rows = [Row("gemm_gflops", "GEMM rate (training mix)", gemm_rate(train, train_t) / 1e9,
                "GFLOP/s", f"batch {bs}: fwd + weight grad + input grad of all {len(shapes)} "
                f"Linears, FLOP-weighted (total FLOPs / total time), best of {p.gemm_rounds} "
                "rounds")]
    # The big first layers on their own: most of a member's FLOPs are theirs.
    for g, secs in zip(train, train_t):
        if g.layer in first_layers():
            rows.append(Row(f"gemm_{g.layer.split('.')[0]}_{g.kind}_gflops",
                            f"  [{g.m},{g.k}]x[{g.k},{g.n}] {g.kind}", g.flops / secs / 1e9,
                            "GFLOP/s", f"{g.layer} {g.kind}"))
    rows.append(Row("gemm_eval_gflops", "GEMM rate (eval forward)",
                    gemm_rate(evals, eval_t) / 1e9, "GFLOP/s",
                    f"batch {eval_batch}, forward of all Linears"))
    return rows


def measure_member_floor(bench: Bench) -> list[Row]:
    """one robust-v3 member: FLOP floor vs measured"""
    p = bench.profile
    store = bench.store(p.train_scale)
    shapes = bench.shapes(p.train_scale)
    n_train, n_val = bench.fold_sizes(p.train_scale)
    n_pred = n_val + sum(len(store.rows(s)) for s in TEST_SPLITS)
    fm = member_flops(shapes, n_train, n_val, n_pred, p.member_epochs)
    params = sum(fi * fo + fo for _, fi, fo in shapes)
    train_rate = bench.value("gemm_gflops")
    eval_rate = bench.value("gemm_eval_gflops")
    floor = epoch_floor = None
    if train_rate and eval_rate:
        floor = fm.train / (train_rate * 1e9) + (fm.eval + fm.final) / (eval_rate * 1e9)
        # one epoch alone, to set against the measured steady epoch
        epoch_floor = (fm.train / (train_rate * 1e9) + fm.eval / (eval_rate * 1e9)) / fm.epochs
    bench.warm_up(p.train_scale)
    cfg = bench.config(p.member_epochs)
    progress(f"training 1 member, {p.member_epochs} epochs, scale {p.train_scale:g}")
    run = timed_train(store, cfg, [(0, 0)], bench.device)
    steady = run.steady_epoch_s
    eff = _ratio(floor, run.wall_s)
    # What the 1.5x target leaves for everything that is not a matmul, set against two
    # costs no implementation of the recipe avoids (both timed here, in this run).
    adam_s, masks_s = time_step_extras(shapes, cfg.batch_size, cfg.dropout, bench.device)
    step_floor = None if not train_rate else fm.train_per_row * cfg.batch_size / (train_rate * 1e9)
    bound = None if step_floor is None else (step_floor + adam_s + masks_s) / step_floor
    extras = [
        Row("step_gemm_floor_ms", "one training step: GEMM floor", _ms(step_floor), "ms",
            f"batch {cfg.batch_size}: {fm.train_per_row * cfg.batch_size / 1e6:.0f} MFLOP at "
            "the training GEMM rate"),
        Row("step_adam_ms", "one training step: torch fused Adam", adam_s * 1e3, "ms",
            f"torch.optim.Adam(fused=True) over the member's {params:,} parameters, best of 5"),
        Row("step_masks_ms", "one training step: dropout masks", masks_s * 1e3, "ms",
            f"the trainer's DropoutBits: {cfg.batch_size} x {sum(dropout_widths(shapes)):,} "
            "units from the member's generator"),
        Row("member_bound_over_floor", "lower bound on measured / floor", bound, "x",
            "(GEMM floor + Adam + masks) / GEMM floor per step: with every other op free, "
            "a member cannot come closer to its floor than this on this machine"),
    ]
    return [
        Row("member_params", "parameters per member", params, "",
            f"model.layer_shapes, hidden {cfg.hidden_dim}"),
        Row("member_gflop", "member FLOPs (GEMM)", fm.total / 1e9, "GFLOP",
            f"{p.member_epochs} epochs x ({n_train} train rows x {fm.train_per_row / 1e6:.2f} "
            f"MFLOP + {n_val} held-out x {fm.eval_per_row / 1e6:.2f}) + final "
            f"{fm.final_rows} rows = {fm.train / 1e9:.1f} + {fm.eval / 1e9:.1f} + "
            f"{fm.final / 1e9:.1f}"),
        Row("member_floor_s", "member FLOP floor", floor, "s",
            "train FLOPs / training GEMM rate + eval and final FLOPs / eval GEMM rate"
            + ("" if floor is None else f"; per epoch {epoch_floor:.3f} s")),
        Row("member_wall_s", "member measured", run.wall_s, "s",
            f"train_pack, 1 member, {p.member_epochs} epochs; steady epoch "
            f"{steady if steady is None else round(steady, 3)} s, final predictions "
            f"{run.tail_s:.2f} s, cpu {run.cpu_s:.1f} s"),
        Row("member_efficiency_pct", "member efficiency (floor / measured)",
            None if eff is None else 100 * eff, "%", "MFU-style: achieved GEMM FLOP/s over "
            "the GEMM rate measured above"),
        Row("member_wall_over_floor", "member measured / floor", _ratio(run.wall_s, floor),
            "x", "below 1 means the GEMM rate was taken under heavier load than the member: "
            "rerun" if floor and floor > run.wall_s else "", target="<= 1.5"),
    ] + extras


def dropout_widths(shapes) -> list[int]:
    """Input width of each encoder's first Linear: the units dropout masks every step."""
    return [fan_in for name, fan_in, _ in shapes if name.endswith(".0")]


def time_step_extras(shapes, batch: int, dropout: float, device: str, rounds: int = 5,
                     calls: int = 50) -> tuple[float, float]:
    """Seconds per training step of one member for the two non-GEMM costs the recipe
    cannot drop: an Adam update of every weight (torch.optim.Adam, fused=True: torch's
    own fastest kernel) and drawing the step's dropout masks (the trainer's DropoutBits).
    Best of `rounds` rounds of `calls` calls each."""
    import torch

    from mer_ray.trainer import DropoutBits, member_generator

    params = []
    for _, fan_in, fan_out in shapes:
        for shape in ((fan_in, fan_out), (1, fan_out)):
            w = torch.randn(shape, device=device, requires_grad=True)
            w.grad = torch.randn(shape, device=device)
            params.append(w)
    opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5, fused=True)
    widths = dropout_widths(shapes)
    bits = DropoutBits(1, batch, widths, dropout, device)
    g = member_generator(0, 0, device)

    def masks():
        bits.draw(0, g)
        bits.masks()

    out = []
    for f in (opt.step, masks):
        for _ in range(3):
            f()
        best = float("inf")
        for _ in range(rounds):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            sync(device)
            best = min(best, (time.perf_counter() - t0) / calls)
        out.append(best)
    return out[0], out[1]


def measure_packs(bench: Bench) -> list[Row]:
    """K-member packs vs the same members one after another"""
    p = bench.profile
    store = bench.store(p.train_scale)
    cfg = bench.config(p.pack_epochs)
    bench.warm_up(p.train_scale)
    rows = []
    for k in p.pack_sizes:
        specs = fold_specs(k)
        progress(f"training a {k}-member pack, {p.pack_epochs} epochs")
        pack = timed_train(store, cfg, specs, bench.device)
        seq_s, seq_cpu = 0.0, 0.0
        for i, spec in enumerate(specs):
            progress(f"sequential member {i + 1}/{k}, {p.pack_epochs} epochs")
            one = timed_train(store, cfg, [spec], bench.device)
            seq_s += one.wall_s
            seq_cpu += one.cpu_s
        steady = pack.steady_epoch_s
        per_member_epoch = None if steady is None else steady / k
        rows += [
            Row(f"pack{k}_s", f"{k}-member pack", pack.wall_s, "s",
                f"{p.pack_epochs} epochs, scale {p.train_scale:g}; cpu {pack.cpu_s:.1f} s"),
            Row(f"seq{k}_s", f"{k} members one by one", seq_s, "s",
                f"{k} train_pack calls of 1 member; cpu {seq_cpu:.1f} s"),
            Row(f"pack{k}_speedup", f"{k}-pack speed-up", _ratio(seq_s, pack.wall_s), "x",
                target=">= 2" if k == 25 else ""),
            Row(f"pack{k}_member_epoch_s", f"{k}-pack s per member-epoch", per_member_epoch,
                "s", "steady epoch / K" + ("" if steady is not None else
                                            ": no per-epoch log lines seen")),
        ]
        # the grid extrapolation needs the final-prediction cost per member too
        bench.figures[f"_pack{k}_tail_per_member_s"] = Row("", "", pack.tail_s / k, "s")
    return rows


def rss_bytes() -> tuple[int | None, int | None]:
    """(current RSS, peak RSS) of this process in bytes, from /proc/self/status (Linux).

    Not ru_maxrss: a child started by fork/vfork + exec inherits its parent's high-water
    mark in ru_maxrss (Linux folds the old address space's peak into it at exec), so a
    subprocess of a 2 GB bench process reports >= 2 GB before it has done anything.
    VmHWM belongs to the process's own address space."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        kib = {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}
        return kib["VmRSS"], kib["VmHWM"]
    except (OSError, KeyError, ValueError):
        return None, None


def peak_worker(arg: str) -> None:
    """Subprocess body of measure_peak_memory: read the store, note the RSS, train the
    pack, note the peak; one JSON line on stdout."""
    import resource

    import torch

    from mer_ray.data.store import read_store
    from mer_ray.presets import TrainConfig

    a = json.loads(arg)
    store = read_store(a["store"])
    base, _ = rss_bytes()
    cuda = a["device"].startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run = timed_train(store, TrainConfig(**a["config"]), fold_specs(a["members"]), a["device"])
    _, peak = rss_bytes()
    out = {"baseline_rss": base, "peak_rss": peak, "wall_s": run.wall_s,
           # Linux: KiB, and inherited from the parent (see rss_bytes); kept for reference
           "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "cuda_peak": torch.cuda.max_memory_allocated() if cuda else None}
    print(json.dumps(out), flush=True)


def measure_peak_memory(bench: Bench) -> list[Row]:
    """peak memory of a 25-member pack (fresh subprocess)"""
    p = bench.profile
    k = p.peak_members
    arg = json.dumps({"store": str(bench.store_path(p.train_scale)), "members": k,
                      "device": bench.device, "config": bench.config(p.peak_epochs).to_dict()})
    progress(f"subprocess: {k}-member pack, {p.peak_epochs} epoch(s), for its peak RSS")
    env = dict(os.environ)
    # the worker imports this package from the same tree even when it is not installed
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    code = "import sys; from mer_ray.bench import peak_worker; peak_worker(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess failed:\n{proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    mb = 1e6
    if r["peak_rss"] is None:  # no /proc: ru_maxrss, an upper bound (inherits the parent's)
        r["peak_rss"], how = r["ru_maxrss"], "ru_maxrss (may include the parent's peak)"
    else:
        how = "VmHWM"
    rows = [
        Row(f"peak{k}_rss_mb", f"{k}-pack peak RSS", r["peak_rss"] / mb, "MB",
            f"{how} of a fresh process: torch + store + {p.peak_epochs}-epoch pack "
            f"(scale {p.train_scale:g}, {r['wall_s']:.1f} s)", target="< 3000"),
        Row(f"peak{k}_baseline_rss_mb", f"{k}-pack baseline RSS",
            None if r["baseline_rss"] is None else r["baseline_rss"] / mb, "MB",
            "same process after imports + read_store, before train_pack (VmRSS)"),
        Row(f"peak{k}_pack_mb", f"{k}-pack own share",
            None if r["baseline_rss"] is None else (r["peak_rss"] - r["baseline_rss"]) / mb,
            "MB", "peak - baseline: weights, Adam state, grads, activations, best weights, "
            "feature copy"),
    ]
    if r["cuda_peak"] is not None:
        rows.append(Row(f"peak{k}_cuda_mb", f"{k}-pack peak GPU memory", r["cuda_peak"] / mb,
                        "MB", "torch.cuda.max_memory_allocated"))
    return rows


def ray_grid(bench: Bench):
    """The demo's grid for the Ray-overhead figure: robust_v3 at warmups 30/40/50 x 5 folds
    x the profile's seeds on a scale-0.2 store, one pack per trial as the demo trains it
    (full profile: the full recipe and the demo's seeds, exactly the demo's members;
    quick: seed 0, 10 epochs with warmups 3/4/5). Returns (config, settings, seeds)."""
    from mer_ray.presets import get_preset

    p = bench.profile
    config = get_preset("robust_v3")
    if p.ray_epochs is None:
        return config, [{"warmup": w} for w in DEMO_WARMUPS], list(p.ray_seeds)
    config = config.replace(epochs=p.ray_epochs, early_stop_patience=None)
    if p.hidden_dim:
        config = config.replace(hidden_dim=p.hidden_dim)
    return (config, [{"warmup": w * p.ray_epochs // 100} for w in DEMO_WARMUPS],
            list(p.ray_seeds))


def measure_ray_overhead(bench: Bench) -> list[Row]:
    """Ray overhead: the demo grid through Ray and in-process

    Ray Tune + Train on an embedded local Ray (its start-up inside the timing, as a user
    pays it) against the same members in this process (--no-ray)."""
    import numpy as np
    import ray

    from mer_ray import ray_train
    from mer_ray.members import list_member_files, read_member
    from mer_ray.run import train_grid_here

    p = bench.profile
    config, settings, seeds = ray_grid(bench)
    pack = demo_pack_size(seeds)
    path = bench.store_path(p.ray_scale)
    store = bench.store(p.ray_scale)
    quiet = lambda *a: None  # noqa: E731
    with tempfile.TemporaryDirectory(dir=bench.workdir) as d:
        progress(f"Ray overhead: {len(settings)} x {pack} members in-process (--no-ray)")
        t0 = time.perf_counter()
        train_grid_here(store, str(path), config, settings, seeds, f"{d}/local", pack,
                        log=quiet)
        local_s = time.perf_counter() - t0
        progress("Ray overhead: the same members through Ray Tune + Train")
        t0 = time.perf_counter()
        # Tune's experiment box and the raylet's warnings print to stdout, which holds the
        # table: send them to stderr with the rest of the progress output.
        with contextlib.redirect_stdout(sys.stderr):
            started = ray_train.connect(log=quiet, log_to_driver=False)
            try:
                ray_train.tune_grid(str(path), config, settings, seeds, f"{d}/ray",
                                    pack_size=pack, log=quiet)
            finally:
                if started:
                    ray.shutdown()
        ray_s = time.perf_counter() - t0
        # The invariant behind the comparison: same members, same results.
        a = {m.member_id: m for m in map(read_member, list_member_files(f"{d}/local"))}
        b = {m.member_id: m for m in map(read_member, list_member_files(f"{d}/ray"))}
        diff = max(float(np.abs(a[k].predictions["test1"].logits
                                - b[k].predictions["test1"].logits).max()) for k in a)
    demo_grid = p.ray_epochs is None
    grid = (f"{len(settings)} trials x 5 folds x seeds {','.join(map(str, seeds))} "
            f"({pack}-member pack per trial), scale {p.ray_scale:g}, "
            + ("full robust_v3 recipe (the demo grid)" if demo_grid
               else f"{p.ray_epochs} epochs, warmups {'/'.join(str(s['warmup']) for s in settings)}"))
    same = "identical" if diff == 0 else f"max |test1 logit diff| {diff:.1e}"
    return [
        Row("ray_in_process_s", "grid in-process (--no-ray)", local_s, "s", grid),
        Row("ray_s", "grid through Ray", ray_s, "s",
            f"embedded Ray start-up included; members {same} (set(a) == set(b): {set(a) == set(b)})"),
        # The target is for the demo's own grid (--full): a shortened grid is mostly Ray's
        # fixed start-up, so its ratio says little about the run a user makes.
        Row("ray_overhead", "Ray / in-process time", ray_s / local_s, "x",
            "" if demo_grid else "shortened grid: Ray's fixed start-up dominates; the "
            "<= 1.15 target is for the demo grid (--full)",
            target="<= 1.15" if demo_grid else ""),
    ]


def measure_grid_rate(bench: Bench) -> list[Row]:
    """members per minute for the warmup grid"""
    p = bench.profile
    k = 5 * p.grid_seeds  # one pack per warmup: all folds x seeds of that warmup
    n = len(GRID_WARMUPS) * k
    grid = f"warmups {'/'.join(map(str, GRID_WARMUPS))} x {p.grid_seeds} seed(s) x 5 folds"
    rows = []
    if p.grid_run_epochs is None:
        # the grid's own pack size if it was measured, else the largest pack measured
        sizes = [x for x in p.pack_sizes if bench.value(f"pack{x}_member_epoch_s") is not None]
        src = k if k in sizes else max(sizes, default=None)
        pme = bench.value(f"pack{src}_member_epoch_s")
        tail = bench.value(f"_pack{src}_tail_per_member_s")
        per_member = None if pme is None or tail is None else GRID_EPOCHS * pme + tail
        rows.append(Row("grid_members_per_min", "warmup grid members / minute",
                        None if per_member is None else 60 / per_member, "members/min",
                        f"EXTRAPOLATED, not measured: {grid} = {n} members as {k}-member "
                        f"packs, {GRID_EPOCHS} epochs each at the {src}-pack's measured "
                        "s per member-epoch + its final predictions per member; in-process, "
                        "one pack at a time; early stopping could end members from epoch "
                        "warmup+30"))
        return rows
    # Measured: the real grid shape (3 packs of 5 folds x seeds) at reduced epochs, the
    # warmups scaled with them so modality dropout starts at the same fraction.
    e = p.grid_run_epochs
    store = bench.store(p.train_scale)
    bench.warm_up(p.train_scale)
    wall, epoch_times, tails, warmups = 0.0, [], 0.0, []
    for w in GRID_WARMUPS:
        cfg = bench.config(e, warmup=round(w * e / GRID_EPOCHS))
        warmups.append(cfg.warmup)
        progress(f"grid pack warmup {cfg.warmup}/{e}: {k} members, {e} epochs")
        run = timed_train(store, cfg, fold_specs(k), bench.device)
        wall += run.wall_s
        tails += run.tail_s
        if run.steady_epoch_s is not None:
            epoch_times.append(run.steady_epoch_s)
    rows.append(Row("grid_members_per_min_measured", "warmup grid members / minute (run)",
                    n / (wall / 60), "members/min",
                    f"measured: {grid} = {n} members, {e} epochs each (warmups scaled to "
                    f"{'/'.join(map(str, warmups))}), scale {p.train_scale:g}, {wall:.0f} s"))
    per_member = None
    if epoch_times:
        per_member = GRID_EPOCHS * statistics.median(epoch_times) / k + tails / n
    rows.append(Row("grid_members_per_min", "warmup grid members / minute",
                    None if per_member is None else 60 / per_member, "members/min",
                    f"projected to {GRID_EPOCHS} epochs from the run above's s per "
                    "member-epoch + final predictions; no early stopping"))
    return rows


MEASUREMENTS = [
    measure_store_read,
    measure_gemm,
    measure_member_floor,
    measure_packs,
    measure_peak_memory,
    measure_ray_overhead,
    measure_grid_rate,
]


# ---------------------------------------------------------------- report
def machine_info(device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    return info


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def format_report(info: dict, profile: Profile, rows: list[Row], total_s: float,
                  phases: list[dict]) -> str:
    p = profile
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    load, load_end = info.get("load_avg_start"), info.get("load_avg_end")
    lines = [
        f"mer-ray bench, profile {p.name}, device {info['device']}, {info['date']}",
        f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable){gpu}; "
        f"torch {info['torch']}, {info['torch_threads']} threads; python {info['python']}",
        f"load average at start {load[0]:.2f}, at end {load_end[0]:.2f} (other load slows "
        "every timing; compare only figures from one run)" if load and load_end else None,
        f"profile: store read scale {p.read_scale:g} (median of {p.read_repeats}); training "
        f"scale {p.train_scale:g}; member {p.member_epochs} epochs; packs {p.pack_epochs} "
        f"epochs, K = {', '.join(map(str, p.pack_sizes))}; peak {p.peak_members} members x "
        f"{p.peak_epochs} epoch; robust_v3, early stopping off, modality dropout from epoch 1"
        + (f"; hidden {p.hidden_dim}" if p.hidden_dim else ""),
        "",
    ]
    w = max(len(r.name) for r in rows)
    lines.append(f"{'figure':<{w}}  {'value':>9}  {'unit':<11}  {'target':<12}  note")
    lines.append("-" * (w + 50))
    for r in rows:
        tgt = ""
        if r.target:
            tgt = f"{r.target} " + {True: "ok", False: "MISS", None: "-"}[r.met]
        lines.append(f"{r.name:<{w}}  {fmt(r.value):>9}  {r.unit:<11}  {tgt:<12}  {r.note}")
    lines.append("")
    # CPU far below wall time means this process waited for the cores: the figures of
    # that measurement are slowed by other load.
    lines.append("wall / cpu seconds per measurement (cpu of this process, up to "
                 f"{info['torch_threads']} threads): " + "; ".join(
                     f"{ph['measurement']} {ph['wall_s']:.0f} / {ph['cpu_s']:.0f}"
                     for ph in phases))
    lines.append(f"total {total_s:.0f} s")
    return "\n".join(line for line in lines if line is not None)


def report_json(info: dict, profile: Profile, rows: list[Row], total_s: float,
                failures: list[str], phases: list[dict]) -> dict:
    return {
        "machine": info,
        "profile": asdict(profile),
        "total_s": total_s,
        "measurements": phases,
        "figures": {r.key: {"name": r.name.strip(), "value": r.value, "unit": r.unit,
                            "note": r.note, "target": r.target or None, "met": r.met}
                    for r in rows},
        "failures": failures,
    }


def run_bench(profile: Profile, device: str = "cpu", json_path=None, workdir=None,
              out=None) -> dict:
    """Run every measurement, print the table to `out` (stdout), optionally write JSON.
    A measurement that fails is reported (row value n/a, `failures` in the JSON) and the
    others still run."""
    global _T0
    # before any torch thread exists: the trainer flushes denormals, and threads only
    # inherit that when created after it (see trainer.flush_denormals)
    import mer_ray.trainer  # noqa: F401

    out = out or sys.stdout
    t0 = _T0 = time.perf_counter()
    info = machine_info(device)
    failures, phases = [], []
    with tempfile.TemporaryDirectory(prefix="mer-ray-bench-", dir=workdir) as tmp:
        bench = Bench(profile, device, Path(tmp))
        for i, fn in enumerate(MEASUREMENTS, 1):
            title = fn.__doc__.strip().splitlines()[0]
            progress(f"({i}/{len(MEASUREMENTS)}) {title}")
            wall0, cpu0 = time.perf_counter(), time.process_time()
            try:
                for row in fn(bench):
                    bench.figures[row.key] = row
            except Exception as e:  # noqa: BLE001  (one broken figure must not hide the rest)
                failures.append(f"{fn.__name__}: {type(e).__name__}: {e}")
                progress(f"FAILED {fn.__name__}: {type(e).__name__}: {e}")
                bench.figures[fn.__name__] = Row(fn.__name__, title, None, "",
                                                 f"FAILED: {type(e).__name__}: {e}")
            phases.append({"measurement": fn.__name__.removeprefix("measure_"),
                           "wall_s": time.perf_counter() - wall0,
                           "cpu_s": time.process_time() - cpu0})
    total = time.perf_counter() - t0
    info["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    rows = [r for k, r in bench.figures.items() if not k.startswith("_")]
    print(format_report(info, profile, rows, total, phases), file=out, flush=True)
    result = report_json(info, profile, rows, total, failures, phases)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        progress(f"wrote {json_path}")
    return result


# ---------------------------------------------------------------- command line
def _add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="profile", action="store_const", const="quick",
                   help="the quick profile (default): a few minutes on a 2-core machine")
    g.add_argument("--full", dest="profile", action="store_const", const="full",
                   help="the full profile: more epochs and repeats, and a measured "
                   "warmup-grid run (tens of minutes on CPU)")
    g.add_argument("--profile", dest="profile", choices=sorted(PROFILES), help=argparse.SUPPRESS)
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to train and time the GEMMs (default cpu)")
    p.add_argument("--workdir", metavar="DIR",
                   help="where the temporary synthetic data goes (default: system temp; "
                   "about 300 MB at full scale)")
    p.set_defaults(profile="quick", func=cmd_bench)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `bench` to the `mer-ray` subcommands (subparsers = add_subparsers())."""
    p = subparsers.add_parser(
        "bench", help="measure store read, GEMM rate, FLOP-floor efficiency, packs, memory",
        description="Measure, side by side in one run: feature store vs .npy read, the GEMM "
        "rate at the model's shapes, one robust-v3 member's FLOP-floor efficiency, K-member "
        "packs vs sequential members (K = 5, 25), a 25-pack's peak memory, Ray overhead and "
        "warmup-grid members per minute. Prints a table (stdout) and progress (stderr).")
    _add_options(p)
    return p


def cmd_bench(args) -> int:
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(f"mer-ray bench: --device cuda: CUDA is not available here (torch "
                  f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                  "skipping. Run it on a GPU machine, or use --device cpu.", file=sys.stderr)
            if args.json:
                Path(args.json).write_text(json.dumps({"skipped": "CUDA not available"}) + "\n")
            return 0
    result = run_bench(PROFILES[args.profile], device=args.device, json_path=args.json,
                       workdir=args.workdir)
    if result["failures"]:
        raise SystemExit(1)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mer-ray bench", description=__doc__.splitlines()[0])
    _add_options(p)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
