"""The feature store: one Parquet file of samples plus a JSON manifest.

Layout of a store folder::

    STORE/samples.parquet   name, split, emotion, valence, audio, text, video
    STORE/manifest.json     format, classes, modalities (feature name, dim), source,
                            counts, content_hash

Each modality is a fixed-size float32 list column, written uncompressed and without
dictionary encoding so that reading is a memcpy: the whole MER2023-sized store
(5,030 x 6,912 floats) loads into numpy in a fraction of a second (see
benchmarks/bench_store.py). Training reads only the store.

Writes are atomic: the store is built in a temporary sibling folder and renamed into
place, so a failed write never leaves a partial store behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mer_ray.constants import CLASSES, MODALITIES, SPLITS
from mer_ray.errors import InputError

FORMAT = "mer-ray-store/1"
SAMPLES_FILE = "samples.parquet"
MANIFEST_FILE = "manifest.json"


@dataclass
class Store:
    """A whole feature store in memory. Row i of every array is sample names[i]."""

    names: np.ndarray  # [N] str
    split: np.ndarray  # [N] str, one of SPLITS
    emotion: np.ndarray  # [N] int64 index into manifest["classes"]
    valence: np.ndarray  # [N] float32, NaN where unknown (test3)
    features: dict[str, np.ndarray]  # modality -> [N, D] float32
    manifest: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def rows(self, split: str) -> np.ndarray:
        """Row indices of one split, in store order."""
        return np.flatnonzero(self.split == split)

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]


def content_hash(names, split, emotion, valence, features: dict[str, np.ndarray]) -> str:
    """A hash of the data itself (not of the Parquet bytes), so it survives re-encoding."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, names)).encode())
    h.update("\n".join(map(str, split)).encode())
    h.update(np.ascontiguousarray(emotion, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(valence, dtype=np.float32).tobytes())
    for m in sorted(features):
        h.update(m.encode())
        h.update(np.ascontiguousarray(features[m], dtype=np.float32).tobytes())
    return h.hexdigest()


def write_store(
    out: str | os.PathLike,
    names,
    split,
    emotion,
    valence,
    features: dict[str, np.ndarray],
    feature_names: dict[str, str],
    source: str,
    overwrite: bool = False,
) -> Path:
    """Validate and write a store atomically; returns its path."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; choose another --out or pass --overwrite")
    names = np.asarray(names, dtype=str)
    split = np.asarray(split, dtype=str)
    emotion = np.asarray(emotion, dtype=np.int64)
    valence = np.asarray(valence, dtype=np.float32)
    n = len(names)
    for what, arr in (("split", split), ("emotion", emotion), ("valence", valence)):
        if len(arr) != n:
            raise ValueError(f"{what} has {len(arr)} rows, names has {n}")
    if set(features) != set(MODALITIES):
        raise ValueError(f"features must hold {MODALITIES}, got {sorted(features)}")
    bad = set(np.unique(split)) - set(SPLITS)
    if bad:
        raise ValueError(f"unknown split(s) {sorted(bad)}; expected {SPLITS}")

    columns = {
        "name": pa.array(names, pa.string()),
        "split": pa.array(split, pa.string()),
        "emotion": pa.array(emotion, pa.int8()),
        "valence": pa.array(valence, pa.float32(), mask=np.isnan(valence)),
    }
    modalities = {}
    for m in MODALITIES:
        x = np.ascontiguousarray(features[m], dtype=np.float32)
        if x.ndim != 2 or len(x) != n:
            raise ValueError(f"{m} features must be [N={n}, D], got {x.shape}")
        columns[m] = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
        modalities[m] = {"feature": feature_names[m], "dim": int(x.shape[1])}

    manifest = {
        "format": FORMAT,
        "classes": list(CLASSES),
        "modalities": modalities,
        "source": source,
        "counts": {
            s: [int(c) for c in np.bincount(emotion[split == s], minlength=len(CLASSES))]
            for s in SPLITS
            if (split == s).any()
        },
        "content_hash": content_hash(names, split, emotion, valence, features),
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        pq.write_table(
            pa.table(columns),
            tmp / SAMPLES_FILE,
            compression="none",
            use_dictionary=["name", "split"],
            row_group_size=max(n, 1),
        )
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _matrix(col: pa.ChunkedArray, dim: int) -> np.ndarray:
    flat = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, dim)


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    mf = path / MANIFEST_FILE
    if not (path / SAMPLES_FILE).is_file() or not mf.is_file():
        raise InputError(
            f"{path} is not a feature store (expected {SAMPLES_FILE} and {MANIFEST_FILE}); "
            "create one with `mer-ray data import` or `mer-ray data synth`"
        )
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{mf} is not valid JSON ({e}); re-create the store") from None
    if manifest.get("format") != FORMAT:
        raise InputError(f"{mf} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def read_store(path: str | os.PathLike, verify: bool = False) -> Store:
    """Read a whole store into numpy. verify=True re-hashes the data against the manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    try:
        table = pq.read_table(path / SAMPLES_FILE)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path / SAMPLES_FILE} cannot be read ({e}); re-create the store") from None
    features = {m: _matrix(table[m], info["dim"]) for m, info in manifest["modalities"].items()}
    store = Store(
        names=np.asarray(table["name"].to_pylist(), dtype=str),
        split=np.asarray(table["split"].to_pylist(), dtype=str),
        emotion=table["emotion"].to_numpy().astype(np.int64),
        valence=table["valence"].to_numpy(zero_copy_only=False).astype(np.float32),
        features=features,
        manifest=manifest,
    )
    if verify:
        actual = content_hash(
            store.names, store.split, store.emotion, store.valence, store.features
        )
        if actual != manifest["content_hash"]:
            raise InputError(
                f"{path}: data does not match the manifest's content_hash; re-create the store"
            )
    return store


def summary_table(store_or_manifest) -> str:
    """The dataset summary: split, count and count per class."""
    manifest = getattr(store_or_manifest, "manifest", store_or_manifest)
    classes = manifest["classes"]
    counts = manifest["counts"]
    width = max(8, *(len(c) for c in classes))
    head = f"{'split':<7}{'count':>7}" + "".join(f"{c:>{width + 1}}" for c in classes)
    lines = [head, "-" * len(head)]
    for s in SPLITS:
        if s in counts:
            row = counts[s]
            lines.append(f"{s:<7}{sum(row):>7}" + "".join(f"{c:>{width + 1}}" for c in row))
    mods = ", ".join(f"{m} {i['feature']} ({i['dim']})" for m, i in manifest["modalities"].items())
    lines.append(f"features: {mods}")
    lines.append(f"source: {manifest['source']}  content hash: {manifest['content_hash'][:16]}")
    return "\n".join(lines)
