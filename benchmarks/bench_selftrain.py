"""Self-training measured side by side on a MER2025/2026-shaped synthetic set, scored
against the truth file a user never has.

    .venv/bin/python benchmarks/bench_selftrain.py [--scale 1.0] [--pool 20000]
        [--rounds 3] [--seeds 0] [--epochs 100] [--label-pool 100000] [--workdir DIR]

The set: `data synth --dataset mer2025` (5,030 labelled train samples, 20,000
candidates handed out unlabelled with a shifted class prior, a pool of 20,000 more), as
a store with its truth file beside it. Then, in this process, one seed's 5 folds:

1. `selftrain` with fold-matched teachers: round 0 and rounds 1..R, every round trained
   whether or not its out-of-fold score improved (to see all of them). Per round:
   out-of-fold F1 (real labels; what the tool chooses by), candidate F1 of the round's
   fold-averaged model against the truth (held out, never seen by the tool), pseudo-
   labels per class and their accuracy against the truth, seconds.
2. The same with whole-ensemble teachers (`--teachers all`): does the out-of-fold gain
   still track the candidates' gain when the teachers saw the held-out rows?
3. The candidates' class prior: the EM estimate from round 0's probabilities against
   the true prior (L1), and candidate F1 with and without `--prior-shift em`.
4. Round 1 with the pool's true labels as pseudo-labels (an oracle): the most this pool
   could give, i.e. whether labels are scarce enough here for a pool to matter.
5. Labelling at scale: a pool of --label-pool samples labelled by 45 members (9 seeds x
   5 folds, 1 epoch each: what is timed is the labelling) in chunks, in a fresh process:
   seconds, and peak memory over the store already loaded.

Prints a table per part (markdown), and writes them as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# the candidates' prior: fewer neutral and angry, more sad and worried than train's
SHIFTED_PRIOR = (0.14, 0.12, 0.2, 0.26, 0.22, 0.06)


def vm_hwm_mb() -> float:
    """Peak resident memory of this process so far (Linux VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def f1(truth_idx, pred_idx) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth_idx, pred_idx, average="weighted"))


def candidate_logits(members, split="test1"):
    """The fold-averaged (and seed-averaged) logits on the candidates, in store order."""
    from ensembles.groups import make_groups
    from ensembles.strategies import combine

    e = combine(make_groups(members), "mean")
    return e.predictions[split].names, e.predictions[split].logits


def round_rows(run, truth, seeds, rounds, classes):
    """Per round: cv F1, candidate F1 (truth), pseudo-label counts and accuracy."""
    import pyarrow.parquet as pq

    from ensembles.groups import trial_summary
    from mer_ray.runs.pseudo_labels import labels_file
    from mer_ray.runs.run import read_config_members

    rows = []
    for r, (c, seconds) in enumerate(rounds):
        members = read_config_members(run, c, seeds)
        summary = trial_summary(members)
        names, logits = candidate_logits(members)
        cand = f1([classes.index(truth[n]) for n in names], logits.argmax(1))
        row = {"round": r, "members": len(members), "cv_f1": summary["cv_f1"],
               "candidate_f1": cand, "seconds": seconds}
        if r >= 1:
            table = pq.read_table(labels_file(run, c))
            if not len(table):
                row.update(pseudo_per_fold=0, pseudo_per_class=[0] * len(classes),
                           pseudo_accuracy=float("nan"))
                rows.append(row)
                continue
            got = np.asarray(table["class"].to_pylist())
            want = np.array([classes.index(truth[n]) for n in table["name"].to_pylist()])
            fold = np.asarray(table["teacher_fold"].to_pylist())
            row["pseudo_per_fold"] = round(len(got) / len(np.unique(fold)), 1) if len(got) \
                else 0
            row["pseudo_per_class"] = np.bincount(got, minlength=len(classes)).tolist()
            row["pseudo_accuracy"] = float((got == want).mean()) if len(got) else float("nan")
            row["pseudo_accuracy_per_class"] = [
                float((got[got == k] == want[got == k]).mean()) if (got == k).any() else None
                for k in range(len(classes))]
        rows.append(row)
    return rows


def run_chain(store_path, store, run, base, seeds, rounds, selection, truth, classes, log):
    """Rounds 0..R of one selection, each trained even if its cv did not improve."""
    from mer_ray.selftrain.pseudo import ensure_labels
    from mer_ray.runs.run import record_run, train_grid_here
    from mer_ray.selftrain.rounds import round_config

    done = []
    for r in range(rounds + 1):
        c = round_config(base, r, selection)
        t0 = time.perf_counter()
        if r >= 1:
            ensure_labels(run, store, c, seeds, log=log)
        record_run(run, store_path, [c], store.manifest, seeds=seeds)
        train_grid_here(store, store_path, c, [{}], seeds, run, pack_size=5, log=log,
                        log_every=25, tensorboard=False)
        done.append((c, round(time.perf_counter() - t0, 1)))
        log(f"round {r} took {done[-1][1]} s")
    return round_rows(run, truth, seeds, done, classes)


