"""The `mer-ray` command line.

Handlers import their heavy modules lazily so `mer-ray --help` stays fast. A user's
mistake (InputError) prints one line and exits 2; a full or read-only disk
(StorageError) prints one line saying what to do and exits 1; never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from mer_ray.data.constants import MER2023_FEATURES
from mer_ray.demo import DEMO_SCALE, DEMO_SEEDS
from mer_ray.errors import InputError, RunStopped, StorageError


def location(text: str) -> str:
    """argparse type of a folder or URI flag: an empty value (an unset shell variable)
    is refused, never taken as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty (an unset shell variable?); give a folder "
                                         "or URI, e.g. runs/v3 or s3://bucket/runs/v3")
    return text


def cmd_synth(args):
    from mer_ray.data.synth import TRUTH_CSV, planned_counts, synthesize

    counts, extra = planned_counts(args.scale, args.dataset, args.pool, args.test_prior)
    out = synthesize(args.out, seed=args.seed, scale=args.scale, overwrite=args.overwrite,
                     progress=not args.quiet, dataset=args.dataset, pool=args.pool,
                     test_prior=args.test_prior)
    print(f"wrote synthetic {args.dataset} (seed {args.seed}, scale {args.scale}) to {out}")
    print(f"{'split':<7}{'count':>7}  per class")
    for s, row in {**counts, **extra}.items():
        print(f"{s:<7}{sum(row):>7}  {row}")
    if (out / TRUTH_CSV).exists():
        print(f"the true classes of the unlabelled samples: {out / TRUTH_CSV} (for scoring "
              "what a user could not; not a label file)")


def cmd_import(args):
    from mer_ray.data.mertools import import_mertools
    from mer_ray.data.store import read_manifest, summary_table

    out = import_mertools(
        args.features, args.labels, args.out, audio=args.audio, text=args.text,
        video=args.video, trust_pickle=args.trust_pickle, overwrite=args.overwrite,
        progress=not args.quiet, classes=args.classes.split(",") if args.classes else None,
        candidates=args.candidates, unlabelled_split=args.unlabelled_split,
        unlabelled=args.unlabelled, keep_unlabelled=not args.drop_unlabelled,
        dataset_name=args.dataset_name, pool_split=args.pool_split,
    )
    print(f"wrote feature store {out}")
    print(summary_table(read_manifest(out)))


def cmd_summary(args):
    from mer_ray.data.store import read_manifest, read_store, summary_table

    if args.verify:
        read_store(args.store, verify=True)
    print(summary_table(read_manifest(args.store)))


def _recipe(args):
    """--preset or --recipe FILE, then every --set."""
    from mer_ray.train.presets import get_preset, parse_override

    if getattr(args, "recipe", None):
        if args.preset is not None:
            raise InputError("give --preset or --recipe, not both")
        from mer_ray.train.recipes import read_recipe, store_warning

        config, info = read_recipe(args.recipe)
        if not getattr(args, "_recipe_warned", False):
            from mer_ray.data.store import read_manifest

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


def _grid(args) -> list[dict]:
    from mer_ray.train.presets import field_value
    from mer_ray.runs.run import grid_settings

    grid = {}
    if getattr(args, "warmup", None):
        grid["warmup"] = [field_value("warmup", str(w), f"--warmup {w}") for w in args.warmup]
    for text in getattr(args, "grid", []):
        field, _, values = text.partition("=")
        field = field.strip()
        if not values:
            raise InputError(f"--grid {text!r}: expected FIELD=V1,V2,... e.g. --grid dropout=0.3,0.4")
        grid[field] = [field_value(field, v, f"--grid {text!r}") for v in values.split(",")]
    return grid_settings(grid)


def _check_flags(args) -> None:
    if args.pack_size < 1:
        raise InputError(f"--pack-size {args.pack_size}: must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: must be at least 1")
    if not 0 <= args.gpus_per_worker <= 64:
        raise InputError(f"--gpus-per-worker {args.gpus_per_worker}: must be in [0, 64]")
    if args.log_every < 1:
        raise InputError(f"--log-every {args.log_every}: must be at least 1")
    if not 0 < args.wait_for_capacity <= 7 * 24 * 3600:
        raise InputError(f"--wait-for-capacity {args.wait_for_capacity:g}: expected seconds "
                         "in (0, 604800]")


