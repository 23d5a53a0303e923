"""The feature store: one Parquet file of samples plus a JSON manifest.

Layout of a store folder (a local path or a pyarrow filesystem URI)::

    STORE/samples.parquet   name, split, emotion, valence, one column per feature
    STORE/manifest.json     format, dataset (classes, splits and their roles),
                            modalities (their features: name, dim, column), source,
                            counts, content_hash

A modality may hold several features (e.g. two audio extractors); a recipe picks one
per modality (`--set audio_feature=NAME`, default the first). The first feature of a
modality sits in the column named after the modality, further ones in
`<modality>:<feature>`. `emotion` is null on unlabelled splits, `valence` null where
a split has none.

Each feature is a fixed-size float32 list column, written uncompressed and without
dictionary encoding so that reading is a memcpy: the whole MER2023-sized store
(5,030 x 6,912 floats) loads into numpy in a fraction of a second (see
benchmarks/bench_store.py). Training reads only the store.

`read_store(verify=True)` checks everything a training run relies on before it starts:
the content hash, each column's vector size against the manifest, the labels against
the classes and split roles, valence where the dataset says it exists, every value
finite. Writes are atomic: a local store is built in a temporary sibling folder and
renamed into place; on object storage the manifest is written last (a store without
one is not a store). The manifest's format and reading are mer_ray.data.manifest's, the
checks of the rows mer_ray.data.checks'.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mer_ray.data.checks import check_finite, check_rows, count_classes
from mer_ray.data.constants import MER2023
from mer_ray.data.dataset import MODALITIES, NO_LABEL, Dataset
from mer_ray.data.manifest import FORMAT, MANIFEST_FILE, SAMPLES_FILE, read_manifest
from mer_ray.errors import InputError
from mer_ray.storage import (
    check_output_folder,
    exists,
    is_uri,
    join,
    resolve,
    storage_errors,
    write_bytes,
)


@dataclass
class Store:
    """A whole feature store in memory. Row i of every array is sample names[i]."""

    names: np.ndarray  # [N] str
    split: np.ndarray  # [N] str, one of the dataset's splits
    emotion: np.ndarray  # [N] int64 index into the classes; NO_LABEL where unlabelled
    valence: np.ndarray  # [N] float32, NaN where unknown
    features: dict[str, dict[str, np.ndarray]]  # modality -> feature name -> [N, D]
    manifest: dict = field(default_factory=dict)
    location: str = ""

    def __len__(self) -> int:
        return len(self.names)

    def rows(self, split: str) -> np.ndarray:
        """Row indices of one split, in store order."""
        return np.flatnonzero(self.split == split)

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def dataset(self) -> Dataset:
        return Dataset.from_dict(self.manifest["dataset"], f"{self.location} manifest")

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["dataset"]["classes"])

    @property
    def modalities(self) -> list[str]:
        """The modalities this dataset has, in the model's order."""
        return [m for m in MODALITIES if m in self.features]

    def feature_names(self, modality: str) -> list[str]:
        return list(self.features[modality])

    def feature(self, modality: str, name: str | None = None) -> np.ndarray:
        """[N, D] of `name` (default: the modality's first feature)."""
        have = self.features.get(modality)
        if not have:
            raise InputError(f"{self.location}: this store has no {modality} features")
        if name is None:
            return next(iter(have.values()))
        if name not in have:
            raise InputError(f"{self.location}: no {modality} feature {name!r}; it has "
                             f"{', '.join(have)}")
        return have[name]


