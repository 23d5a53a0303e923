"""Members: identity, and the two files each trained member leaves behind.

A member is one trained model = (recipe config, fold, seed). It leaves

    RUN/members/<member_id>.safetensors   its best-epoch weights (mer_ray.weights),
                                          written first
    RUN/members/<member_id>.parquet       its predictions, written last: the "done"
                                          marker

and is complete only when both exist (a member that failed, e.g. diverged before
any finite epoch, leaves a Parquet file with no rows and `status: failed`, and no
weights). Both are written atomically, so a kill at any moment leaves either a whole
member or one that the next run retrains; temporary files start with `.tmp-`.

The Parquet file has one row per predicted sample:

    split   "oof" (its held-out fold of train), then every test split of the store,
            labelled or not, in the dataset's order
    name    sample name
    logits  C float32, in the dataset's class order, at the member's best epoch
    valence float32 (its prediction), only where the model has a valence head
    label   int16 true class, null on unlabelled splits
    valence_label float32, null where the split has no valence
    logits_mask_<mods>, valence_mask_<mods>
            the same prediction with those modalities zeroed through the model's
            modality-dropout path (one pair of columns per entry of mask_sets(...)),
            for the robustness analysis

and the schema metadata key `mer_ray.member` holds JSON: member_id, config, fold, seed,
best_epoch, epochs_run, metrics, history, classes, dataset, model, store (content hash,
features used), status, stop_reason, weights (file name and SHA-256) and, for a
self-training student, pseudo (where its pseudo-labels came from: mer_ray.pseudo).

Only pyarrow and numpy here: the `ensembles` package reads these files without torch.
Locations are local paths or pyarrow filesystem URIs (s3://, gs://, file://).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mer_ray.dataset import MODALITIES, Dataset
from mer_ray.errors import InputError
from mer_ray.presets import ADDED_FIELDS
from mer_ray.storage import (TMP_PREFIX, file_type, join, list_files, missing_bucket,
                             parent_and_name, resolve, storage_errors, write_bytes)

FORMAT = "mer-ray-member/2"
OLD_FORMAT = "mer-ray-member/1"
META_KEY = b"mer_ray.member"
MEMBERS_DIR = "members"
OOF = "oof"
PARQUET, WEIGHTS = ".parquet", ".safetensors"


def mask_sets(modalities) -> list[tuple[str, ...]]:
    """Modalities zeroed at inference for the robustness analysis: every non-empty proper
    subset, smallest first (each single one, then each pair, ...)."""
    modalities = tuple(modalities)
    return [c for k in range(1, len(modalities)) for c in itertools.combinations(modalities, k)]


MASKS = tuple(mask_sets(MODALITIES))  # the three-modality case


def mask_key(mods) -> str:
    return "_".join(mods)


def member_id(config: dict, fold: int, seed: int) -> str:
    """Stable id of (config, fold, seed): readable prefix + hash of the full config.
    Fields added since the first member format are left out where they have their
    default, so members trained before those fields existed keep their ids."""
    cfg = {k: v for k, v in config.items() if not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}
    payload = json.dumps({"config": cfg, "fold": int(fold), "seed": int(seed)}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"{config['preset']}-w{config['warmup']}-f{fold}-s{seed}-{digest}"


@dataclass
class SplitPredictions:
    names: np.ndarray  # [n] str
    logits: np.ndarray  # [n, C] float32
    valence: np.ndarray | None  # [n] float32; None without a valence head
    label: np.ndarray  # [n] int64, -1 where unlabelled
    valence_label: np.ndarray  # [n] float32, NaN where unknown
    masked: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    # mask_key -> (logits [n, C], valence [n] or None)

    @property
    def labelled(self) -> bool:
        return bool(len(self.label)) and bool((np.asarray(self.label) >= 0).all())


@dataclass
class MemberResult:
    member_id: str
    config: dict
    fold: int
    seed: int
    best_epoch: int
    epochs_run: int
    metrics: dict  # split -> metric name -> value (labelled splits only)
    history: list[dict]  # one dict per epoch run
    classes: list[str]
    store: dict  # {"content_hash": ..., "features": {modality: {"feature", "dim"}}}
    predictions: dict[str, SplitPredictions]  # "oof" + test splits -> predictions
    dataset: dict = field(default_factory=dict)  # Dataset.to_dict()
    model: dict = field(default_factory=dict)  # ModelShape.to_dict()
    status: str = "ok"  # "ok", or "failed" (no predictions, no weights)
    stop_reason: str | None = None  # why training ended early, where it did
    weights: dict | None = None  # best-epoch pack-layout weights (in memory only)
    weights_sha256: str | None = None
    path: str | None = None  # where it was read from / written to
    # a self-training student's pseudo-labels: file, sha256, round, teacher_fold,
    # teachers (member ids), rows (mer_ray.pseudo); None for a member without
    pseudo: dict | None = None

    @property
    def description(self) -> Dataset:
        if self.dataset:
            return Dataset.from_dict(self.dataset, str(self.path or self.member_id))
        return _infer_dataset(self)

    @property
    def test_splits(self) -> list[str]:
        return [s for s in self.predictions if s != OOF]

    def meta(self) -> dict:
        return {
            "format": FORMAT, "member_id": self.member_id, "config": self.config,
            "fold": self.fold, "seed": self.seed, "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run, "metrics": self.metrics, "history": self.history,
            "classes": self.classes, "dataset": self.dataset, "model": self.model,
            "store": self.store, "status": self.status, "stop_reason": self.stop_reason,
            "weights": ({"file": self.member_id + WEIGHTS, "sha256": self.weights_sha256}
                        if self.weights_sha256 else None),
            **({"pseudo": self.pseudo} if self.pseudo is not None else {}),
        }


def _fsl(parts, width: int):
    x = np.concatenate(parts).astype(np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(x, pa.float32()), width)


def _to_table(result: MemberResult) -> pa.Table:
    n_classes = len(result.classes)
    splits = list(result.predictions)
    preds = [result.predictions[s] for s in splits]
    with_valence = bool(preds) and preds[0].valence is not None
    keys = list(preds[0].masked) if preds else []
    label = np.concatenate([np.asarray(p.label, np.int64) for p in preds]) if preds \
        else np.zeros(0, np.int64)
    vl = np.concatenate([np.asarray(p.valence_label, np.float32) for p in preds]) if preds \
        else np.zeros(0, np.float32)
    arrays = {
        "split": pa.array([s for s, p in zip(splits, preds) for _ in range(len(p.names))],
                          pa.string()),
        "name": pa.array([str(n) for p in preds for n in p.names], pa.string()),
        "label": pa.array(np.where(label < 0, 0, label), pa.int16(), mask=label < 0),
        "valence_label": pa.array(vl, pa.float32(), mask=np.isnan(vl)),
        "logits": _fsl([p.logits for p in preds] or [np.zeros((0, n_classes))], n_classes),
    }
    if with_valence:
        arrays["valence"] = pa.array(np.concatenate([p.valence for p in preds]), pa.float32())
    for k in keys:
        arrays[f"logits_mask_{k}"] = _fsl([p.masked[k][0] for p in preds], n_classes)
        if with_valence:
            arrays[f"valence_mask_{k}"] = pa.array(
                np.concatenate([p.masked[k][1] for p in preds]).astype(np.float32))
    table = pa.table(arrays)
    return table.replace_schema_metadata({META_KEY: json.dumps(result.meta()).encode()})


def members_dir(run) -> str:
    return join(run, MEMBERS_DIR)


def member_path(run, mid: str) -> str:
    return join(run, MEMBERS_DIR, mid + PARQUET)


def weights_path(member_file: str) -> str:
    """The weights file beside a member's Parquet file."""
    head, name = parent_and_name(member_file)
    return join(head, name[: -len(PARQUET)] + WEIGHTS)


