"""`mer-ray selftrain`: self-training rounds on the store's unlabelled pool."""

from __future__ import annotations

from mer_ray.cli.options import (
    add_grid_arg,
    add_recipe_args,
    add_run_args,
    add_seeds_arg,
    check_run_args,
    device_of,
    grid_of,
    recipe_of,
)
from mer_ray.errors import InputError
from mer_ray.runs.run import absolute
from mer_ray.train.presets import check_field


def add_selftrain_parser(commands) -> None:
    p = commands.add_parser(
        "selftrain", help="self-training rounds on the store's unlabelled pool",
        description="Round 0 trains the recipe (or grid) as `train` / `tune` do (a run that "
        "already holds those members is round 0 as it is). In each round r >= 1, round "
        "r-1's members of fold f label the store's pool (every seed of them), the samples "
        "selected join the training rows of round r's students of fold f, and those "
        "students train. Held-out folds, early stopping, LR plateaus and the round chosen "
        "stay on real labels only. Stops after --rounds or at the first round whose "
        "out-of-fold score does not improve.")
    add_recipe_args(p)
    add_seeds_arg(p)
    add_grid_arg(p)
    add_run_args(p)
    p.add_argument("--rounds", type=int, default=3,
                   help="self-training rounds after round 0 (default 3)")
    p.add_argument("--all-rounds", action="store_true",
                   help="train every round even where the out-of-fold score did not "
                   "improve (to see them all; the round chosen is still the best on cv)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="select samples whose class the teachers give at least this mean "
                   "probability (default 0.9)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="instead of --threshold: the K most confident samples of each class")
    p.add_argument("--agreement", type=float, default=0.0, metavar="SHARE",
                   help="also require this share of the teachers to give the same class "
                   "(default 0: off; 1: all)")
    p.add_argument("--cap", default="1.5", metavar="FACTOR",
                   help="no class fills more than FACTOR x its prior share of the "
                   "selection (default 1.5; none: no cap)")
    p.add_argument("--cap-prior", choices=("train", "em"), default="train",
                   help="the prior the caps use: train's (default) or the pool's, estimated "
                   "by EM from the teachers' probabilities")
    p.add_argument("--pseudo-weight", type=float, default=1.0,
                   help="loss weight of a pseudo-labelled row (a labelled row's is 1)")
    p.add_argument("--soft", action="store_true",
                   help="learn the teachers' mean probabilities (default: their class)")
    p.add_argument("--transductive", action="store_true",
                   help="label the unlabelled test split(s) too, not only the pool")
    p.add_argument("--teachers", choices=("fold", "all"), default="fold",
                   help="fold (default): a student learns from its own fold's teachers "
                   "only, so out-of-fold scores stay honest; all: every member (inflates "
                   "the out-of-fold score; for measuring that)")
    p.set_defaults(func=cmd_selftrain)


def selection_of(args) -> dict:
    """The self-training flags as the pseudo_* fields of rounds >= 1 (checked by the
    fields' own rules)."""
    chosen = {"pseudo_threshold": args.threshold, "pseudo_top_k": args.top_k,
              "pseudo_agreement": args.agreement, "pseudo_weight": args.pseudo_weight,
              "pseudo_targets": "soft" if args.soft else "hard",
              "pseudo_teachers": args.teachers, "pseudo_prior": args.cap_prior,
              "pseudo_source": "pool+test" if args.transductive else "pool"}
    chosen["pseudo_cap"] = None if str(args.cap).lower() in ("none", "off") else args.cap
    flags = {"pseudo_threshold": "--threshold", "pseudo_top_k": "--top-k",
             "pseudo_agreement": "--agreement", "pseudo_weight": "--pseudo-weight",
             "pseudo_cap": "--cap"}
    out = {}
    for name, value in chosen.items():
        if name == "pseudo_cap" and value is not None:
            try:
                value = float(value)
            except ValueError:
                raise InputError(f"--cap {args.cap!r}: expected a factor in [1, 100] or none") \
                    from None
        try:
            out[name] = check_field(name, value)
        except InputError as e:
            raise InputError(f"{flags.get(name, name)}: {e}") from None
    return out


def cmd_selftrain(args):
    from mer_ray.runs.progress import use_bar
    from mer_ray.selftrain.rounds import Training, selftrain

    check_run_args(args)
    args.store, args.out = absolute(args.store), absolute(args.out)
    config = recipe_of(args)
    settings = grid_of(args)
    for s in settings:
        config.replace(**s)  # a bad grid value fails here
    training = Training(no_ray=args.no_ray, device=device_of(args.device) if args.no_ray
                        else "cpu", workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                        pack_size=args.pack_size, log_every=args.log_every,
                        tensorboard=args.tensorboard, tune_verbose=args.tune_verbose,
                        bar=args.no_ray and use_bar(), wait_s=args.wait_for_capacity)
    selftrain(args.store, args.out, config, settings, args.seeds, args.rounds,
              selection_of(args), training, overwrite=args.overwrite, address=args.address,
              all_rounds=args.all_rounds)
