"""`mer-ray train | tune | search`: one recipe, a grid of settings, a random search. All
three check everything first (store, recipe, --out), then train every setting through
Ray Train / Tune or, with --no-ray, here."""

from __future__ import annotations

import argparse
import os

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
from mer_ray.runs.preflight import preflight, replace_out
from mer_ray.runs.run import absolute, read_config_members, record_run, train_grid_here


def add_train_parser(commands) -> None:
    p = commands.add_parser(
        "train", help="train one recipe's fold x seed members (Ray Train)",
        description="Train the 5 CV folds x seeds of a recipe as Ray Train workers, each "
        "training its share of members in packs; member files go to OUT/members. "
        "Re-running with the same --out skips members already saved. The store, the "
        "recipe and --out are checked before anything starts.")
    add_recipe_args(p)
    add_seeds_arg(p)
    add_run_args(p, tune=False)
    p.set_defaults(func=cmd_train)


def add_tune_parser(commands) -> None:
    p = commands.add_parser(
        "tune", help="Ray Tune over a grid of recipe settings (the warmup grid)",
        description="One Tune trial per grid setting (FIFO: an early-stopping scheduler "
        "would kill ensemble members and compare folds of different difficulty); each trial "
        "runs the Ray Train run of `mer-ray train`. Prints the trials' scores at the end.")
    add_recipe_args(p)
    add_seeds_arg(p)
    p.add_argument("--warmup", type=int, nargs="+", default=[30, 40, 50],
                   help="warmup grid (default 30 40 50)")
    add_grid_arg(p)
    add_run_args(p)
    p.set_defaults(func=cmd_tune)


def add_search_parser(commands) -> None:
    p = commands.add_parser(
        "search", help="random recipe search, each trial one seed's folds, chosen on cv only",
        description="Draw --trials recipes from a documented space (warmup, dropout, L2, "
        "per-modality modality dropout and feature noise, contrastive weight; see "
        "mer_ray/search.py), train each as one seed's folds through Ray Tune (FIFO: whole "
        "trials always finish), and rank them by their out-of-fold score only; test splits "
        "are shown as held out. The same --search-seed draws the same trials (resume).")
    add_recipe_args(p)
    add_run_args(p)
    p.add_argument("--trials", type=int, default=8, help="recipes to draw (default 8)")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds of every trial (default 0); with several, each "
                   "trial's spread over seeds says whether the winner leads by more than "
                   "seed noise")
    p.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--top", type=int, default=3, help="trials marked as chosen (default 3)")
    p.set_defaults(func=cmd_search)


def run_grid(args, settings, tune: bool = True):
    """Check everything, then train every setting of the grid (Ray or in-process).
    Returns (config, seeds, rows): the recipe, the seeds, and for a Ray Tune run the
    ResultGrid's (setting, summary) per trial (None otherwise: the caller reads the
    member files)."""
    check_run_args(args)
    args.store, args.out = absolute(args.store), absolute(args.out)
    config = recipe_of(args)
    configs = [config.replace(**s) for s in settings]  # a bad grid value fails here
    device = device_of(args.device) if args.no_ray else None
    local = args.no_ray or not (args.address or os.environ.get("RAY_ADDRESS"))
    checked = preflight(args.store, configs, args.seeds, args.out, args.pack_size,
                        overwrite=args.overwrite, local=local)
    if args.overwrite:
        replace_out(args.out)
    seeds = checked.seeds
    record_run(args.out, args.store, configs, checked.store.manifest, seeds=seeds)
    if args.no_ray:
        from mer_ray.runs.progress import use_bar

        train_grid_here(checked.store, args.store, config, settings, seeds, args.out,
                        args.pack_size, device, log_every=args.log_every,
                        tensorboard=args.tensorboard, bar=use_bar())
        return config, seeds, None
    del checked  # the workers read the store themselves

    from mer_ray.distributed.cluster import connect, disconnect
    from mer_ray.distributed.train import train_alone
    from mer_ray.distributed.tune import tune_grid

    started = connect(args.address)
    try:
        if not tune:
            train_alone(args.store, config, seeds, args.out, args.workers,
                        args.gpus_per_worker, args.pack_size,
                        log_every=args.log_every, tensorboard=args.tensorboard,
                        wait_s=args.wait_for_capacity)
            return config, seeds, None
        grid = tune_grid(args.store, config, settings, seeds, args.out, args.workers,
                         args.gpus_per_worker, args.pack_size,
                         log_every=args.log_every, tensorboard=args.tensorboard,
                         verbose=args.tune_verbose, wait_s=args.wait_for_capacity)
        return config, seeds, [(r.config["setting"], r.metrics) for r in grid]
    finally:
        if started:
            disconnect()


def trial_rows(args, config, settings, seeds, rows):
    """Each setting's summary: Tune's where it ran, else read from the member files."""
    from ensembles.groups import trial_summary

    if rows is not None:
        return rows
    return [(s, trial_summary(read_config_members(args.out, config.replace(**s), seeds)))
            for s in settings]


def cmd_train(args):
    from ensembles.groups import seed_table

    config, seeds, _ = run_grid(args, [{}], tune=False)
    members = read_config_members(args.out, config, seeds, log=print)
    print(f"\n{config.preset}: fold-averaged members of each seed (MERTools protocol)")
    print(seed_table(members))


def cmd_tune(args):
    from ensembles.groups import trial_table

    settings = grid_of(args)
    config, seeds, rows = run_grid(args, settings)
    print("\ntrials (mean over seeds of each seed's fold-averaged members)")
    print(trial_table(trial_rows(args, config, settings, seeds, rows)))


def cmd_search(args):
    from mer_ray.data.manifest import read_manifest
    from mer_ray.search import (
        SPACE,
        best_trials,
        draw_settings,
        search_table,
        seed_spread,
        spread_lines,
        write_search_recipe,
    )

    manifest = read_manifest(args.store)
    if args.seed is not None:  # the single-seed flag of earlier versions
        args.seeds = [args.seed]
    settings = draw_settings(args.trials, args.search_seed, modalities=manifest["modalities"])
    print(f"random search: {args.trials} trial(s) drawn with --search-seed {args.search_seed}, "
          f"each {len(args.seeds)} seed(s) x {recipe_of(args).n_folds} folds; space: "
          + "; ".join(d.describe() for d in SPACE))
    config, seeds, rows = run_grid(args, settings)
    rows = trial_rows(args, config, settings, seeds, rows)
    best = best_trials(rows, args.top)
    objective = "combined" if "cv_combined" in rows[0][1] else "f1"
    print(f"\ntrials, best out-of-fold first (objective: cv {objective})")
    print(search_table(rows, best))
    spreads = [seed_spread(read_config_members(args.out, config.replace(**s), seeds))
               for s, _ in rows]
    print("\n".join(spread_lines(rows, spreads, best[0])))
    path = write_search_recipe(args, config, settings[best[0]], rows, spreads, best[0],
                               manifest, seeds)
    print(f"\nthe chosen recipe (trial {best[0] + 1}) is {path}: train it with `mer-ray train "
          f"--recipe {path} --seeds 0 1 2 ...` (it was chosen on this store's out-of-fold "
          "scores; on other data, search again)")
    print(f"next: mer-ray ensemble score {args.out} --strategy greedy  (greedy picks among "
          "the trials on out-of-fold predictions too)")
