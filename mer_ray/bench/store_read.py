"""Figure: the feature store read vs the MERTools way (one .npy file per sample and
modality), the same data from page cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mer_ray.bench.rows import Row, median_time, progress, ratio
from mer_ray.data.constants import MER2023_FEATURES, MODALITIES


@dataclass
class StoreRead:
    samples: int
    floats: int  # per sample, all modalities
    store_s: float  # median
    npy_s: float  # median
    identical: bool

    @property
    def mb(self) -> float:
        return self.samples * self.floats * 4 / 1e6


def read_npy_tree(root: Path, names) -> dict:
    """The MERTools way: one np.load per sample and modality ({modality: [N, D]})."""
    import numpy as np

    return {m: np.stack([np.load(root / MER2023_FEATURES[m][0] / f"{n}.npy") for n in names])
            for m in MODALITIES}


def compare_store_read(npy_root, store_path, repeats: int) -> StoreRead:
    """Median time to read the same data from the store and from the .npy tree (from page
    cache: each reader runs once untimed first)."""
    import numpy as np

    from mer_ray.data.store import read_store

    npy_root, store_path = Path(npy_root), Path(store_path)
    store = read_store(store_path)
    t_store = median_time(lambda: read_store(store_path), repeats)
    t_npy = median_time(lambda: read_npy_tree(npy_root, store.names), repeats)
    tree = read_npy_tree(npy_root, store.names)
    same = all(np.array_equal(tree[m], store.feature(m)) for m in MODALITIES)
    return StoreRead(len(store), sum(store.feature(m).shape[1] for m in MODALITIES),
                     t_store, t_npy, same)


def measure_store_read(bench) -> list[Row]:
    """feature store read vs per-sample .npy read"""
    from mer_ray.data.synth_files import synthesize

    p = bench.profile
    tree = bench.workdir / f"npy-{p.read_scale:g}"
    progress(f"writing the per-sample .npy tree (scale {p.read_scale:g})")
    synthesize(tree, seed=0, scale=p.read_scale, overwrite=True, progress=False)
    store_path = bench.store_path(p.read_scale)
    progress(f"timing both readers, median of {p.read_repeats}")
    r = compare_store_read(tree / "features", store_path, p.read_repeats)
    data = f"{r.samples} x {r.floats} float32 ({r.mb:.0f} MB), page cache"
    return [
        Row("store_read_s", "feature store read", r.store_s, "s",
            f"{data}; {r.mb / r.store_s:.0f} MB/s; median of {p.read_repeats}"),
        Row("npy_read_s", "per-sample .npy read", r.npy_s, "s",
            f"{r.samples * len(MODALITIES)} files; {r.mb / r.npy_s:.0f} MB/s; "
            f"identical arrays: {r.identical}"),
        Row("store_read_speedup", "store vs .npy speed-up", ratio(r.npy_s, r.store_s), "x"),
    ]