def oracle_round(store_path, store, run, base, seeds, truth, classes, log):
    """Round 1 with the pool's true labels as its pseudo-labels: the most any selection
    of this pool could give (whether labels are scarce enough for a pool to matter)."""
    from mer_ray.runs.pseudo_labels import ALL_FOLDS, RoundLabels, write_labels
    from mer_ray.runs.run import record_run, train_grid_here
    from mer_ray.selftrain.rounds import round_config

    c = round_config(base, 1, dict(pseudo_threshold=1.0, pseudo_teachers="all",
                                   pseudo_cap=None))
    rows = store.rows("pool")
    y = np.array([classes.index(truth[n]) for n in store.names[rows]], np.int16)
    onehot = np.eye(len(classes), dtype=np.float32)[y]
    labels = RoundLabels(store.names[rows], store.split[rows],
                         np.full(len(rows), ALL_FOLDS, np.int16), y, onehot,
                         np.ones(len(rows), np.float32), np.ones(len(rows), np.float32))
    labels.meta = {"format": "mer-ray-pseudo-labels/1", "round": 1, "config": c.to_dict(),
                   "store_content_hash": store.content_hash, "splits": ["pool"],
                   "teachers": {str(ALL_FOLDS): []}, "note": "the truth (oracle)"}
    write_labels(run, c, labels, len(classes))
    t0 = time.perf_counter()
    record_run(run, store_path, [c], store.manifest, seeds=seeds)
    train_grid_here(store, store_path, c, [{}], seeds, run, pack_size=5, log=log,
                    log_every=25, tensorboard=False)
    return round_rows(run, truth, seeds, [(c, round(time.perf_counter() - t0, 1))],
                      classes)[0]


def prior_part(run, base, seeds, truth, classes):
    from ensembles.prior import class_prior, estimate_prior
    from ensembles.strategies import softmax
    from mer_ray.runs.run import read_config_members

    members = read_config_members(run, base, seeds)
    names, logits = candidate_logits(members)
    y = np.array([classes.index(truth[n]) for n in names])
    true_prior = np.bincount(y, minlength=len(classes)) / len(y)
    train = class_prior(np.concatenate([m.predictions["oof"].label for m in members
                                        if m.seed == seeds[0]]), len(classes))
    shift = estimate_prior(softmax(logits), train)
    return {"true_prior": true_prior.round(4).tolist(), "train_prior": train.round(4).tolist(),
            "estimate": shift.estimate.round(4).tolist(),
            "l1_train_to_true": float(np.abs(train - true_prior).sum()),
            "l1_estimate_to_true": float(np.abs(shift.estimate - true_prior).sum()),
            "candidate_f1": f1(y, logits.argmax(1)),
            "candidate_f1_prior_shift_em": f1(y, shift.probabilities.argmax(1))}


