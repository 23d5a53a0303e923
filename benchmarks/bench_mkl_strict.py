"""What MKL's strict mode (mer_ray.cpu_exact) costs: the same training with and without
it, side by side in one run, on MKL's own path for this CPU and, where a C compiler is
at hand, on MKL's Intel path (tests/cpu_paths.py's shim; on an Intel CPU the same path).

    .venv/bin/python benchmarks/bench_mkl_strict.py [--epochs 3] [--repeats 2]

Figures, each in a fresh process (MKL reads its mode once, at its first call), the
modes alternated so that drift in the machine's speed falls on both:
- a 25-member pack at full scale: seconds per member-epoch (steady epoch / 25);
- one member alone at full scale: seconds per epoch;
- the demo's grid pack: 15 members (5 folds x 3 seeds) at the demo's scale 0.2,
  seconds per member-epoch.
Modes: default (MER_RAY_MKL_STRICT=0: MKL as it comes), strict (what mer_ray sets:
MKL_CBWR=AUTO,STRICT) and MKL_CBWR=AVX2,STRICT (MKL's AVX2 code on every CPU, the
setting first found to make the pack test pass on an Intel CPU).
Members are robust_v3 with early stopping off and modality dropout from epoch 1 (as in
`mer-ray bench`). Ratios are against default; above 1 is the cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

FIGURES = {  # name: (label, scale, members)
    "pack25": ("25-member pack, s per member-epoch", 1.0, 25),
    "alone": ("one member alone, s per epoch", 1.0, 1),
    "demo15": ("demo grid pack (15 members, scale 0.2), s per member-epoch", 0.2, 15),
}


def child(stores: dict, epochs: int) -> dict:
    """Runs in a fresh process: time each figure's train_pack, print JSON."""
    import mer_ray  # noqa: F401  (sets MKL's mode before torch loads, unless opted out)
    from mer_ray.bench.runs import fold_specs, timed_train
    from mer_ray.data.store import read_store
    from mer_ray.train.presets import get_preset

    cfg = get_preset("robust_v3").replace(epochs=epochs, early_stop_patience=None, warmup=1)
    loaded = {scale: read_store(path) for scale, path in stores.items()}
    timed_train(loaded["1.0"], cfg.replace(epochs=1), [(0, 0)], "cpu")  # warm-up
    out = {}
    for name, (_, scale, k) in FIGURES.items():
        run = timed_train(loaded[str(scale)], cfg, fold_specs(k), "cpu")
        out[name] = run.steady_epoch_s / k
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="epochs per timed run (default 3)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode (default 2)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.epochs)))
        return 0

    from cpu_paths import describe_cpu, intel_mkl_shim, mkl_banner
    from mer_ray.data.synth_files import synthesize_store

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stores = {}
        for scale in sorted({s for _, s, _ in FIGURES.values()}):
            print(f"writing synthetic store, scale {scale}", file=sys.stderr)
            stores[str(scale)] = str(synthesize_store(tmp / f"s{scale}", seed=0, scale=scale))
        base = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "LD_PRELOAD")}
        paths = {"this CPU's MKL path": {}}
        shim = intel_mkl_shim(tmp)
        if shim is not None:
            paths["MKL's Intel path"] = {"LD_PRELOAD": str(shim)}
        # the third: the setting the issue found to pass on Intel (MKL's AVX2 branch)
        modes = {"default": {"MER_RAY_MKL_STRICT": "0"}, "strict": {},
                 "AVX2,STRICT": {"MKL_CBWR": "AVX2"}}
        results = {(p, m): [] for p in paths for m in modes}
        for r in range(args.repeats):
            for p, penv in paths.items():
                order = list(modes.items())
                for m, menv in (order if r % 2 == 0 else order[::-1]):
                    print(f"repeat {r + 1}/{args.repeats}: {p}, {m}", file=sys.stderr)
                    out = subprocess.run(
                        [sys.executable, __file__, "--epochs", str(args.epochs),
                         "--child", json.dumps(stores)],
                        env={**base, **penv, **menv}, capture_output=True, text=True)
                    if out.returncode != 0:
                        print(out.stderr, file=sys.stderr)
                        return 1
                    results[(p, m)].append(json.loads(out.stdout.splitlines()[-1]))
        print(describe_cpu())
        for p, penv in paths.items():
            print(f"\n{p}: MKL runs {mkl_banner({**base, **penv}) or '?'}")
            print(f"| figure ({args.epochs} epochs, median of {args.repeats}) | "
                  + " | ".join(modes) + " | strict / default | AVX2,STRICT / default |")
            print("|---" * (len(modes) + 3) + "|")
            for name, (label, _, _) in FIGURES.items():
                t = {m: statistics.median(x[name] for x in results[(p, m)]) for m in modes}
                print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in t.values())
                      + f" | {t['strict'] / t['default']:.3f}"
                      f" | {t['AVX2,STRICT'] / t['default']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
