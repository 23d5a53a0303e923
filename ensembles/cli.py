"""The `ensemble` and `report` commands of `mer-ray`.

`add_ensemble_parser(subparsers)` and `add_report_parser(subparsers)` add them to the
`mer-ray` argparse subparsers object; each handler is `func(args)` (set with
set_defaults), like those of mer_ray/cli/. Only argparse
and the strategies' registry are imported here, and the work is imported inside the
handlers, so building the parser (and `mer-ray --help`) stays fast and loads neither
torch nor Ray. Bad input raises mer_ray.errors.InputError, which `mer-ray` prints as one
line with exit 2.
"""

from __future__ import annotations

from ensembles.strategies import STRATEGIES


def cmd_score(args):
    from ensembles.score import score_runs

    text, out = score_runs(args.runs, strategy=args.strategy, where=args.where, out=args.out,
                           prior_shift=args.prior_shift, prior_splits=args.prior_split)
    print(text)
    print(f"\nwrote scores.json, predictions.parquet and a submission_<split>.csv per test "
          f"split to {out}")


def cmd_report(args):
    from ensembles.report import build_report

    text, out = build_report(args.run, out=args.out, store=args.store,
                             strategy=args.strategy, where=args.where,
                             prior_shift=args.prior_shift, prior_splits=args.prior_split)
    print(text)
    print(f"\nwrote report.html and its figures to {out}")


def add_selection_args(p, what: str = "how groups are combined") -> None:
    """--strategy (from the registry) and --where: which members, mixed how."""
    p.add_argument("--strategy", choices=tuple(STRATEGIES), default="mean",
                   help=f"{what}: " + ", ".join(f"{name} ({text})" for name, text
                                                in STRATEGIES.items()) + "; default mean")
    p.add_argument("--where", default=None, metavar="EXPR",
                   help="keep only members matching EXPR over config fields, seed and fold, "
                   "e.g. \"warmup in (30,40) and seed != 2\"")


def _common(p):
    add_selection_args(p)
    p.add_argument("--prior-shift", choices=("none", "em"), default="none",
                   help="em: move the ensemble's test predictions to each split's class "
                   "prior as estimated by EM from its probabilities (Saerens et al. 2002) "
                   "before the argmax; default none (the estimate is printed either way "
                   "for unlabelled splits)")
    p.add_argument("--prior-split", action="append", default=None, metavar="SPLIT",
                   help="estimate (and with --prior-shift em, apply) the prior of this "
                   "test split only (repeatable; default: unlabelled splits, or every test "
                   "split with --prior-shift em)")


def add_ensemble_parser(subparsers) -> None:
    """`mer-ray ensemble score`."""
    e = subparsers.add_parser("ensemble", help="combine and score trained members",
                              description="Combine the members of one or more runs.")
    esub = e.add_subparsers(dest="ensemble_command", required=True)
    s = esub.add_parser(
        "score", help="score an ensemble; write scores, predictions, submission CSVs",
        description="Fold-average each (config, seed) group (MERTools protocol), combine the "
        "groups, and print cv and each labelled test split's F1, acc (and MSE and combined "
        "where there is valence) for the ensemble, the best single group and each warmup; "
        "unlabelled splits get predictions only. Writes scores.json, predictions.parquet and "
        "submission_<split>.csv (name,discrete[,valence]) per test split to --out.")
    s.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) or URI(s)")
    _common(s)
    s.add_argument("--out", default=None,
                   help="output folder (default RUN/ensemble; required with several runs)")
    s.set_defaults(func=cmd_score)


def add_report_parser(subparsers) -> None:
    """`mer-ray report`."""
    r = subparsers.add_parser(
        "report", help="figures and an HTML report of a run",
        description="Confusion matrices, per-class F1, F1 against warmup, ensemble size "
        "curve and robustness (masked modalities, feature shift) as PNGs and one "
        "self-contained report.html. Needs matplotlib (pip install 'mer-ray[report]').")
    r.add_argument("run", metavar="RUN", help="run folder or URI")
    r.add_argument("--out", default=None, help="output folder (default RUN/report)")
    r.add_argument("--store", default=None,
                   help="feature store for the feature-shift table (default: RUN/run.json's)")
    _common(r)
    r.set_defaults(func=cmd_report)

