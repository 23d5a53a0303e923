"""`mer-ray demo`: the end-to-end demo on synthetic data."""

from __future__ import annotations

from mer_ray.cli.options import location
from mer_ray.demo import DEMO_SCALE, DEMO_SEEDS


def add_demo_parser(commands) -> None:
    p = commands.add_parser(
        "demo", help="the end-to-end demo on synthetic data",
        description="Synthetic MER2023 -> MERTools import -> Ray Tune over the robust_v3 "
        "warmup grid 30/40/50 on an embedded local Ray (dashboard on 127.0.0.1:8265) -> "
        "ensemble scores of test1/2/3. The defaults (scale 0.2, three seeds) finish in "
        "under 8 minutes on 2 CPU cores.")
    p.add_argument("--out", default="demo-run", type=location,
                   help="working folder (default demo-run)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--scale", type=float, default=DEMO_SCALE,
                   help=f"fraction of MER2023's sample counts (default {DEMO_SCALE})")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEMO_SEEDS),
                   help=f"training seeds per warmup (default: {' '.join(map(str, DEMO_SEEDS))})")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: embedded)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args):
    from mer_ray.demo import run_demo

    run_demo(args.out, seed=args.seed, scale=args.scale, seeds=args.seeds,
             overwrite=args.overwrite, address=args.address)
