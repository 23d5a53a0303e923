"""Feature store read vs per-sample .npy read of the same data, side by side.

    .venv/bin/python benchmarks/bench_store.py [--scale 1.0] [--repeats 5]

Generates synthetic MER2023 (5,030 x 6,912 floats at scale 1), writes it both as the
MERTools per-sample .npy tree and as a feature store, then times reading each into numpy
arrays from page cache (one warm-up read first). Prints the medians and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mer_ray.constants import DEFAULT_FEATURES, MODALITIES
from mer_ray.data.mertools import import_mertools
from mer_ray.data.store import read_store
from mer_ray.data.synth import synthesize


def read_npy_tree(root: Path, names) -> dict[str, np.ndarray]:
    return {m: np.stack([np.load(root / DEFAULT_FEATURES[m][0] / f"{n}.npy") for n in names])
            for m in MODALITIES}


def median_time(fn, repeats):
    fn()  # warm-up: page cache, imports
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "mertools", seed=0, scale=args.scale, progress=False)
        import_mertools(tmp / "mertools" / "features", tmp / "mertools" / "labels.csv",
                        tmp / "store", progress=False)
        store = read_store(tmp / "store")
        n, d = len(store), sum(x.shape[1] for x in store.features.values())
        t_store = median_time(lambda: read_store(tmp / "store"), args.repeats)
        t_npy = median_time(lambda: read_npy_tree(tmp / "mertools" / "features", store.names),
                            args.repeats)
        same = all(np.array_equal(read_npy_tree(tmp / "mertools" / "features", store.names)[m],
                                  store.features[m]) for m in MODALITIES)
    mb = n * d * 4 / 1e6
    print(f"data: {n} samples x {d} floats ({mb:.0f} MB float32); identical arrays: {same}")
    print(f"{'reader':<24}{'median s':>10}{'MB/s':>10}")
    print(f"{'feature store (parquet)':<24}{t_store:>10.3f}{mb / t_store:>10.0f}")
    print(f"{'per-sample .npy files':<24}{t_npy:>10.3f}{mb / t_npy:>10.0f}")
    print(f"speed-up: {t_npy / t_store:.1f}x")


if __name__ == "__main__":
    main()
