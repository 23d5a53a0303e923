"""MKL in its strict reproducible mode, set before torch loads: a member's matmuls must
not round differently with the size of the pack it trains in.

Why: on Intel CPUs MKL threads a lone GEMM by splitting its contraction over the
threads and adding the partial sums, but runs the GEMMs of a batch one per thread with
the contraction in one piece. A member alone (a pack of 1, or the last member left in
its pack) took the first path at the text and audio encoders' first layers ([32, 5120]
x [5120, 128]), a member in a larger pack the second, and the last-bit difference grew
over a run into a different member. On AMD CPUs MKL takes its generic path, which did
not split; with more threads or another MKL that is not a promise either.
`MKL_CBWR=...,STRICT` is MKL's own guarantee that a GEMM's result does not depend on
the number of threads, which is what makes it independent of the batch it sits in.

MKL reads MKL_CBWR once, at its first call, so this runs when `mer_ray` is imported
(every entry point and every Ray worker imports it before a matmul). A process that ran
a torch matmul before importing mer_ray keeps MKL's default mode: import mer_ray first,
or set MKL_CBWR=AUTO,STRICT in the environment. A user's own MKL_CBWR branch (AVX2,
COMPATIBLE, ...) is kept, with STRICT added. What it costs is in docs/performance.md
(benchmarks/bench_mkl_strict.py); MER_RAY_MKL_STRICT=0 leaves MKL alone, for measuring
exactly that, and then a member depends on its pack on Intel CPUs.
"""

from __future__ import annotations

import os

MKL_ENV = "MKL_CBWR"
OPT_OUT_ENV = "MER_RAY_MKL_STRICT"
STRICT = "STRICT"


def strict_mkl_setting(current: str | None) -> str:
    """The MKL_CBWR value that keeps a user's branch and adds STRICT."""
    parts = [p.strip() for p in (current or "").split(",") if p.strip()]
    if not any(p.upper() == STRICT for p in parts):
        parts = (parts or ["AUTO"]) + [STRICT]
    return ",".join(parts)


def use_strict_mkl(environ=os.environ) -> None:
    """Put STRICT into MKL_CBWR unless MER_RAY_MKL_STRICT=0."""
    if environ.get(OPT_OUT_ENV, "1").strip() == "0":
        return
    environ[MKL_ENV] = strict_mkl_setting(environ.get(MKL_ENV))


def mkl_is_strict(environ=os.environ) -> bool:
    """Whether this process asked MKL for strict mode (what MKL read at its first call)."""
    return any(p.strip().upper() == STRICT for p in environ.get(MKL_ENV, "").split(","))
