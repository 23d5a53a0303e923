"""The `mer-ray` command line.

Handlers import their heavy modules lazily so `mer-ray --help` stays fast. A user's
mistake (InputError) prints one line and exits 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from mer_ray.constants import DEFAULT_FEATURES
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


def cmd_demo(args):
    from mer_ray.demo import run_demo

    run_demo(args.out, seed=args.seed, scale=args.scale, overwrite=args.overwrite)


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

    d = sub.add_parser("demo", help="the end-to-end demo on synthetic data",
                       description="Generate synthetic MER2023, import it through the "
                       "MERTools importer and summarize the store. (Training, tuning and "
                       "ensemble scoring join the demo as they land.)")
    d.add_argument("--out", default="demo-run", help="working folder (default demo-run)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--scale", type=float, default=1.0)
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