def content_hash(names, split, emotion, valence, columns: dict[str, np.ndarray]) -> str:
    """A hash of the data itself (not of the Parquet bytes), so it survives re-encoding.
    `columns` is keyed by column name: a single-feature MER2023 store hashes as it did in
    the first store format (its columns are named after the modalities)."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, names)).encode())
    h.update("\n".join(map(str, split)).encode())
    h.update(np.ascontiguousarray(emotion, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(valence, dtype=np.float32).tobytes())
    for c in sorted(columns):
        h.update(c.encode())
        h.update(np.ascontiguousarray(columns[c], dtype=np.float32).tobytes())
    return h.hexdigest()


def column_name(modality: str, feature: str, first: bool) -> str:
    return modality if first else f"{modality}:{feature}"


def _feature_table(features, feature_names) -> dict[str, dict[str, np.ndarray]]:
    """Accept {modality: array} + {modality: name}, or {modality: {name: array}}."""
    out = {}
    for m, value in features.items():
        if isinstance(value, dict):
            out[m] = dict(value)
        else:
            if not feature_names or m not in feature_names:
                raise InputError(f"write_store: no feature name given for modality {m!r}")
            out[m] = {feature_names[m]: value}
    return out


def check_output_path(out, overwrite: bool = False) -> None:
    """A store may be written at `out`: new (or --overwrite), and a place a folder can be."""
    if exists(out) and not overwrite:
        raise InputError(f"{out} already exists; choose another --out or pass --overwrite")
    check_output_folder(out)


def write_store(out, names, split, emotion, valence, features: dict, feature_names=None,
                source: str = "", dataset: Dataset | None = None,
                overwrite: bool = False) -> str:
    """Validate and write a store atomically; returns its location.

    emotion: class index per sample, NO_LABEL (-1) for samples of unlabelled splits;
    valence: NaN where unknown; features: {modality: [N, D]} with `feature_names`
    {modality: name}, or {modality: {feature name: [N, D]}} for several per modality;
    dataset: the description (default MER2023 restricted to the splits present)."""
    out = str(out)
    check_output_path(out, overwrite)
    names = np.asarray(names, dtype=str)
    split = np.asarray(split, dtype=str)
    emotion = np.asarray(emotion, dtype=np.int64)
    valence = np.asarray(valence, dtype=np.float32)
    n = len(names)
    for what, arr in (("split", split), ("emotion", emotion), ("valence", valence)):
        if len(arr) != n:
            raise InputError(f"write_store: {what} has {len(arr)} rows, names has {n}")
    table = _feature_table(features, feature_names)
    present = list(dict.fromkeys(split.tolist()))
    if dataset is None:
        dataset = MER2023.restricted_to(present)
    check_rows(dataset, names, split, emotion, valence, where="write_store")
    unknown = sorted(set(table) - set(MODALITIES))
    if unknown or not table:
        raise InputError(f"write_store: modalities must be some of {', '.join(MODALITIES)}, "
                         f"got {sorted(table)}")

    columns = {
        "name": pa.array(names, pa.string()),
        "split": pa.array(split, pa.string()),
        "emotion": pa.array(np.where(emotion < 0, 0, emotion), pa.int16(), mask=emotion < 0),
        "valence": pa.array(valence, pa.float32(), mask=np.isnan(valence)),
    }
    modalities, hashed = {}, {}
    for m in MODALITIES:
        if m not in table:
            continue
        modalities[m] = []
        for i, (feat, x) in enumerate(table[m].items()):
            x = np.ascontiguousarray(x, dtype=np.float32)
            if x.ndim != 2 or len(x) != n or x.shape[1] < 1:
                raise InputError(f"write_store: {m} feature {feat} must be [N={n}, D], "
                                 f"got {x.shape}")
            check_finite(x, names, f"{m} feature {feat}")
            col = column_name(m, feat, i == 0)
            columns[col] = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
            modalities[m].append({"feature": str(feat), "dim": int(x.shape[1]), "column": col})
            hashed[col] = x
    manifest = {
        "format": FORMAT,
        "dataset": dataset.to_dict(),
        "modalities": modalities,
        "source": source,
        "sizes": {s: int((split == s).sum()) for s in present},
        "counts": count_classes(dataset, split, emotion),
        "content_hash": content_hash(names, split, emotion, valence, hashed),
    }
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink, compression="none",
                   use_dictionary=["name", "split"], row_group_size=max(n, 1))
    files = {SAMPLES_FILE: sink.getvalue().to_pybytes(),
             MANIFEST_FILE: (json.dumps(manifest, indent=2) + "\n").encode()}
    _write_files(out, files, overwrite)
    return out


def _write_files(out: str, files: dict, overwrite: bool) -> None:
    if is_uri(out):
        # object stores cannot rename folders: the manifest goes last, so a store is
        # only ever found whole (read_manifest needs it)
        fs, path = resolve(out)
        with storage_errors(out):
            if overwrite and exists(join(out, MANIFEST_FILE)):
                fs.delete_file(f"{path.rstrip('/')}/{MANIFEST_FILE}")
            for name in (SAMPLES_FILE, MANIFEST_FILE):
                write_bytes(join(out, name), files[name])
        return
    parent = os.path.dirname(os.path.abspath(out)) or "."
    with storage_errors(out):
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
        try:
            for name, data in files.items():
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(data)
            if os.path.exists(out):
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


# ---------------------------------------------------------------- reading
def _matrix(table: pa.Table, col: str, dim: int, where: str) -> np.ndarray:
    if col not in table.column_names:
        raise InputError(f"{where}: column {col!r} named by the manifest is missing; "
                         "re-create the store")
    arr = table[col].combine_chunks()
    if not pa.types.is_fixed_size_list(arr.type) or not pa.types.is_float32(arr.type.value_type):
        raise InputError(f"{where}: column {col!r} is {arr.type}, expected fixed-size lists "
                         "of float32; re-create the store")
    if arr.type.list_size != dim:
        raise InputError(f"{where}: the manifest says {col} has {dim} values per sample, "
                         f"but the data holds {arr.type.list_size}; the manifest was edited "
                         "or belongs to another store: re-create the store")
    if arr.null_count:
        raise InputError(f"{where}: column {col!r} has {arr.null_count} missing vector(s)")
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def read_store(location, verify: bool = False) -> Store:
    """Read a whole store into numpy. verify=True checks it as training needs it: the
    content hash, labels, valence and finiteness (module docstring)."""
    location = str(location)
    manifest = read_manifest(location)
    where = join(location, SAMPLES_FILE)
    fs, path = resolve(where)
    try:
        with storage_errors(location, "reading"):
            table = pq.read_table(path, filesystem=fs)
    except (pa.ArrowInvalid, pa.ArrowException) as e:
        raise InputError(f"{where} cannot be read ({e}); re-create the store") from None
    for col in ("name", "split", "emotion", "valence"):
        if col not in table.column_names:
            raise InputError(f"{where}: column {col!r} is missing; re-create the store")
    features = {
        m: {f["feature"]: _matrix(table, f["column"], f["dim"], where) for f in feats}
        for m, feats in manifest["modalities"].items()
    }
    emotion = table["emotion"].combine_chunks()
    store = Store(
        names=np.asarray(table["name"].to_pylist(), dtype=str),
        split=np.asarray(table["split"].to_pylist(), dtype=str),
        emotion=emotion.fill_null(NO_LABEL).to_numpy(zero_copy_only=False).astype(np.int64),
        valence=table["valence"].to_numpy(zero_copy_only=False).astype(np.float32),
        features=features,
        manifest=manifest,
        location=location,
    )
    if verify:
        verify_store(store)
    return store


def verify_store(store: Store) -> None:
    """Everything a training run relies on, checked before its first epoch."""
    where = store.location or "store"
    dataset = store.dataset
    check_rows(dataset, store.names, store.split, store.emotion, store.valence, where)
    counts = count_classes(dataset, store.split, store.emotion)
    if counts != store.manifest.get("counts", counts):
        raise InputError(f"{where}: the manifest's class counts {store.manifest['counts']} "
                         f"disagree with the data's {counts}; re-create the store")
    columns = {}
    for m, feats in store.manifest["modalities"].items():
        for f in feats:
            x = store.features[m][f["feature"]]
            check_finite(x, store.names, f"{where}: {m} feature {f['feature']}")
            columns[f["column"]] = x
    actual = content_hash(store.names, store.split, store.emotion, store.valence, columns)
    if actual != store.manifest["content_hash"]:
        raise InputError(f"{where}: the data does not match the manifest's content hash (the "
                         "files were changed after the store was written); re-create the "
                         "store with `mer-ray data import`")