def write_member(result: MemberResult, run) -> str:
    """Write a member: its weights first (where it has any), then its Parquet file, each
    atomically. Returns the Parquet file's location."""
    from mer_ray.weights import weights_bytes, write_weights

    final = member_path(run, result.member_id)
    if result.weights is not None:
        meta = {"member_id": result.member_id, "config": result.config,
                "model": result.model, "classes": result.classes,
                "dataset": result.dataset, "features": result.store.get("features"),
                "store_content_hash": result.store.get("content_hash"),
                "best_epoch": result.best_epoch}
        result.weights_sha256 = write_weights(weights_path(final),
                                              weights_bytes(result.weights, meta))
    sink = pa.BufferOutputStream()
    pq.write_table(_to_table(result), sink, compression="zstd")
    with storage_errors(final):
        write_bytes(final, sink.getvalue().to_pybytes())
    result.path = final
    return final


def _ids(run, suffix: str) -> set[str]:
    return {parent_and_name(f)[1][: -len(suffix)]
            for f in list_files(members_dir(run), suffix)}


def existing_member_ids(run) -> set[str]:
    """Ids of the complete members of a run: a Parquet file and its weights, or a
    Parquet file that records a failed member (which has no weights)."""
    done, weights = _ids(run, PARQUET), _ids(run, WEIGHTS)
    complete = done & weights
    for mid in sorted(done - weights):
        meta = _meta_or_none(member_path(run, mid))
        if meta is not None and meta.get("status") == "failed":
            complete.add(mid)
    return complete


def member_meta(location: str) -> dict | None:
    """A member file's metadata (config, fold, seed, best_epoch, epochs_run, metrics,
    history, status, ...) from its Parquet footer, no predictions read; None where the
    file cannot be read."""
    return _meta_or_none(location)


