"""`mer-ray predict`: new (unlabelled) features through a run's kept members."""

from __future__ import annotations

import time

from ensembles.cli import add_selection_args
from mer_ray.cli.options import device_of, location
from mer_ray.errors import InputError


def add_predict_parser(commands) -> None:
    p = commands.add_parser(
        "predict", help="predict new (unlabelled) features with a run's kept members",
        description="Load the members of RUN (or those --where / --strategy pick, as "
        "`ensemble score` would), run them on a MERTools feature folder or a store split, "
        "average like the ensemble, and write submission.csv, predictions.parquet, "
        "member_logits.parquet and summary.json to --out.")
    p.add_argument("run", metavar="RUN", nargs="+", help="run folder(s) or URI(s)")
    p.add_argument("--features", default=None, metavar="DIR",
                   help="MERTools feature folder: DIR/<feature-name>/<sample>.npy")
    p.add_argument("--store", default=None, type=location,
                   help="a feature store to predict instead")
    p.add_argument("--split", default=None, help="--store's split (default: its only test split)")
    p.add_argument("--candidates", default=None, metavar="CSV",
                   help="sample names (column name) to predict, in the submission's order")
    p.add_argument("--out", required=True, type=location, help="output folder (created)")
    p.add_argument("--missing", default="error", choices=("error", "zero"),
                   help="a sample lacking a modality: refuse (default) or zero that modality")
    add_selection_args(p, "as for `ensemble score`")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--prior-shift", choices=("none", "em"), default="none",
                   help="em: move the ensemble's probabilities to the samples' class prior "
                   "as estimated by EM (Saerens et al. 2002) before the argmax; default "
                   "none (the estimate is printed either way, from 50 samples on)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args):
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
    device = device_of(args.device or "cpu")
    t_load = time.perf_counter()
    predictor = Predictor.load(args.run, where=args.where, strategy=args.strategy,
                               device=device)
    loading = time.perf_counter() - t_load
    candidates = None
    if args.candidates:
        from mer_ray.data.labels import candidate_names

        candidates = candidate_names(args.candidates)
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
