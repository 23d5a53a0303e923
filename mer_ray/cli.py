"""The `mer-ray` command line.

Handlers import their heavy modules lazily so `mer-ray --help` stays fast. A user's
mistake (InputError) prints one line and exits 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from mer_ray.constants import DEFAULT_FEATURES
from mer_ray.demo import DEMO_SCALE, DEMO_SEEDS
from mer_ray.errors import InputError


def cmd_synth(args):
    from mer_ray.data.synth import split_counts, synthesize

    out = synthesize(args.out, seed=args.seed, scale=args.scale, overwrite=args.overwrite,
                     progress=not args.quiet)
    counts = split_counts(args.scale)
    print(f"wrote synthetic MER2023 (seed {args.seed}, scale {args.scale}) to {out}")
    print(f"{'split':<7}{'count':>7}  per class")
    for s, row in counts.items():
        print(f"{s:<7}{sum(row):>7}  {row}")


def cmd_import(args):
    from mer_ray.data.mertools import import_mertools
    from mer_ray.data.store import read_manifest, summary_table

    out = import_mertools(
        args.features, args.labels, args.out, audio=args.audio, text=args.text,
        video=args.video, trust_pickle=args.trust_pickle, overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"wrote feature store {out}")
    print(summary_table(read_manifest(out)))


def cmd_summary(args):
    from mer_ray.data.store import read_manifest, read_store, summary_table

    if args.verify:
        read_store(args.store, verify=True)
    print(summary_table(read_manifest(args.store)))


def _recipe(args):
    from mer_ray.presets import get_preset, parse_override

    config = get_preset(args.preset)
    for text in args.set:
        config = parse_override(config, text)
    return config


def _store_checked(path: str):
    """Validate the store on the driver (clear error, exit 2) before any worker starts."""
    from mer_ray.data.store import read_manifest

    return read_manifest(path)


def _grid(args) -> list[dict]:
    from mer_ray.presets import field_value
    from mer_ray.run import grid_settings

    grid = {}
    if getattr(args, "warmup", None):
        grid["warmup"] = args.warmup
    for text in getattr(args, "grid", []):
        field, _, values = text.partition("=")
        if not values:
            raise InputError(f"--grid {text!r}: expected FIELD=V1,V2,... e.g. --grid dropout=0.3,0.4")
        grid[field] = [field_value(field, v, f"--grid {text!r}") for v in values.split(",")]
    return grid_settings(grid)


def _run_grid(args, settings):
    """Train every setting of the grid (Ray or in-process). Returns (config, rows): the
    recipe, and for a Ray Tune run the ResultGrid's (setting, summary) per trial (None
    otherwise: the caller reads the member files)."""
    from mer_ray.run import absolute, train_grid_here

    args.store, args.out = absolute(args.store), absolute(args.out)
    if args.pack_size < 1:
        raise InputError(f"--pack-size {args.pack_size}: must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: must be at least 1")
    if args.gpus_per_worker < 0:
        raise InputError(f"--gpus-per-worker {args.gpus_per_worker}: must be 0 or more")
    config = _recipe(args)
    for s in settings:
        config.replace(**s)  # a bad grid value fails here, before anything starts
    _store_checked(args.store)
    seeds = args.seeds
    if args.no_ray:
        from mer_ray.data.store import read_store

        device = _device(args.device)
        train_grid_here(read_store(args.store), args.store, config, settings, seeds, args.out,
                        args.pack_size, device)
        return config, None

    import ray

    from mer_ray import ray_train

    started = ray_train.connect(args.address)
    try:
        if args.command == "train":
            from mer_ray.run import record_run

            plan = ray_train.plan_workers(args.workers, args.gpus_per_worker)
            record_run(args.out, args.store, [config])
            ray_train.train_with_ray(args.store, config, seeds, args.out, plan, args.pack_size)
            return config, None
        grid = ray_train.tune_grid(args.store, config, settings, seeds, args.out, args.workers,
                                   args.gpus_per_worker, args.pack_size)
        return config, [(r.config["setting"], r.metrics) for r in grid]
    finally:
        if started:
            ray.shutdown()


def _device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {requested}: this machine has no CUDA GPU; use --device cpu")
    if not (requested == "cpu" or requested.startswith("cuda")):
        raise InputError(f"--device {requested!r}: expected cpu or cuda")
    return requested


def cmd_train(args):
    from ensembles.groups import seed_table

    from mer_ray.run import read_config_members

    config, _ = _run_grid(args, [{}])
    members = read_config_members(args.out, config, args.seeds)
    print(f"\n{config.preset}: fold-averaged members of each seed (MERTools protocol)")
    print(seed_table(members))


def cmd_tune(args):
    from mer_ray.run import trial_summary, trial_table

    settings = _grid(args)
    config, rows = _run_grid(args, settings)
    if rows is None:  # --no-ray: the same summaries, from the member files
        rows = [(s, trial_summary(args.out, config.replace(**s), args.seeds)) for s in settings]
    print("\ntrials (mean over seeds of each seed's fold-averaged members)")
    print(trial_table(rows))


def cmd_demo(args):
    from mer_ray.demo import run_demo

    run_demo(args.out, seed=args.seed, scale=args.scale, seeds=args.seeds,
             overwrite=args.overwrite, address=args.address)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mer-ray",
        description="Ray-distributed ensemble trainer for MER2023 emotion recognition.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="create, import and inspect feature stores")
    dsub = data.add_subparsers(dest="data_command", required=True)

    s = dsub.add_parser("synth", help="write a synthetic MER2023 tree (MERTools layout)",
                        description="Write DIR/features/<feature-name>/<sample>.npy and "
                        "DIR/labels.csv (name,split,discrete,valence) with MER2023's split "
                        "sizes, class counts, feature names and dimensions.")
    s.add_argument("--out", required=True, help="folder to create")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--scale", type=float, default=1.0,
                   help="fraction of MER2023's sample counts, for quick runs (default 1.0)")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_synth)

    i = dsub.add_parser("import", help="import MERTools features + labels into a store",
                        description="Read <DIR>/<feature-name>/<sample>.npy (a 2-D [T, D] "
                        "array is averaged over T) and labels, validate everything, and "
                        "write a feature store. Nothing is written unless all input is valid.")
    i.add_argument("--features", required=True, help="folder holding one folder per feature")
    i.add_argument("--labels", required=True,
                   help="labels: a CSV with name,split,discrete,valence; a folder of "
                   "<split>.csv files with name,discrete,valence; or label-6way.npz "
                   "(needs --trust-pickle)")
    i.add_argument("--out", required=True, help="feature store folder to create")
    for m in ("audio", "text", "video"):
        i.add_argument(f"--{m}", default=DEFAULT_FEATURES[m][0],
                       help=f"{m} feature folder name (default {DEFAULT_FEATURES[m][0]})")
    i.add_argument("--trust-pickle", action="store_true",
                   help="allow reading label-6way.npz: its dicts are pickled, and unpickling "
                   "runs code stored in the file. Only for a file you trust.")
    i.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=cmd_import)

    m = dsub.add_parser("summary", help="print a store's split and class counts")
    m.add_argument("store")
    m.add_argument("--verify", action="store_true", help="re-hash the data against the manifest")
    m.set_defaults(func=cmd_summary)

    for name in ("train", "tune"):
        t = sub.add_parser(
            name,
            help="train one recipe's fold x seed members (Ray Train)" if name == "train"
            else "Ray Tune over a grid of recipe settings (the warmup grid)",
            description="Train the 5 CV folds x seeds of a recipe as Ray Train workers, each "
            "training its share of members in packs; member files go to OUT/members. "
            "Re-running with the same --out skips members already saved."
            if name == "train" else
            "One Tune trial per grid setting (FIFO: an early-stopping scheduler would kill "
            "ensemble members and compare folds of different difficulty); each trial runs "
            "the Ray Train run of `mer-ray train`. Prints the trials' scores at the end.",
        )
        t.add_argument("--preset", default="robust_v3",
                       help="baseline, robust_v1, robust_v2 or robust_v3 (default)")
        t.add_argument("--store", required=True, help="feature store (mer-ray data import)")
        t.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
        t.add_argument("--out", required=True, help="run folder or URI (s3://, gs://, ...)")
        t.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a preset field, e.g. --set epochs=50 (repeatable)")
        if name == "tune":
            t.add_argument("--warmup", type=int, nargs="+", default=[30, 40, 50],
                           help="warmup grid (default 30 40 50)")
            t.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                           help="another field to grid over, e.g. --grid dropout=0.3,0.4")
        t.add_argument("--workers", type=int, default=None,
                       help="Train workers per run (default: as many as the cluster holds)")
        t.add_argument("--gpus-per-worker", type=float, default=0, help="default 0 (CPU)")
        t.add_argument("--pack-size", type=int, default=10,
                       help="members trained together as one pack per worker (default 10)")
        t.add_argument("--address", default=None,
                       help="Ray cluster to join (default RAY_ADDRESS, else an embedded local "
                       "Ray with its dashboard on 127.0.0.1:8265)")
        t.add_argument("--no-ray", action="store_true",
                       help="train everything in this process without Ray (debugging, and "
                       "the baseline of the Ray-overhead benchmark)")
        t.add_argument("--device", default=None, help="--no-ray only: cpu or cuda")
        t.set_defaults(func=cmd_train if name == "train" else cmd_tune)

    from ensembles.cli import register
    from mer_ray.bench import add_parser as add_bench

    register(sub)  # `mer-ray ensemble score` and `mer-ray report`
    add_bench(sub)

    d = sub.add_parser("demo", help="the end-to-end demo on synthetic data",
                       description="Synthetic MER2023 -> MERTools import -> Ray Tune over "
                       "the robust_v3 warmup grid 30/40/50 on an embedded local Ray "
                       "(dashboard on 127.0.0.1:8265) -> ensemble scores of test1/2/3. "
                       "The defaults (scale 0.2, three seeds) finish in under 8 minutes on "
                       "2 CPU cores.")
    d.add_argument("--out", default="demo-run", help="working folder (default demo-run)")
    d.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    d.add_argument("--scale", type=float, default=DEMO_SCALE,
                   help=f"fraction of MER2023's sample counts (default {DEMO_SCALE})")
    d.add_argument("--seeds", type=int, nargs="+", default=list(DEMO_SEEDS),
                   help="training seeds per warmup (default: "
                   f"{' '.join(map(str, DEMO_SEEDS))})")
    d.add_argument("--address", default=None, help="Ray cluster to join (default: embedded)")
    d.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as e:
        print(f"mer-ray: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into e.g. `head` that closed early: not an error worth a traceback.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("mer-ray: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