def _meta_or_none(location: str) -> dict | None:
    fs, path = resolve(location)
    try:
        schema = pq.read_schema(path, filesystem=fs)
        return json.loads(schema.metadata[META_KEY])
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError):
        return None


def list_member_files(run) -> list[str]:
    """Member Parquet files under a run folder or URI (searching subfolders), sorted, as
    locations with the run's scheme."""
    import pyarrow.fs as pafs

    kind = file_type(run)
    if kind == pafs.FileType.NotFound:
        raise InputError(missing_bucket(run) or f"{run}: no such run folder")
    if kind == pafs.FileType.File:
        if str(run).endswith(PARQUET):
            return [str(run)]
        raise InputError(f"{run} is a file, not a run folder; give the folder that holds "
                         f"{MEMBERS_DIR}/")
    return [f for f in list_files(run, PARQUET, recursive=True)
            if parent_and_name(parent_and_name(f)[0])[1] == MEMBERS_DIR
            and not parent_and_name(f)[1].startswith(TMP_PREFIX)]


def _old_dataset(meta: dict) -> dict:
    """The first member format was MER2023 only."""
    from mer_ray.constants import MER2023

    if list(meta["classes"]) != list(MER2023.classes):
        return Dataset("unknown", tuple(meta["classes"]), MER2023.splits).to_dict()
    return MER2023.to_dict()


def _infer_dataset(result: MemberResult) -> Dataset:
    """A description for a result made without one (in memory, by hand): its prediction
    splits as labelled or unlabelled test splits, valence where labels have it."""
    from mer_ray.dataset import Split

    oof = result.predictions.get(OOF)
    splits = [Split("train", "train", bool(oof is not None and oof.valence is not None
                                          and not np.isnan(oof.valence_label).all()))]
    for name in result.test_splits:
        p = result.predictions[name]
        labelled = p.labelled
        splits.append(Split(name, "test" if labelled else "unlabelled",
                            labelled and p.valence is not None
                            and not np.isnan(p.valence_label).all()))
    return Dataset("unnamed", tuple(result.classes), tuple(splits))


def read_member(location: str) -> MemberResult:
    """Read one member file; a corrupt or foreign file raises InputError naming it."""
    fs, path = resolve(location)
    try:
        with storage_errors(location, "reading"):
            table = pq.read_table(path, filesystem=fs)
        meta = json.loads(table.schema.metadata[META_KEY])
        fmt = meta.get("format")
        if fmt not in (FORMAT, OLD_FORMAT):
            raise InputError(f"{location}: member format {fmt!r}, expected {FORMAT!r}")
        n_classes = len(meta["classes"])
        split_col = np.asarray(table["split"].to_pylist(), dtype=str)
        names = np.asarray(table["name"].to_pylist(), dtype=str)
        label = table["label"].combine_chunks().fill_null(-1).to_numpy(
            zero_copy_only=False).astype(np.int64)
        dataset = meta.get("dataset") or _old_dataset(meta)
        with_valence = "valence" in table.column_names

        def matrix(name, rows):
            flat = table[name].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            return flat.reshape(-1, n_classes)[rows]

        def vector(name, rows):
            if name not in table.column_names:
                return None
            return table[name].to_numpy(zero_copy_only=False).astype(np.float32)[rows]

        mask_columns = [c[len("logits_mask_"):] for c in table.column_names
                        if c.startswith("logits_mask_")]
        status = meta.get("status", "ok")
        split_order = list(dict.fromkeys(split_col.tolist()))
        if status == "ok" and OOF not in split_order:
            raise InputError(f"{location}: member has no {OOF} predictions; re-train that "
                             "member")
        predictions = {}
        for split in split_order:
            rows = np.flatnonzero(split_col == split)
            predictions[split] = SplitPredictions(
                names=names[rows], logits=matrix("logits", rows),
                valence=vector("valence", rows) if with_valence else None,
                label=label[rows], valence_label=vector("valence_label", rows),
                masked={key: (matrix("logits_mask_" + key, rows),
                              vector("valence_mask_" + key, rows))
                        for key in mask_columns},
            )
        weights = meta.get("weights") or {}
        return MemberResult(
            member_id=meta["member_id"], config=meta["config"], fold=meta["fold"],
            seed=meta["seed"], best_epoch=meta["best_epoch"], epochs_run=meta["epochs_run"],
            metrics=meta["metrics"], history=meta["history"], classes=meta["classes"],
            store=meta["store"], predictions=predictions, dataset=dataset,
            model=meta.get("model", {}), status=status, stop_reason=meta.get("stop_reason"),
            weights_sha256=weights.get("sha256"), path=str(location),
            pseudo=meta.get("pseudo"),
        )
    except InputError:
        raise
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError, IndexError) as e:
        raise InputError(
            f"{location}: not a readable mer-ray member file ({type(e).__name__}: {e}); "
            "delete it and run the same training command again to retrain that member"
        ) from None
