"""`mer-ray data synth | import | summary`: making and inspecting feature stores."""

from __future__ import annotations

from mer_ray.cli.options import location
from mer_ray.data.constants import MER2023_FEATURES


def add_data_parser(commands) -> None:
    data = commands.add_parser("data", help="create, import and inspect feature stores")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    add_synth_parser(data_commands)
    add_import_parser(data_commands)
    add_summary_parser(data_commands)


def add_synth_parser(data_commands) -> None:
    p = data_commands.add_parser(
        "synth", help="write a synthetic dataset tree (MERTools layout)",
        description="Write DIR/features/<feature-name>/<sample>.npy and the dataset's label "
        "files: mer2023 (labels.csv with MER2023's split sizes, class counts, feature names "
        "and dims), mer2024 (no valence, an unlabelled test set: track1_train_disdim.csv + "
        "track_all_candidates.csv), mer2025 (the same files, 20,000 candidates and a pool "
        "of 20,000 more unlabelled samples) or toy4 (4 classes, small dims). The true "
        "classes of whatever is handed out unlabelled go to DIR/truth.csv.")
    p.add_argument("--out", required=True, type=location, help="folder to create")
    p.add_argument("--dataset", default="mer2023",
                   choices=("mer2023", "mer2024", "mer2025", "toy4"),
                   help="which dataset's shape (default mer2023)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="fraction of the dataset's sample counts, for quick runs (default 1.0)")
    p.add_argument("--pool", type=int, default=None, metavar="N",
                   help="N unlabelled pool samples from the same task with train's class "
                   "prior (feature files only; import with --pool-split pool). Default: "
                   "mer2025's 20,000 x --scale, none for the others")
    p.add_argument("--test-prior", default=None, metavar="P1,P2,...",
                   help="the class prior of the unlabelled test split (one share per class, "
                   "summing to 1; its size stays): a prior shift between train and test")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)


def add_import_parser(data_commands) -> None:
    p = data_commands.add_parser(
        "import", help="import MERTools features + labels into a store",
        description="Read <DIR>/<feature-name>/<sample>.npy (a 2-D [T, D] array is averaged "
        "over T) and labels, validate everything, and write a feature store. Samples with "
        "features but no label are kept as an unlabelled split. Nothing is written unless "
        "all input is valid.")
    p.add_argument("--features", required=True, help="folder holding one folder per feature")
    p.add_argument("--labels", required=True,
                   help="labels: a CSV name,split,discrete[,valence]; a folder of <split>.csv "
                   "files name,discrete[,valence]; label-6way.npz / track1_label_6way.npz "
                   "(needs --trust-pickle); or train labels name,discrete with --candidates")
    p.add_argument("--out", required=True, type=location,
                   help="feature store folder or URI to create")
    for m in ("audio", "text", "video"):
        p.add_argument(f"--{m}", default=MER2023_FEATURES[m][0],
                       help=f"{m} feature folder name(s), comma-separated, or 'none' "
                       f"(default {MER2023_FEATURES[m][0]})")
    p.add_argument("--classes", default=None, metavar="A,B,C",
                   help="class names in order (default: MER's six when the labels use them, "
                   "else the sorted set found)")
    p.add_argument("--candidates", default=None, metavar="CSV",
                   help="the unlabelled test set's names (column name), e.g. MER2025's "
                   "track_all_candidates.csv; its order is the submission's")
    p.add_argument("--unlabelled-split", default="unlabelled", metavar="NAME",
                   help="split name for samples with features but no label (default "
                   "unlabelled)")
    p.add_argument("--pool-split", default=None, metavar="NAME",
                   help="keep the samples with features but no label that are not "
                   "candidates as this split, an unlabelled pool for `mer-ray selftrain` "
                   "(never predicted or scored); without --candidates, every unlabelled "
                   "sample goes there instead of the unlabelled split")
    p.add_argument("--unlabelled", action="append", default=[], metavar="SPLIT",
                   help="treat this labelled-looking split as unlabelled (placeholder labels)")
    p.add_argument("--drop-unlabelled", action="store_true",
                   help="leave out feature files that have no label (default: keep them)")
    p.add_argument("--dataset-name", default=None, help="a name for the dataset")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow reading label-6way.npz: its dicts are pickled, and unpickling "
                   "runs code stored in the file. Only for a file you trust.")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)


def add_summary_parser(data_commands) -> None:
    p = data_commands.add_parser("summary", help="print a store's split and class counts")
    p.add_argument("store")
    p.add_argument("--verify", action="store_true", help="re-hash the data against the manifest")
    p.set_defaults(func=cmd_summary)


def cmd_synth(args):
    from mer_ray.data.synth import planned_counts
    from mer_ray.data.synth_files import TRUTH_CSV, synthesize

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
    from mer_ray.data.manifest import read_manifest, summary_table
    from mer_ray.data.mertools import import_mertools

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
    from mer_ray.data.manifest import read_manifest, summary_table
    from mer_ray.data.store import read_store

    if args.verify:
        read_store(args.store, verify=True)
    print(summary_table(read_manifest(args.store)))