def label_at_scale(args) -> dict:
    """Part 4 in a fresh process (its peak memory is its own)."""
    out = subprocess.run([sys.executable, __file__, "--label-child", str(args.label_pool),
                          "--workdir", str(args.workdir)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.splitlines()[-1])


def label_child(n_pool: int, workdir: Path) -> dict:
    from mer_ray.data.store import read_store
    from mer_ray.data.synth_files import synthesize_store
    from mer_ray.train.presets import get_preset
    from mer_ray.selftrain.pseudo import teacher_votes
    from mer_ray.runs.run import read_config_members, train_grid_here

    store_path = workdir / "big-store"
    if not (store_path / "manifest.json").exists():
        synthesize_store(store_path, scale=0.2, dataset="mer2025", pool=n_pool)
    store = read_store(store_path)
    run = workdir / "big-run"
    seeds = list(range(9))
    config = get_preset("robust_v3").replace(epochs=1, warmup=0, early_stop_patience=None)
    train_grid_here(store, str(store_path), config, [{}], seeds, str(run), pack_size=25,
                    log=lambda *a: None, tensorboard=False)
    members = read_config_members(str(run), config, seeds)
    by_fold = {}
    for m in members:
        by_fold.setdefault(m.fold, []).append(m)
    rows = store.rows("pool")
    # reset this process's peak RSS (Linux: 5 > clear_refs), so the peak below is the
    # labelling's, not the training's before it
    Path("/proc/self/clear_refs").write_text("5")
    rss0, t0 = vm_rss_mb(), time.perf_counter()
    votes = teacher_votes(store, by_fold, rows)
    seconds = time.perf_counter() - t0
    return {"pool": len(rows), "members": len(members), "seconds": round(seconds, 1),
            "rss_before_mb": round(rss0), "peak_mb": round(vm_hwm_mb()),
            "store_mb": round(sum(x.nbytes for f in store.features.values()
                                  for x in f.values()) / 2**20),
            "folds": len(votes)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--pool", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--label-pool", type=int, default=100000)
    ap.add_argument("--skip", nargs="*", default=[], choices=("all", "scale"),
                    help="leave out the whole-ensemble teachers or the labelling at scale")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--label-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.label_child:
        print(json.dumps(label_child(args.label_child, args.workdir)))
        return 0

    import mer_ray  # noqa: F401  (MKL's mode, before torch)
    from mer_ray.data.store import read_store
    from mer_ray.data.synth_files import read_truth, synthesize_store
    from mer_ray.train.presets import get_preset

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-selftrain-"))
    args.workdir = work
    store_path, truth_path = work / "store", work / "truth.csv"
    if not (store_path / "manifest.json").exists():
        log("writing the synthetic MER2025-shaped store")
        synthesize_store(store_path, scale=args.scale, dataset="mer2025", pool=args.pool,
                         test_prior=list(SHIFTED_PRIOR), truth=truth_path)
    store = read_store(store_path, verify=True)
    truth, classes = read_truth(truth_path), store.classes
    base = get_preset("robust_v3").replace(epochs=args.epochs,
                                           warmup=min(30, args.epochs * 3 // 10))
    selection = dict(pseudo_threshold=args.threshold)
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                    time.gmtime())}
    log("fold-matched teachers")
    result["fold"] = run_chain(str(store_path), store, str(work / "run"), base, args.seeds,
                               args.rounds, selection, truth, classes, log)
    if "all" not in args.skip:
        log("whole-ensemble teachers (round 0 shared)")
        result["all"] = run_chain(str(store_path), store, str(work / "run"), base, args.seeds,
                                  args.rounds, {**selection, "pseudo_teachers": "all"},
                                  truth, classes, log)
    log("round 1 with the pool's true labels (oracle)")
    result["oracle"] = oracle_round(str(store_path), store, str(work / "run"), base,
                                    args.seeds, truth, classes, log)
    result["prior"] = prior_part(str(work / "run"), base, args.seeds, truth, classes)
    if "scale" not in args.skip:
        log(f"labelling a pool of {args.label_pool} with 45 members")
        result["scale"] = label_at_scale(args)
    print_tables(result, classes)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def print_tables(result, classes):
    for key, title in (("fold", "fold-matched teachers"), ("all", "whole-ensemble teachers")):
        if key not in result:
            continue
        print(f"\n{title}\n")
        print("| round | cv F1 | candidate F1 (truth) | pseudo-labels per fold | accuracy "
              "| per class (all folds) | seconds |")
        print("|---|---|---|---|---|---|---|")
        for r in result[key]:
            pseudo = ("-", "-", "-") if r["round"] == 0 else (
                r["pseudo_per_fold"], f"{r['pseudo_accuracy']:.3f}", r["pseudo_per_class"])
            print(f"| {r['round']} | {r['cv_f1']:.4f} | {r['candidate_f1']:.4f} | "
                  f"{pseudo[0]} | {pseudo[1]} | {pseudo[2]} | {r['seconds']} |")
    o = result["oracle"]
    print(f"\nround 1 with the pool's true labels (oracle): cv F1 {o['cv_f1']:.4f}, "
          f"candidate F1 {o['candidate_f1']:.4f}, {o['seconds']} s")
    p = result["prior"]
    print("\nclass prior of the candidates (" + ", ".join(classes) + ")\n")
    print(f"true {p['true_prior']}\ntrain {p['train_prior']}\nEM estimate {p['estimate']}")
    print(f"L1 train -> true {p['l1_train_to_true']:.3f}; estimate -> true "
          f"{p['l1_estimate_to_true']:.3f}; candidate F1 {p['candidate_f1']:.4f} without, "
          f"{p['candidate_f1_prior_shift_em']:.4f} with --prior-shift em")
    if "scale" in result:
        s = result["scale"]
        print(f"\nlabelling {s['pool']} pool samples with {s['members']} members: "
              f"{s['seconds']} s; RSS {s['rss_before_mb']} MB with the store loaded "
              f"(features {s['store_mb']} MB), peak {s['peak_mb']} MB")


if __name__ == "__main__":
    raise SystemExit(main())