def _run_grid(args, settings):
    """Check everything, then train every setting of the grid (Ray or in-process).
    Returns (config, seeds, rows): the recipe, the seeds, and for a Ray Tune run the
    ResultGrid's (setting, summary) per trial (None otherwise: the caller reads the
    member files)."""
    import os

    from mer_ray.runs.preflight import preflight, replace_out
    from mer_ray.runs.run import absolute, record_run, train_grid_here

    _check_flags(args)
    args.store, args.out = absolute(args.store), absolute(args.out)
    config = _recipe(args)
    configs = [config.replace(**s) for s in settings]  # a bad grid value fails here
    device = _device(args.device) if args.no_ray else None
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
        if args.command == "train":
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


def _device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (requested == "cpu" or requested.startswith("cuda")):
        raise InputError(f"--device {requested!r}: expected cpu or cuda")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {requested}: this machine has no CUDA GPU; use --device cpu")
    return requested


def cmd_train(args):
    from ensembles.groups import seed_table

    from mer_ray.runs.run import read_config_members

    config, seeds, _ = _run_grid(args, [{}])
    members = read_config_members(args.out, config, seeds, log=print)
    print(f"\n{config.preset}: fold-averaged members of each seed (MERTools protocol)")
    print(seed_table(members))


def cmd_tune(args):
    from ensembles.groups import trial_summary, trial_table

    from mer_ray.runs.run import read_config_members

    settings = _grid(args)
    config, seeds, rows = _run_grid(args, settings)
    if rows is None:  # --no-ray: the same summaries, from the member files
        rows = [(s, trial_summary(read_config_members(args.out, config.replace(**s), seeds)))
                for s in settings]
    print("\ntrials (mean over seeds of each seed's fold-averaged members)")
    print(trial_table(rows))


def cmd_search(args):
    from ensembles.groups import trial_summary
    from mer_ray.runs.run import read_config_members
    from mer_ray.data.store import read_manifest
    from mer_ray.search import (SPACE, best_trials, draw_settings, search_table, seed_spread,
                                spread_lines, write_search_recipe)

    manifest = read_manifest(args.store)
    if args.seed is not None:  # the single-seed flag of earlier versions
        args.seeds = [args.seed]
    settings = draw_settings(args.trials, args.search_seed, modalities=manifest["modalities"])
    print(f"random search: {args.trials} trial(s) drawn with --search-seed {args.search_seed}, "
          f"each {len(args.seeds)} seed(s) x {get_folds(args)} folds; space: "
          + "; ".join(d.describe() for d in SPACE))
    args.command = "tune"
    config, seeds, rows = _run_grid(args, settings)
    if rows is None:
        rows = [(s, trial_summary(read_config_members(args.out, config.replace(**s), seeds)))
                for s in settings]
    best = best_trials(rows, args.top)
    print(f"\ntrials, best out-of-fold first (objective: cv {'combined' if 'cv_combined' in rows[0][1] else 'f1'})")
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


def _selection(args) -> dict:
    """The self-training flags as the pseudo_* fields of rounds >= 1 (checked by the
    fields' own rules)."""
    from mer_ray.train.presets import check_field

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
    from mer_ray.runs.run import absolute
    from mer_ray.selftrain.rounds import Training, selftrain

    _check_flags(args)
    args.store, args.out = absolute(args.store), absolute(args.out)
    config = _recipe(args)
    settings = _grid(args)
    for s in settings:
        config.replace(**s)  # a bad grid value fails here
    training = Training(no_ray=args.no_ray, device=_device(args.device) if args.no_ray
                        else "cpu", workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                        pack_size=args.pack_size, log_every=args.log_every,
                        tensorboard=args.tensorboard, tune_verbose=args.tune_verbose,
                        bar=args.no_ray and use_bar(), wait_s=args.wait_for_capacity)
    selftrain(args.store, args.out, config, settings, args.seeds, args.rounds,
              _selection(args), training, overwrite=args.overwrite, address=args.address,
              all_rounds=args.all_rounds)


def cmd_status(args):
    import json

    from mer_ray.runs.status import format_status, run_status

    status = run_status(args.run)
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        print(format_status(status, members=args.members))


def get_folds(args) -> int:
    return _recipe(args).n_folds


