"""A round's pseudo-label table: where it lives in a run, writing it, and reading it back
for the students that train on it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mer_ray.errors import InputError
from mer_ray.storage import join, read_bytes, resolve, storage_errors, write_bytes

FORMAT = "mer-ray-pseudo-labels/1"
META_KEY = b"mer_ray.pseudo"
ROUNDS_DIR = "rounds"
ALL_FOLDS = -1  # teacher_fold of a label every fold's students share


def config_digest(config) -> str:
    """A short hash of the whole student config (the table belongs to exactly it)."""
    payload = json.dumps(config.to_dict(), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def labels_file(run, config) -> str:
    """Where the pseudo-labels of a round >= 1 setting live in its run."""
    name = f"pseudo_labels-{config.preset}-w{config.warmup}-{config_digest(config)}.parquet"
    return join(run, ROUNDS_DIR, str(config.pseudo_round), name)


@dataclass
class RoundLabels:
    """A round's table in memory (what `write_labels` writes)."""

    names: np.ndarray
    splits: np.ndarray
    teacher_fold: np.ndarray
    classes: np.ndarray
    probabilities: np.ndarray
    confidence: np.ndarray
    agreement: np.ndarray
    meta: dict = field(default_factory=dict)

    def counts(self, n_classes: int) -> dict[int, list[int]]:
        """teacher fold -> pseudo-labels per class."""
        return {int(f): np.bincount(self.classes[self.teacher_fold == f],
                                    minlength=n_classes).tolist()
                for f in np.unique(self.teacher_fold)}


# ---------------------------------------------------------------- the file
def labels_table(labels: RoundLabels, n_classes: int, round_: int) -> pa.Table:
    probs = pa.FixedSizeListArray.from_arrays(
        pa.array(labels.probabilities.reshape(-1), pa.float32()), n_classes)
    table = pa.table({
        "name": pa.array(labels.names.astype(str), pa.string()),
        "split": pa.array(labels.splits.astype(str), pa.string()),
        "teacher_fold": pa.array(labels.teacher_fold, pa.int16()),
        "class": pa.array(labels.classes, pa.int16()),
        "probabilities": probs,
        "confidence": pa.array(labels.confidence, pa.float32()),
        "agreement": pa.array(labels.agreement, pa.float32()),
        "round": pa.array(np.full(len(labels.names), round_, np.int16)),
    })
    return table.replace_schema_metadata({META_KEY: json.dumps(labels.meta).encode()})


def write_labels(run, config, labels: RoundLabels, n_classes: int) -> str:
    location = labels_file(run, config)
    sink = pa.BufferOutputStream()
    pq.write_table(labels_table(labels, n_classes, config.pseudo_round), sink,
                   compression="zstd")
    with storage_errors(location):
        write_bytes(location, sink.getvalue().to_pybytes())
    return location


def labels_meta(location) -> dict | None:
    """A table's metadata, None where there is no readable table."""
    fs, path = resolve(location)
    try:
        return json.loads(pq.read_schema(path, filesystem=fs).metadata[META_KEY])
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError):
        return None


@dataclass
class FoldLabels:
    """The pseudo-labelled rows one fold's students add to their training rows."""

    rows: np.ndarray  # store rows
    classes: np.ndarray  # [n] int64
    probabilities: np.ndarray  # [n, C] float32 (soft targets)
    source: dict  # where they came from (recorded in each student's member file)


@dataclass
class PseudoLabels:
    """A round's table read for training, by teacher fold."""

    by_fold: dict[int, FoldLabels]

    def for_fold(self, fold: int) -> FoldLabels:
        if ALL_FOLDS in self.by_fold:
            return self.by_fold[ALL_FOLDS]
        if fold not in self.by_fold:
            raise InputError(f"the pseudo-labels hold no rows for fold {fold}'s students")
        return self.by_fold[fold]


def read_labels(run, config, store) -> PseudoLabels:
    """The table of a round >= 1 config, checked against the store and the config."""
    location = labels_file(run, config)
    try:
        with storage_errors(location, "reading"):
            data = read_bytes(location)
    except FileNotFoundError:
        raise InputError(f"{location}: the pseudo-labels of round {config.pseudo_round} are "
                         "missing; `mer-ray selftrain` makes them from the round before")
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        table = pq.read_table(pa.BufferReader(data))
        meta = json.loads(table.schema.metadata[META_KEY])
    except (pa.ArrowException, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{location}: not a readable pseudo-label table ({e}); delete it "
                         "and run the same selftrain command to make it again") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{location}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("store_content_hash") != store.content_hash:
        raise InputError(f"{location} was made on store {meta.get('store_content_hash')}, "
                         f"not on {store.location} ({store.content_hash}); choose another --out")
    if meta.get("config") != config.to_dict():
        raise InputError(f"{location} belongs to another setting; delete it and run the "
                         "same selftrain command to make it again")
    index = {n: i for i, n in enumerate(store.names)}
    names = table["name"].to_pylist()
    unknown = [n for n in names if n not in index]
    if unknown:
        raise InputError(f"{location}: sample {unknown[0]} is not in the store "
                         f"({len(unknown)} such)")
    rows = np.array([index[n] for n in names], np.int64)
    labelled = [s.name for s in store.dataset.splits if s.labelled]
    if np.isin(store.split[rows], labelled).any():
        bad = names[int(np.flatnonzero(np.isin(store.split[rows], labelled))[0])]
        raise InputError(f"{location}: sample {bad} is in a labelled split; pseudo-labels "
                         "go to unlabelled samples only")
    n_classes = store.dataset.n_classes
    fold = table["teacher_fold"].to_numpy().astype(np.int64)
    classes = table["class"].to_numpy().astype(np.int64)
    probs = table["probabilities"].combine_chunks().flatten().to_numpy().reshape(-1, n_classes)
    out = {}
    for f in sorted(int(x) for x in meta["teachers"]):  # a fold may have selected nothing
        sel = fold == f
        teachers = meta["teachers"][str(f)]
        out[f] = FoldLabels(
            rows[sel], classes[sel], probs[sel].astype(np.float32),
            {"file": location, "sha256": sha256, "round": config.pseudo_round,
             "teacher_fold": f, "teachers": teachers, "rows": int(sel.sum())})
    return PseudoLabels(out)
