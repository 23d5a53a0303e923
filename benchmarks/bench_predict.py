"""`mer-ray predict` of a demo-sized run (45 members) on 1,000 unlabelled samples.

    .venv/bin/python benchmarks/bench_predict.py [--samples 1000] [--keep DIR]

Builds the demo's run shape: synthetic MER2023 at scale 0.2, robust_v3 warmups 30/40/50
x 5 folds x seeds 0-2 = 45 members at hidden 128 with MER2023's dims. The members train
one epoch only: prediction costs the same whatever the weights hold, and a full demo run
takes minutes. Then writes a MERTools feature folder of `--samples` unlabelled samples
(three .npy files each) and runs `mer-ray predict RUN --features DIR --out OUT` in a fresh
process, as a user would: the wall time includes starting Python and importing torch.
Prints the wall time, the command's own split (reading, model, writing) and the weight
bytes per member and per run. Target (issue 12): under 15 s in all on the 2-core VM.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build_run(tmp: Path) -> Path:
    from mer_ray.data.store import read_store
    from mer_ray.data.synth_files import synthesize_store
    from mer_ray.train.presets import get_preset
    from mer_ray.runs.run import record_run, train_grid_here

    store = synthesize_store(tmp / "store", seed=0, scale=0.2)
    config = get_preset("robust_v3").replace(epochs=1)
    settings = [{"warmup": w} for w in (30, 40, 50)]
    run = tmp / "run"
    st = read_store(store)
    record_run(run, store, [config.replace(**s) for s in settings], st.manifest)
    train_grid_here(st, store, config, settings, [0, 1, 2], str(run), pack_size=15,
                    log=lambda *a: None)
    return run


def feature_folder(tmp: Path, n: int) -> Path:
    from mer_ray.data.synth import generate

    data = generate(seed=7, scale=min(1.0, n / 5030 * 1.05 + 0.01))
    folder = tmp / "new" / "features"
    for m, name in data.feature_names.items():
        (folder / name).mkdir(parents=True)
        for i in range(n):
            np.save(folder / name / f"unlabelled_{i:05d}.npy", data.features[m][i])
    return folder


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--keep", default=None, help="build in this folder and keep it")
    args = ap.parse_args()
    tmp_ctx = tempfile.TemporaryDirectory()
    tmp = Path(args.keep) if args.keep else Path(tmp_ctx.name)
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = build_run(tmp)
    folder = feature_folder(tmp, args.samples)
    print(f"set-up (45 members, one epoch each; {args.samples} x 3 .npy files): "
          f"{time.perf_counter() - t0:.0f} s")
    cmd = [sys.executable, "-m", "mer_ray.cli", "predict", str(run), "--features", str(folder),
           "--out", str(tmp / "pred"), "--quiet", "--overwrite"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)  # warm the page cache
    t1 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t1
    summary = json.loads((tmp / "pred" / "summary.json").read_text())
    line = next(x for x in out.splitlines() if x.startswith("predicted"))
    writing = float(re.search(r"writing ([\d.]+) s", line).group(1))
    weights = sorted((run / "members").glob("*.safetensors"))
    sizes = [os.path.getsize(w) for w in weights]
    print(f"{'figure':<52}{'value':>12}")
    print(f"{'predict wall time (fresh process, imports included)':<52}{wall:>10.1f} s")
    print(f"{'  reading the feature folder':<52}{summary['seconds']['reading']:>10.2f} s")
    print(f"{'  running the members (model)':<52}{summary['seconds']['model']:>10.2f} s")
    print(f"{'  writing the outputs':<52}{writing:>10.2f} s")
    print(f"{'  the rest (Python, imports, loading weights)':<52}"
          f"{wall - summary['seconds']['reading'] - summary['seconds']['model'] - writing:>10.2f} s")
    print(f"{'samples x members':<52}{summary['samples']:>6} x {summary['members']}")
    print(f"{'weight bytes per member (fp32, hidden 128)':<52}{np.mean(sizes) / 1e6:>10.2f} MB")
    print(f"{'weight bytes per run (45 members)':<52}{sum(sizes) / 1e6:>10.1f} MB")
    print(f"target: predict under 15 s in all: {'met' if wall < 15 else 'MISSED'}")
    tmp_ctx.cleanup()


if __name__ == "__main__":
    main()
