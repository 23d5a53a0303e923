"""Feature store read vs per-sample .npy read of the same data, side by side.

    .venv/bin/python benchmarks/bench_store.py [--scale 1.0] [--repeats 5]

Generates synthetic MER2023 (5,030 x 6,912 floats at scale 1), writes it both as the
MERTools per-sample .npy tree and as a feature store, then times reading each into numpy
arrays from page cache (one warm-up read first). Prints the medians and the ratio.

The measurement itself lives in mer_ray.bench (compare_store_read), which `mer-ray bench`
also runs, so the two never drift apart; this script is the standalone entry point.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mer_ray.bench import compare_store_read
from mer_ray.data.synth_files import synthesize, synthesize_store


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "mertools", seed=0, scale=args.scale, progress=False)
        synthesize_store(tmp / "store", seed=0, scale=args.scale)
        r = compare_store_read(tmp / "mertools" / "features", tmp / "store", args.repeats)
    print(f"data: {r.samples} samples x {r.floats} floats ({r.mb:.0f} MB float32); "
          f"identical arrays: {r.identical}")
    print(f"{'reader':<24}{'median s':>10}{'MB/s':>10}")
    print(f"{'feature store (parquet)':<24}{r.store_s:>10.3f}{r.mb / r.store_s:>10.0f}")
    print(f"{'per-sample .npy files':<24}{r.npy_s:>10.3f}{r.mb / r.npy_s:>10.0f}")
    print(f"speed-up: {r.npy_s / r.store_s:.1f}x")


if __name__ == "__main__":
    main()
