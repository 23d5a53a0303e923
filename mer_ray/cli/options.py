"""Flags several commands share, each defined once, and what they turn into: a folder or
URI (`location`), the recipe (--preset / --recipe / --set), a grid (--warmup / --grid), a
device, and how a run is spread over Ray (--workers, --pack-size, ...)."""

from __future__ import annotations

import argparse
import sys

from mer_ray.data.manifest import read_manifest
from mer_ray.errors import InputError
from mer_ray.runs.preflight import check_options
from mer_ray.runs.run import grid_settings
from mer_ray.train.presets import PRESETS, field_value, get_preset, parse_override
from mer_ray.train.recipes import read_recipe, store_warning

DEFAULT_PRESET = "robust_v3"
# Parameters the library names differently from the flag that sets them (the rest are
# each flag's argparse dest: --pack-size sets pack_size).
FLAG_OF = {"wait_s": "--wait-for-capacity", "prior_splits": "--prior-split"}


def location(text: str) -> str:
    """argparse type of a folder or URI flag: an empty value (an unset shell variable)
    is refused, never taken as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty (an unset shell variable?); give a folder "
                                         "or URI, e.g. runs/v3 or s3://bucket/runs/v3")
    return text


# ---------------------------------------------------------------- adding flags
def add_recipe_args(parser) -> None:
    """--preset / --recipe, --store, --out and --set: what to train, on what, where."""
    parser.add_argument("--preset", default=None,
                        help=f"{', '.join(PRESETS)} (default {DEFAULT_PRESET}): the "
                        "published recipes")
    parser.add_argument("--recipe", default=None, metavar="FILE",
                        help="a recipe file instead of --preset (`mer-ray search` writes one "
                        "into its run: RUN/recipe.yaml)")
    parser.add_argument("--store", required=True, type=location,
                        help="feature store (mer-ray data import), a folder or URI (s3://, "
                        "gs://, ...)")
    parser.add_argument("--out", required=True, type=location,
                        help="run folder or URI (s3://, gs://, ...)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a preset field, e.g. --set epochs=50 (repeatable)")


def add_seeds_arg(parser) -> None:
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")


def add_grid_arg(parser) -> None:
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                        help="another field to grid over, e.g. --grid dropout=0.3,0.4")


def add_run_args(parser, tune: bool = True) -> None:
    """How the members are spread over Ray (or trained here with --no-ray), reported and
    resumed. `tune`: the command runs Ray Tune trials (--tune-verbose)."""
    parser.add_argument("--workers", type=int, default=None,
                        help="Train workers per run (default: as many as the cluster holds)")
    parser.add_argument("--gpus-per-worker", type=float, default=0,
                        help="GPUs per Train worker; a fraction shares a GPU (default 0: CPU)")
    parser.add_argument("--pack-size", type=int, default=10,
                        help="members trained together as one pack per worker (default 10)")
    parser.add_argument("--log-every", type=int, default=10,
                        help="print each pack's progress every N epochs (default 10; "
                        "--no-ray on a terminal shows a progress bar instead)")
    parser.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                        help="write no TensorBoard curves (default: OUT/tensorboard/<member>/,"
                        " one point per epoch; `tensorboard --logdir OUT`)")
    if tune:
        parser.add_argument("--tune-verbose", type=int, choices=(0, 1, 2), default=0,
                            help="Ray Tune's own console output: 0 none (default), 1 its "
                            "trial table every 30 s with each trial's members saved, epoch "
                            "and best F1 so far (and each trial's config when it starts), "
                            "2 every report")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it holds something other than a mer-ray run")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (default RAY_ADDRESS, else an embedded "
                        "local Ray with its dashboard on 127.0.0.1:8265)")
    parser.add_argument("--no-ray", action="store_true",
                        help="train everything in this process without Ray (debugging, and "
                        "the baseline of the Ray-overhead benchmark)")
    parser.add_argument("--device", default=None, help="--no-ray only: cpu or cuda")
    parser.add_argument("--wait-for-capacity", type=float, default=300.0, metavar="SECONDS",
                        help="after a node is lost, how long Train may wait for room to "
                        "restart a run's workers before its members go to the nodes left or "
                        "the run stops with what is still to train (default 300)")


# ---------------------------------------------------------------- reading them
def flag_names(parser) -> dict[str, str]:
    """parameter -> the flag that sets it, over every command of `parser` (argparse dests,
    then FLAG_OF): what InputError.named needs to speak the command line's language."""
    names = {}
    for action in parser._actions:
        flags = [s for s in action.option_strings if s.startswith("--")]
        if flags:
            names.setdefault(action.dest, flags[-1])
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                for dest, flag in flag_names(command).items():
                    names.setdefault(dest, flag)
    return {**names, **FLAG_OF}


def check_run_args(args) -> None:
    check_options(pack_size=args.pack_size, workers=args.workers,
                  gpus_per_worker=args.gpus_per_worker, log_every=args.log_every,
                  wait_s=args.wait_for_capacity)


def recipe_of(args):
    """--preset or --recipe FILE, then every --set."""
    if getattr(args, "recipe", None):
        if args.preset is not None:
            raise InputError("give --preset or --recipe, not both")
        config, info = read_recipe(args.recipe)
        if not getattr(args, "_recipe_warned", False):
            line = store_warning(args.recipe, info, args.store,
                                 read_manifest(args.store)["content_hash"])
            if line:
                print(line, file=sys.stderr)
            args._recipe_warned = True
    else:
        config = get_preset(args.preset or DEFAULT_PRESET)
    for text in args.set:
        config = parse_override(config, text)
    return config


def grid_of(args) -> list[dict]:
    """The settings --warmup and --grid span (one empty setting without them)."""
    grid = {}
    if getattr(args, "warmup", None):
        grid["warmup"] = [field_value("warmup", str(w), f"--warmup {w}") for w in args.warmup]
    for text in getattr(args, "grid", []):
        field, _, values = text.partition("=")
        field = field.strip()
        if not values:
            raise InputError(f"--grid {text!r}: expected FIELD=V1,V2,... e.g. --grid "
                             "dropout=0.3,0.4")
        grid[field] = [field_value(field, v, f"--grid {text!r}") for v in values.split(",")]
    return grid_settings(grid)


def device_of(requested: str | None) -> str:
    """--device checked against this machine; default cuda where there is one."""
    import torch  # only commands that train or predict here pay for it

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (requested == "cpu" or requested.startswith("cuda")):
        raise InputError(f"--device {requested!r}: expected cpu or cuda")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {requested}: this machine has no CUDA GPU; use --device cpu")
    return requested