def cmd_predict(args):
    import time

    from ensembles.output import check_out, write_outputs
    from mer_ray.predict import Predictor, output_files
    from mer_ray.storage import exists

    t0 = time.perf_counter()
    if (args.features is None) == (args.store is None):
        raise InputError("give either --features DIR or --store STORE [--split NAME]")
    if args.split and args.store is None:
        raise InputError("--split goes with --store")
    check_out(args.out)
    if exists(args.out) and not args.overwrite:
        raise InputError(f"--out {args.out} already exists; choose another or pass --overwrite")
    device = _device(args.device or "cpu")
    t_load = time.perf_counter()
    predictor = Predictor.load(args.run, where=args.where, strategy=args.strategy,
                               device=device)
    loading = time.perf_counter() - t_load
    candidates = None
    if args.candidates:
        from mer_ray.data.mertools import _candidates_rows

        candidates = _candidates_rows(args.candidates)
    loading_store = 0.0
    if args.features is not None:
        pred = predictor.predict_features(args.features, missing=args.missing,
                                          candidates=candidates, progress=not args.quiet)
        source = f"features {args.features}"
    else:
        from mer_ray.data.store import read_store

        t_store = time.perf_counter()
        store = read_store(args.store, verify=True)
        loading_store = time.perf_counter() - t_store
        pred = predictor.predict_store(store, args.split, progress=not args.quiet)
        source = f"store {args.store} split {args.split or store.dataset.test_splits[0]}"
    shift = None
    from ensembles.prior import MIN_SAMPLES, prior_lines

    if args.prior_shift == "em" or len(pred.names) >= MIN_SAMPLES:
        shift = predictor.prior_shift(pred, args.prior_shift == "em", f"--out {args.out}'s "
                                      "samples")
        pred.prior = shift
    t1 = time.perf_counter()
    written = write_outputs(args.out, output_files(pred, predictor, source))
    writing = time.perf_counter() - t1
    for what, n in pred.zeroed.items():
        print(f"--missing zero: {n} sample(s) had no {what}; that modality was zeroed for them")
    total = time.perf_counter() - t0
    parts = {"loading the members": loading}
    if args.store is not None:
        parts["reading the store (verified)"] = loading_store
    parts.update({"reading the features": pred.seconds["reading"],
                  "model": pred.seconds["model"], "writing": writing})
    parts["the rest (importing torch, checks)"] = max(0.0, total - sum(parts.values()))
    print(f"predicted {len(pred.names)} samples with {len(pred.member_logits)} members "
          f"({predictor.strategy}) in {total:.1f} s: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))
    counts = {c: pred.labels.count(c) for c in pred.classes}
    if shift is not None:
        print("\n".join(prior_lines(shift, pred.classes, f"the {len(pred.names)} samples")))
        if args.prior_shift == "em":
            print("--prior-shift em: the probabilities were moved to this estimate before "
                  "the argmax")
    print("predicted classes: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    print(f"wrote submission.csv, predictions.parquet, member_logits.parquet, summary.json "
          f"to {written}")


def cmd_demo(args):
    from mer_ray.demo import run_demo

    run_demo(args.out, seed=args.seed, scale=args.scale, seeds=args.seeds,
             overwrite=args.overwrite, address=args.address)


DEFAULT_PRESET = "robust_v3"


def _add_train_args(t, name: str) -> None:
    from mer_ray.train.presets import PRESETS

    t.add_argument("--preset", default=None,
                   help=f"{', '.join(PRESETS)} (default {DEFAULT_PRESET}): the published "
                   "recipes")
    t.add_argument("--recipe", default=None, metavar="FILE",
                   help="a recipe file instead of --preset (`mer-ray search` writes one "
                   "into its run: RUN/recipe.yaml)")
    t.add_argument("--store", required=True, type=location,
                   help="feature store (mer-ray data import), a "
                   "folder or URI (s3://, gs://, ...)")
    if name != "search":
        t.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    t.add_argument("--out", required=True, type=location,
                   help="run folder or URI (s3://, gs://, ...)")
    t.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a preset field, e.g. --set epochs=50 (repeatable)")
    if name == "tune":
        t.add_argument("--warmup", type=int, nargs="+", default=[30, 40, 50],
                       help="warmup grid (default 30 40 50)")
    if name in ("tune", "selftrain"):
        t.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                       help="another field to grid over, e.g. --grid dropout=0.3,0.4")
    t.add_argument("--workers", type=int, default=None,
                   help="Train workers per run (default: as many as the cluster holds)")
    t.add_argument("--gpus-per-worker", type=float, default=0,
                   help="GPUs per Train worker; a fraction shares a GPU (default 0: CPU)")
    t.add_argument("--pack-size", type=int, default=10,
                   help="members trained together as one pack per worker (default 10)")
    t.add_argument("--log-every", type=int, default=10,
                   help="print each pack's progress every N epochs (default 10; --no-ray "
                   "on a terminal shows a progress bar instead)")
    t.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="write no TensorBoard curves (default: OUT/tensorboard/<member>/, "
                   "one point per epoch; `tensorboard --logdir OUT`)")
    if name != "train":
        t.add_argument("--tune-verbose", type=int, choices=(0, 1, 2), default=0,
                       help="Ray Tune's own console output: 0 none (default), 1 its trial "
                       "table every 30 s with each trial's members saved, epoch and best "
                       "F1 so far (and each trial's config when it starts), 2 every report")
    t.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds something other than a mer-ray run")
    t.add_argument("--address", default=None,
                   help="Ray cluster to join (default RAY_ADDRESS, else an embedded local "
                   "Ray with its dashboard on 127.0.0.1:8265)")
    t.add_argument("--no-ray", action="store_true",
                   help="train everything in this process without Ray (debugging, and "
                   "the baseline of the Ray-overhead benchmark)")
    t.add_argument("--device", default=None, help="--no-ray only: cpu or cuda")
    t.add_argument("--wait-for-capacity", type=float, default=300.0, metavar="SECONDS",
                   help="after a node is lost, how long Train may wait for room to restart "
                   "a run's workers before its members go to the nodes left or the run "
                   "stops with what is still to train (default 300)")


