"""The recipe comparison of docs/recipes.md: robust_v3 vs its contrastive variant vs a
per-modality robustness setting vs the best searched recipe, 3 seeds each, then the
ensemble of all of them. Selection (of the per-modality setting and of the searched
recipe) uses out-of-fold scores and train-vs-test feature shift only, never a test label.

    .venv/bin/python benchmarks/recipes.py --out recipes-bench [--scale 1.0] \\
        [--trials 8] [--seeds 0 1 2] [--epochs 100]

Everything goes through the CLI in this process (`--no-ray`, so the figures do not mix in
Ray's start-up), one run folder per variant under --out; it resumes if run again. Prints a
markdown table: per variant, mean and sd over seeds of each seed's fold-averaged F1 on
cv/test1/test2/test3, and the ensembles (uniform mean and greedy) of every variant's members.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mer_ray.cli.main import main as cli

CONTRASTIVE = {"contrastive_weight": 0.1}


def run(*args) -> None:
    rc = cli([str(a) for a in args])
    if rc != 0:
        raise SystemExit(f"mer-ray {' '.join(map(str, args))} failed with {rc}")


def settings_flags(setting: dict) -> list[str]:
    return [x for k, v in setting.items() for x in ("--set", f"{k}={v}")]


def per_seed(run_dir: Path) -> dict:
    """{split: [each seed's fold-averaged F1]} over the run's groups."""
    from ensembles.groups import make_groups, score_group
    from ensembles.load import load_members

    out: dict[str, list[float]] = {}
    for g in make_groups(load_members([str(run_dir)])):
        for split, metrics in score_group(g).items():
            out.setdefault(split, []).append(metrics["f1"])
    return out


def ensemble_scores(runs, strategy) -> dict:
    from ensembles.load import load_members
    from ensembles.score import evaluate

    return evaluate(load_members([str(r) for r in runs]), strategy).scores


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--pack-size", type=int, default=15)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store = out / "store"
    if not store.exists():
        from mer_ray.data.synth_files import synthesize_store

        synthesize_store(store, seed=0, scale=args.scale)
    common = ["--store", store, "--no-ray", "--pack-size", args.pack_size,
              "--set", f"epochs={args.epochs}"]
    seeds = ["--seeds", *args.seeds]

    # 1. per-modality setting suggested from the feature shift alone (no test label)
    from ensembles import robustness
    from mer_ray.data.store import read_store

    shift = robustness.feature_shift(read_store(store))
    modal, why = robustness.suggest_recipe(shift)
    # 2. the search: one seed's folds per trial, ranked on out-of-fold only
    run("search", *common, "--out", out / "search", "--trials", args.trials,
        "--seed", args.seeds[0])
    from ensembles.groups import trial_summary
    from mer_ray.train.presets import get_preset
    from mer_ray.runs.run import read_config_members
    from mer_ray.search import best_trials, draw_settings

    draws = draw_settings(args.trials, 0, modalities=read_store(store).modalities)
    base = get_preset("robust_v3").replace(epochs=args.epochs)
    rows = [(s, trial_summary(read_config_members(out / "search", base.replace(**s),
                                                  [args.seeds[0]]))) for s in draws]
    searched = rows[best_trials(rows)[0]][0]

    variants = {"robust_v3": {}, "contrastive": CONTRASTIVE, "per-modality": modal,
                "searched": searched}
    for name, setting in variants.items():
        run("train", *common, *seeds, "--out", out / name, *settings_flags(setting))
    table = {name: per_seed(out / name) for name in variants}
    ens = {s: ensemble_scores([out / n for n in variants], s) for s in ("mean", "greedy")}
    splits = ["cv", "test1", "test2", "test3"]
    lines = ["| recipe | setting | " + " | ".join(f"{s} F1" for s in splits) + " |",
             "|---|---|" + "---|" * len(splits)]
    for name, setting in variants.items():
        cells = [f"{np.mean(table[name][s]):.4f} ± {np.std(table[name][s]):.4f}" for s in splits]
        label = ", ".join(f"{k}={v}" for k, v in setting.items()) or "(preset)"
        lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    for s, scores in ens.items():
        lines.append(f"| ensemble of all ({s}) | {len(variants)} recipes x {len(args.seeds)} "
                     "seeds | " + " | ".join(f"{scores[x]['f1']:.4f}" for x in splits) + " |")
    best = max(variants, key=lambda n: np.mean(table[n]["cv"]))
    report = {"variants": variants, "per_seed_f1": table,
              "ensembles": {s: {k: v["f1"] for k, v in e.items()} for s, e in ens.items()},
              "best_on_cv": best, "per_modality_why": why, "seconds": time.perf_counter() - t0,
              "scale": args.scale, "epochs": args.epochs, "seeds": args.seeds}
    (out / "recipes.json").write_text(json.dumps(report, indent=1))
    print("\n".join(lines))
    print(f"\nbest on cv (mean over seeds): {best}; per-modality setting: {why}")
    print(f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
