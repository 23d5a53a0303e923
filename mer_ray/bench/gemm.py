"""Figure: the GEMM rate at the model's own shapes (every Linear's forward, weight-
gradient and input-gradient matmul at batch 32; forward at the held-out fold's size),
FLOP-weighted. The member-floor figure divides FLOPs by it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mer_ray.bench.rows import Row, progress, sync
from mer_ray.data.constants import MODALITIES



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


def measure_gemm(bench) -> list[Row]:
    """GEMM rate at the model's shapes"""
    from mer_ray.train.evaluate import EVAL_CHUNK  # loads torch: only when measuring

    p = bench.profile
    shapes = bench.shapes(p.train_scale)
    bs = bench.config(1).batch_size
    # the trainer evaluates in chunks of at most EVAL_CHUNK rows: the eval GEMM's batch
    eval_batch = min(bench.fold_sizes(p.train_scale)[1], EVAL_CHUNK)
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
