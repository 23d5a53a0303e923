"""A figure (Row), its target, and the small timing helpers every figure shares."""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass


@dataclass
class Row:
    """One figure. value None = not measured (the note says why)."""

    key: str  # stable JSON key
    name: str  # printed label
    value: float | str | None  # a str for a figure that is a text (a test run's summary)
    unit: str
    note: str = ""
    target: str = ""  # e.g. "<= 1.5"; empty = informational
    # False: the target is printed but not judged, for a figure taken at a scale or on a
    # device the target is not meant for (benchmarks/gpu.py --tiny, --cpu)
    judged: bool = True

    @property
    def met(self) -> bool | None:
        return target_met(self.value, self.target) if self.judged else None


MET_MARKS = {True: "ok", False: "MISS", None: "-"}  # how a table prints Row.met


def target_met(value, target: str) -> bool | None:
    if value is None or not target:
        return None
    op, bound = target.split()
    bound = float(bound)
    return {"<": value < bound, "<=": value <= bound, ">": value > bound,
            ">=": value >= bound}[op]


def ms(seconds):
    return None if seconds is None else seconds * 1e3


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


_clock = {"t0": time.perf_counter()}  # progress lines count from here (run_bench resets it)


def reset_clock() -> float:
    _clock["t0"] = time.perf_counter()
    return _clock["t0"]


def elapsed() -> float:
    """Seconds since the clock was last reset (the start of the run)."""
    return time.perf_counter() - _clock["t0"]


def progress(msg: str) -> None:
    """What is being measured now, on stderr (stdout carries only the table). Wall time
    far above CPU time / threads, or a load average above the core count, says other
    load is slowing the figures down."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"[bench {elapsed():6.1f}s cpu {time.process_time():6.1f}s "
          f"load {load:4.1f}] {msg}", file=sys.stderr, flush=True)


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


def steady(epoch_s: list[float]) -> float | None:
    """Median epoch after the first (the first also carries setup)."""
    rest = epoch_s[1:] or epoch_s
    return statistics.median(rest) if rest else None
