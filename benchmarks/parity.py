"""The pack against the reference loop over whole runs: per-seed, fold-averaged F1.

    .venv/bin/python benchmarks/parity.py SCALE EPOCHS OUT [--seeds 0 1 2] [--trace FOLD SEED]

On one synthetic MER2023 store (`synthesize_store(OUT/store, seed=0, scale=SCALE)`) the
`baseline` preset, its epochs set to EPOCHS, trains 5 folds x each seed three ways:

- pack: `mer_ray.train.trainer.train_pack`, every member in one pack;
- reference: `mer_ray.train.reference.train_member`, the plain-PyTorch loop (an
  `nn.Module`, `torch.optim.Adam`), one member at a time;
- reference_nudged: the control, the reference loop again with its weights multiplied
  once by 1 + 1e-7 N(0, 1) after epoch 0 (a difference the size of float32 rounding).

Per run and seed it prints F1 as mer-ray defines it: cv = weighted F1 of the 5 folds'
pooled held-out predictions; test1/2/3 = weighted F1 of the mean of the 5 fold models'
logits. Then the means over seeds, the seed-to-seed standard deviation (ddof 1), the
per-seed differences between runs (mean and largest |difference|, in F1 points), the
members whose best epoch agrees, and each run's seconds (one torch thread by default:
CPU time equals wall time on a shared machine).

`--trace FOLD SEED` also records that member's weights at the end of every one of the
first `--trace-epochs` epochs in all three runs and prints, per epoch, the largest
absolute weight difference between each pair (the pack's weights are read at the end of
the epoch's training steps, before its held-out evaluation, which leaves them as they
are; the nudged run's after the nudge).

Everything goes to OUT/parity.json as well; the store stays in OUT/store.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RUNS = ("pack", "reference", "reference_nudged")
SPLITS = ("cv", "test1", "test2", "test3")
PAIRS = (("pack", "reference"), ("reference_nudged", "reference"), ("pack", "reference_nudged"))


def nudge(epoch, model, optimizer):
    """The control's on_epoch: after epoch 0 only, every weight times 1 + 1e-7 N(0, 1)."""
    import torch

    if epoch == 0:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=g))


def f1_table(store, data, folds, logits, seeds, n_folds):
    """logits {(fold, seed): {split: [n, C]}} -> {seed: {cv, test1, test2, test3}}."""
    import numpy as np

    from mer_ray.train.metrics import score

    table = {}
    for seed in seeds:
        oof_rows = np.concatenate([data.train_rows[folds[f][1]] for f in range(n_folds)])
        oof = np.concatenate([logits[f, seed]["oof"] for f in range(n_folds)])
        row = {"cv": score(oof, store.emotion[oof_rows])["f1"]}
        for split in SPLITS[1:]:
            mean = np.mean([logits[f, seed][split] for f in range(n_folds)], axis=0)
            row[split] = score(mean, store.emotion[store.rows(split)])["f1"]
        table[seed] = row
    return table


def largest_difference(a: dict, b: dict) -> float:
    """The largest |a - b| over every weight of two members in the pack's layout."""
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def summary(f1: dict, best: dict, seeds) -> dict:
    """Means, seed spread, run-against-run differences and best-epoch agreement."""
    out = {"mean": {}, "sd": {}, "mean_difference_pt": {}, "per_seed_pt": {}, "same_best": {}}
    for run in RUNS:
        out["mean"][run] = {s: statistics.mean(f1[run][k][s] for k in seeds) for s in SPLITS}
        out["sd"][run] = {s: statistics.stdev(f1[run][k][s] for k in seeds)
                          if len(seeds) > 1 else float("nan") for s in SPLITS}
    for a, b in PAIRS:
        name = f"{a} - {b}"
        out["mean_difference_pt"][name] = {
            s: 100 * (out["mean"][a][s] - out["mean"][b][s]) for s in SPLITS}
        diffs = [(abs(f1[a][k][s] - f1[b][k][s]) * 100, s, k) for k in seeds for s in SPLITS]
        worst = max(diffs)
        out["per_seed_pt"][name] = {"mean_abs": statistics.mean(d for d, _, _ in diffs),
                                    "max_abs": worst[0], "max_at": f"{worst[1]} seed {worst[2]}"}
        out["same_best"][name] = [sum(x == y for x, y in zip(best[a], best[b])), len(best[a])]
    return out


