"""`mer-ray bench`: the project's performance figures, side by side in one run.

Every figure is measured in the same process run (except the peak-memory figure, which
needs a fresh process of its own) so that ratios compare like with like on a machine
whose speed swings with other load. One file per figure, each one function returning
Rows (`benchmarks/README.md` says what each measures):

1. store_read.py    the feature store read vs per-sample `.npy` read of the same data;
2. gemm.py          the GEMM rate (torch matmuls at the model's own shapes), GFLOP/s;
3. member_floor.py  one robust-v3 member's FLOP floor (FLOPs / GEMM rate) vs its measured
                    wall time, the way nanoGPT prints MFU;
4. packs.py         a K-member pack vs the same K members one after another (K = 5, 25);
5. reference.py     the pack (K = 1, 5, 25) vs the readable reference loop
                    (mer_ray.train.reference) one member at a time, s per member-epoch;
6. peak_memory.py   peak memory of a 25-member pack (a subprocess: its own high-water mark);
7. ray_overhead.py  the demo grid through Ray and in-process;
8. grid_rate.py     members per minute for the warmup grid (30/40/50 x seeds x 5 folds).

Around them: profiles.py (how big each measurement is), rows.py (a figure, its target,
timing helpers), runs.py (timed train_pack runs and the state figures share), report.py
(the run, the table, the JSON). Adding a figure is one file and one line in
report.MEASUREMENTS. benchmarks/gpu.py is the same framework with GPU figures of its own
(report.run_gpu_bench, profiles.GPU_PROFILES). torch, Ray and numpy are imported inside
functions only, so `mer-ray --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mer_ray.bench.profiles import PROFILES, Profile
from mer_ray.bench.report import MEASUREMENTS, run_bench
from mer_ray.bench.store_read import compare_store_read

__all__ = [
    "MEASUREMENTS",
    "PROFILES",
    "Profile",
    "add_parser",
    "cmd_bench",
    "compare_store_read",
    "figure_names",
    "main",
    "run_bench",
]


def figure_names() -> list[str]:
    """The figures by name, as --only takes them (store_read, gemm, ...)."""
    return [fn.__name__.removeprefix("measure_") for fn in MEASUREMENTS]


def _only(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(figure_names()))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown figure(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(figure_names())}")
    return names


def _add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="profile", action="store_const", const="quick",
                   help="the quick profile (default): a few minutes on a 2-core machine")
    g.add_argument("--full", dest="profile", action="store_const", const="full",
                   help="the full profile: more epochs and repeats, and a measured "
                   "warmup-grid run (tens of minutes on CPU)")
    g.add_argument("--profile", dest="profile", choices=sorted(PROFILES), help=argparse.SUPPRESS)
    p.add_argument("--only", metavar="FIGURES", type=_only,
                   help="run only these figures, comma-separated (" + ", ".join(figure_names())
                   + "); a figure that builds on another's numbers then reports n/a for them")
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
        "packs vs sequential members (K = 5, 25), packs vs the readable reference training "
        "loop per member-epoch, a 25-pack's peak memory, Ray overhead and warmup-grid "
        "members per minute. Prints a table (stdout) and progress (stderr).")
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
    only = getattr(args, "only", None)
    measurements = None if not only else [
        fn for fn in MEASUREMENTS if fn.__name__.removeprefix("measure_") in only]
    result = run_bench(PROFILES[args.profile], device=args.device, json_path=args.json,
                       workdir=args.workdir, measurements=measurements)
    if result["failures"]:
        raise SystemExit(1)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mer-ray bench", description=__doc__.splitlines()[0])
    _add_options(p)
    args = p.parse_args(argv)
    return args.func(args)