def _add_selftrain_parser(sub) -> None:
    sl = sub.add_parser(
        "selftrain", help="self-training rounds on the store's unlabelled pool",
        description="Round 0 trains the recipe (or grid) as `train` / `tune` do (a run that "
        "already holds those members is round 0 as it is). In each round r >= 1, round "
        "r-1's members of fold f label the store's pool (every seed of them), the samples "
        "selected join the training rows of round r's students of fold f, and those "
        "students train. Held-out folds, early stopping, LR plateaus and the round chosen "
        "stay on real labels only. Stops after --rounds or at the first round whose "
        "out-of-fold score does not improve.")
    _add_train_args(sl, "selftrain")
    sl.add_argument("--rounds", type=int, default=3,
                    help="self-training rounds after round 0 (default 3)")
    sl.add_argument("--all-rounds", action="store_true",
                    help="train every round even where the out-of-fold score did not "
                    "improve (to see them all; the round chosen is still the best on cv)")
    sl.add_argument("--threshold", type=float, default=0.9,
                    help="select samples whose class the teachers give at least this mean "
                    "probability (default 0.9)")
    sl.add_argument("--top-k", type=int, default=None, metavar="K",
                    help="instead of --threshold: the K most confident samples of each class")
    sl.add_argument("--agreement", type=float, default=0.0, metavar="SHARE",
                    help="also require this share of the teachers to give the same class "
                    "(default 0: off; 1: all)")
    sl.add_argument("--cap", default="1.5", metavar="FACTOR",
                    help="no class fills more than FACTOR x its prior share of the "
                    "selection (default 1.5; none: no cap)")
    sl.add_argument("--cap-prior", choices=("train", "em"), default="train",
                    help="the prior the caps use: train's (default) or the pool's, estimated "
                    "by EM from the teachers' probabilities")
    sl.add_argument("--pseudo-weight", type=float, default=1.0,
                    help="loss weight of a pseudo-labelled row (a labelled row's is 1)")
    sl.add_argument("--soft", action="store_true",
                    help="learn the teachers' mean probabilities (default: their class)")
    sl.add_argument("--transductive", action="store_true",
                    help="label the unlabelled test split(s) too, not only the pool")
    sl.add_argument("--teachers", choices=("fold", "all"), default="fold",
                    help="fold (default): a student learns from its own fold's teachers "
                    "only, so out-of-fold scores stay honest; all: every member (inflates "
                    "the out-of-fold score; for measuring that)")
    sl.set_defaults(func=cmd_selftrain)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mer-ray",
        description="Ray-distributed ensemble trainer for multimodal emotion recognition "
        "(MER2023, MER2024/2025 and datasets like them).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="create, import and inspect feature stores")
    dsub = data.add_subparsers(dest="data_command", required=True)

    s = dsub.add_parser("synth", help="write a synthetic dataset tree (MERTools layout)",
                        description="Write DIR/features/<feature-name>/<sample>.npy and the "
                        "dataset's label files: mer2023 (labels.csv with MER2023's split "
                        "sizes, class counts, feature names and dims), mer2024 (no valence, "
                        "an unlabelled test set: track1_train_disdim.csv + "
                        "track_all_candidates.csv), mer2025 (the same files, 20,000 "
                        "candidates and a pool of 20,000 more unlabelled samples) or toy4 "
                        "(4 classes, small dims). The true classes of whatever is handed out "
                        "unlabelled go to DIR/truth.csv.")
    s.add_argument("--out", required=True, type=location, help="folder to create")
    s.add_argument("--dataset", default="mer2023",
                   choices=("mer2023", "mer2024", "mer2025", "toy4"),
                   help="which dataset's shape (default mer2023)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--scale", type=float, default=1.0,
                   help="fraction of the dataset's sample counts, for quick runs (default 1.0)")
    s.add_argument("--pool", type=int, default=None, metavar="N",
                   help="N unlabelled pool samples from the same task with train's class "
                   "prior (feature files only; import with --pool-split pool). Default: "
                   "mer2025's 20,000 x --scale, none for the others")
    s.add_argument("--test-prior", default=None, metavar="P1,P2,...",
                   help="the class prior of the unlabelled test split (one share per class, "
                   "summing to 1; its size stays): a prior shift between train and test")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_synth)

    i = dsub.add_parser("import", help="import MERTools features + labels into a store",
                        description="Read <DIR>/<feature-name>/<sample>.npy (a 2-D [T, D] "
                        "array is averaged over T) and labels, validate everything, and "
                        "write a feature store. Samples with features but no label are kept "
                        "as an unlabelled split. Nothing is written unless all input is valid.")
    i.add_argument("--features", required=True, help="folder holding one folder per feature")
    i.add_argument("--labels", required=True,
                   help="labels: a CSV name,split,discrete[,valence]; a folder of <split>.csv "
                   "files name,discrete[,valence]; label-6way.npz / track1_label_6way.npz "
                   "(needs --trust-pickle); or train labels name,discrete with --candidates")
    i.add_argument("--out", required=True, type=location,
                   help="feature store folder or URI to create")
    for m in ("audio", "text", "video"):
        i.add_argument(f"--{m}", default=MER2023_FEATURES[m][0],
                       help=f"{m} feature folder name(s), comma-separated, or 'none' "
                       f"(default {MER2023_FEATURES[m][0]})")
    i.add_argument("--classes", default=None, metavar="A,B,C",
                   help="class names in order (default: MER's six when the labels use them, "
                   "else the sorted set found)")
    i.add_argument("--candidates", default=None, metavar="CSV",
                   help="the unlabelled test set's names (column name), e.g. MER2025's "
                   "track_all_candidates.csv; its order is the submission's")
    i.add_argument("--unlabelled-split", default="unlabelled", metavar="NAME",
                   help="split name for samples with features but no label (default "
                   "unlabelled)")
    i.add_argument("--pool-split", default=None, metavar="NAME",
                   help="keep the samples with features but no label that are not "
                   "candidates as this split, an unlabelled pool for `mer-ray selftrain` "
                   "(never predicted or scored); without --candidates, every unlabelled "
                   "sample goes there instead of the unlabelled split")
    i.add_argument("--unlabelled", action="append", default=[], metavar="SPLIT",
                   help="treat this labelled-looking split as unlabelled (placeholder labels)")
    i.add_argument("--drop-unlabelled", action="store_true",
                   help="leave out feature files that have no label (default: keep them)")
    i.add_argument("--dataset-name", default=None, help="a name for the dataset")
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
            "Re-running with the same --out skips members already saved. The store, the "
            "recipe and --out are checked before anything starts."
            if name == "train" else
            "One Tune trial per grid setting (FIFO: an early-stopping scheduler would kill "
            "ensemble members and compare folds of different difficulty); each trial runs "
            "the Ray Train run of `mer-ray train`. Prints the trials' scores at the end.",
        )
        _add_train_args(t, name)
        t.set_defaults(func=cmd_train if name == "train" else cmd_tune)

    se = sub.add_parser(
        "search", help="random recipe search, each trial one seed's folds, chosen on cv only",
        description="Draw --trials recipes from a documented space (warmup, dropout, L2, "
        "per-modality modality dropout and feature noise, contrastive weight; see "
        "mer_ray/search.py), train each as one seed's folds through Ray Tune (FIFO: whole "
        "trials always finish), and rank them by their out-of-fold score only; test splits "
        "are shown as held out. The same --search-seed draws the same trials (resume).")
    _add_selftrain_parser(sub)
    _add_train_args(se, "search")
    se.add_argument("--trials", type=int, default=8, help="recipes to draw (default 8)")
    se.add_argument("--search-seed", type=int, default=0, help="seed of the draws (default 0)")
    se.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="training seeds of every trial (default 0); with several, each "
                    "trial's spread over seeds says whether the winner leads by more than "
                    "seed noise")
    se.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)
    se.add_argument("--top", type=int, default=3, help="trials marked as chosen (default 3)")
    se.set_defaults(func=cmd_search)

    pr = sub.add_parser(
        "predict", help="predict new (unlabelled) features with a run's kept members",
        description="Load the members of RUN (or those --where / --strategy pick, as "
        "`ensemble score` would), run them on a MERTools feature folder or a store split, "
        "average like the ensemble, and write submission.csv, predictions.parquet, "
        "member_logits.parquet and summary.json to --out.")
    pr.add_argument("run", metavar="RUN", nargs="+", help="run folder(s) or URI(s)")
    pr.add_argument("--features", default=None, metavar="DIR",
                    help="MERTools feature folder: DIR/<feature-name>/<sample>.npy")
    pr.add_argument("--store", default=None, type=location,
                    help="a feature store to predict instead")
    pr.add_argument("--split", default=None, help="--store's split (default: its only test split)")
    pr.add_argument("--candidates", default=None, metavar="CSV",
                    help="sample names (column name) to predict, in the submission's order")
    pr.add_argument("--out", required=True, type=location, help="output folder (created)")
    pr.add_argument("--missing", default="error", choices=("error", "zero"),
                    help="a sample lacking a modality: refuse (default) or zero that modality")
    pr.add_argument("--strategy", choices=("mean", "prob", "weighted", "greedy"),
                    default="mean", help="as for `ensemble score` (default mean)")
    pr.add_argument("--where", default=None, metavar="EXPR",
                    help="keep only members matching EXPR, as for `ensemble score`")
    pr.add_argument("--device", default=None, help="cpu (default) or cuda")
    pr.add_argument("--prior-shift", choices=("none", "em"), default="none",
                    help="em: move the ensemble's probabilities to the samples' class prior "
                    "as estimated by EM (Saerens et al. 2002) before the argmax; default "
                    "none (the estimate is printed either way, from 50 samples on)")
    pr.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    pr.set_defaults(func=cmd_predict)

    st = sub.add_parser(
        "status", help="what a run holds, what is training and what resuming would train",
        description="Read a run folder (local or URI; no Ray needed): per config the members "
        "saved of those expected (run.json's configs and seeds), failed ones, best epochs "
        "and held-out scores; packs in flight (their progress files) with an ETA; packs "
        "that stopped; and, when nothing is training, exactly the members the same command "
        "would train to resume.")
    st.add_argument("run", metavar="RUN", help="run folder or URI")
    st.add_argument("--members", action="store_true", help="one line per saved member")
    st.add_argument("--json", action="store_true", help="the same as JSON")
    st.set_defaults(func=cmd_status)

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
    d.add_argument("--out", default="demo-run", type=location,
                   help="working folder (default demo-run)")
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
    except (InputError, StorageError, RunStopped) as e:
        print(f"mer-ray: error: {e}", file=sys.stderr)
        return e.exit_code
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