def print_result(result: dict, watch) -> None:
    """The figures of parity.json as markdown rows and lines."""
    print(f"scale {result['scale']}, {result['epochs']} epochs, {len(result['members'])} "
          "members per run; seconds "
          + ", ".join(f"{run} {s:.0f}" for run, s in result["seconds"].items()))
    print("| run | seed | " + " | ".join(SPLITS) + " |")
    print("|---|---|" + "---|" * len(SPLITS))
    for run in RUNS:
        for seed in result['seeds']:
            print(f"| {run} | {seed} | "
                  + " | ".join(f"{result['f1'][run][seed][s]:.4f}" for s in SPLITS) + " |")
        print(f"| {run}, mean | | "
              + " | ".join(f"{result['mean'][run][s]:.4f}" for s in SPLITS) + " |")
    for run in RUNS:
        print(f"seed sd, {run}: "
              + ", ".join(f"{s} {result['sd'][run][s]:.3f}" for s in SPLITS))
    for a, b in PAIRS:
        name = f"{a} - {b}"
        diff, per_seed = result["mean_difference_pt"][name], result["per_seed_pt"][name]
        same, total = result["same_best"][name]
        print(f"{name}: means " + ", ".join(f"{s} {diff[s]:+.2f}" for s in SPLITS)
              + f" pt; per seed and split |difference| mean {per_seed['mean_abs']:.1f} pt, "
              f"largest {per_seed['max_abs']:.1f} pt ({per_seed['max_at']}); "
              f"same best epoch {same} of {total}")
    if watch:
        print(f"largest weight difference, member (fold {watch[0]}, seed {watch[1]}):")
        for pair, by_epoch in result["trace"]["largest_weight_difference"].items():
            print(f"  {pair}: " + ", ".join(f"{e}: {v:.1e}" for e, v in by_epoch.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scale", type=float, help="fraction of MER2023's sample counts (0.2: "
                    "train 674, test1 83, test2 82, test3 167)")
    ap.add_argument("epochs", type=int, help="epochs of the baseline recipe (MERTools: 100)")
    ap.add_argument("out", type=Path, help="folder for the store and parity.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="training seeds (default 0 1 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--trace", type=int, nargs=2, metavar=("FOLD", "SEED"),
                    help="trace this member's weights in all three runs")
    ap.add_argument("--trace-epochs", type=int, default=15,
                    help="epochs to trace from the start (default 15)")
    args = ap.parse_args()

    import torch

    import mer_ray.train.trainer as T  # importing mer_ray sets MKL's strict mode
    from mer_ray.data.store import read_store
    from mer_ray.data.synth_files import synthesize_store
    from mer_ray.model.pack import unstack
    from mer_ray.model.weights import from_state_dict
    from mer_ray.train.folds import make_folds
    from mer_ray.train.presets import get_preset
    from mer_ray.train.reference import train_member
    from mer_ray.train.train_data import TrainData

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = list(args.seeds)
    store = read_store(synthesize_store(args.out / "store", seed=0, scale=args.scale))
    config = get_preset("baseline").replace(epochs=args.epochs)
    n_folds = config.n_folds
    specs = [(fold, seed) for seed in seeds for fold in range(n_folds)]
    data = TrainData(store, config, "cpu")
    folds = make_folds(store.emotion[data.train_rows], n_folds, config.fold_seed)
    traced = {run: {} for run in RUNS}  # run -> epoch -> weights in the pack's layout
    watch = tuple(args.trace) if args.trace else None

    def in_trace(fold, seed, epoch):
        return watch == (fold, seed) and epoch < args.trace_epochs

    def pack_spy(real):
        def spy(data_, config_, epoch, live, params, *rest):
            for i, m in enumerate(live):
                if in_trace(m.fold, m.seed, epoch):
                    traced["pack"][epoch] = unstack(params, i)
            return real(data_, config_, epoch, live, params, *rest)
        return spy

    def reference_hook(run, fold, seed, then=None):
        def hook(epoch, model, optimizer):
            if then is not None:
                then(epoch, model, optimizer)
            if in_trace(fold, seed, epoch):
                weights = {n: p.detach().clone() for n, p in model.named_parameters()}
                traced[run][epoch] = from_state_dict(weights, data.shape)
        return hook

    logits, best, seconds = {}, {}, {}
    real_end = T._end_of_epoch
    if watch:
        T._end_of_epoch = pack_spy(real_end)
    try:
        t0 = time.perf_counter()
        pack = T.train_pack(store, config, specs, data=data)
        seconds["pack"] = time.perf_counter() - t0
    finally:
        T._end_of_epoch = real_end
    logits["pack"] = {(r.fold, r.seed): {s: p.logits for s, p in r.predictions.items()}
                      for r in pack}
    best["pack"] = [r.best_epoch for r in pack]
    for run, extra in (("reference", None), ("reference_nudged", nudge)):
        t0 = time.perf_counter()
        ref = [train_member(store, config, f, s, data=data,
                            on_epoch=reference_hook(run, f, s, extra)) for f, s in specs]
        seconds[run] = time.perf_counter() - t0
        logits[run] = {(r.fold, r.seed): {s: v[0] for s, v in r.predictions.items()}
                       for r in ref}
        best[run] = [r.best_epoch for r in ref]

    f1 = {run: f1_table(store, data, folds, logits[run], seeds, n_folds) for run in RUNS}
    result = {"scale": args.scale, "epochs": args.epochs, "seeds": seeds,
              "members": specs, "threads": args.threads, "seconds": seconds,
              "best_epochs": best, "f1": f1, **summary(f1, best, seeds)}
    if watch:
        epochs = sorted(set.intersection(*(set(traced[run]) for run in RUNS)))
        result["trace"] = {"member": list(watch), "largest_weight_difference": {
            f"{a} vs {b}": {e: largest_difference(traced[a][e], traced[b][e]) for e in epochs}
            for a, b in PAIRS}}
    (args.out / "parity.json").write_text(json.dumps(result, indent=1) + "\n")

    print_result(result, watch)
    print(f"written: {args.out / 'parity.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
