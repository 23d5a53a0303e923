"""Members: identity, and the columnar file each trained member leaves behind.

A member is one trained model = (recipe config, fold, seed). Its file,
`RUN/members/<member_id>.parquet`, has one row per predicted sample:

    split   "oof" (its held-out fold of train), "test1", "test2", "test3"
    name    sample name
    logits  6 float32, in the manifest's class order, at the member's best epoch
    valence float32 (its prediction; null nowhere)
    label   int8 true class (from the store), valence_label float32 (null for test3)
    logits_mask_<mods>, valence_mask_<mods>
            the same prediction with those modalities zeroed through the model's
            modality-dropout path (one pair of columns per entry of MASKS), for the
            robustness analysis

and the schema metadata key `mer_ray.member` holds JSON: member_id, config, fold, seed,
best_epoch, epochs_run, metrics, history, classes, store (hash, features).

Only pyarrow and numpy here: the `ensembles` package reads these files without torch.
Locations are local paths or pyarrow filesystem URIs (s3://, gs://, file://).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mer_ray.errors import InputError

FORMAT = "mer-ray-member/1"
META_KEY = b"mer_ray.member"
MEMBERS_DIR = "members"
PRED_SPLITS = ("oof", "test1", "test2", "test3")

# Modalities zeroed at inference for the robustness analysis: each one and each pair.
MASKS = (
    ("audio",),
    ("text",),
    ("video",),
    ("audio", "text"),
    ("audio", "video"),
    ("text", "video"),
)


def mask_key(mods) -> str:
    return "_".join(mods)


def member_id(config: dict, fold: int, seed: int) -> str:
    """Stable id of (config, fold, seed): readable prefix + hash of the full config."""
    payload = json.dumps({"config": config, "fold": int(fold), "seed": int(seed)}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"{config['preset']}-w{config['warmup']}-f{fold}-s{seed}-{digest}"


@dataclass
class SplitPredictions:
    names: np.ndarray  # [n] str
    logits: np.ndarray  # [n, C] float32
    valence: np.ndarray  # [n] float32
    label: np.ndarray  # [n] int64
    valence_label: np.ndarray  # [n] float32, NaN where unknown
    masked: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # mask_key -> (logits [n, C], valence [n])


@dataclass
class MemberResult:
    member_id: str
    config: dict
    fold: int
    seed: int
    best_epoch: int
    epochs_run: int
    metrics: dict  # split -> metric name -> value
    history: list[dict]  # one dict per epoch run
    classes: list[str]
    store: dict  # {"content_hash": ..., "modalities": {...}}
    predictions: dict[str, SplitPredictions]  # PRED_SPLITS -> predictions
    path: str | None = None  # where it was read from / written to

    def meta(self) -> dict:
        return {
            "format": FORMAT,
            "member_id": self.member_id,
            "config": self.config,
            "fold": self.fold,
            "seed": self.seed,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "metrics": self.metrics,
            "history": self.history,
            "classes": self.classes,
            "store": self.store,
        }


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a pyarrow filesystem URI."""
    location = str(location)
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def _to_table(result: MemberResult) -> pa.Table:
    n_classes = len(result.classes)
    cols: dict[str, list] = {"split": [], "name": [], "label": [], "valence_label": []}
    logits, valence = [], []
    masked = {mask_key(m): ([], []) for m in MASKS}
    for split in PRED_SPLITS:
        p = result.predictions[split]
        cols["split"] += [split] * len(p.names)
        cols["name"] += list(map(str, p.names))
        cols["label"].append(np.asarray(p.label, np.int8))
        cols["valence_label"].append(np.asarray(p.valence_label, np.float32))
        logits.append(np.asarray(p.logits, np.float32))
        valence.append(np.asarray(p.valence, np.float32))
        for k, (lg, va) in masked.items():
            ml, mv = p.masked[k]
            lg.append(np.asarray(ml, np.float32))
            va.append(np.asarray(mv, np.float32))

    def fsl(parts):
        x = np.concatenate(parts).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(x), n_classes)

    vl = np.concatenate(cols["valence_label"])
    arrays = {
        "split": pa.array(cols["split"], pa.string()),
        "name": pa.array(cols["name"], pa.string()),
        "label": pa.array(np.concatenate(cols["label"])),
        "valence_label": pa.array(vl, mask=np.isnan(vl)),
        "logits": fsl(logits),
        "valence": pa.array(np.concatenate(valence)),
    }
    for k, (lg, va) in masked.items():
        arrays[f"logits_mask_{k}"] = fsl(lg)
        arrays[f"valence_mask_{k}"] = pa.array(np.concatenate(va))
    table = pa.table(arrays)
    return table.replace_schema_metadata({META_KEY: json.dumps(result.meta()).encode()})


def member_path(run: str, mid: str) -> str:
    return f"{str(run).rstrip('/')}/{MEMBERS_DIR}/{mid}.parquet"


def write_member(result: MemberResult, run: str | os.PathLike) -> str:
    """Write a member file atomically (temporary name, then move) and return its location."""
    fs, root = resolve(run)
    directory = f"{root.rstrip('/')}/{MEMBERS_DIR}"
    fs.create_dir(directory, recursive=True)
    final = f"{directory}/{result.member_id}.parquet"
    tmp = f"{directory}/.tmp-{result.member_id}-{uuid.uuid4().hex[:8]}.parquet"
    pq.write_table(_to_table(result), tmp, filesystem=fs, compression="zstd")
    fs.move(tmp, final)
    result.path = final
    return final


def existing_member_ids(run: str | os.PathLike) -> set[str]:
    """Ids of the members already saved under a run (finished files only)."""
    fs, root = resolve(run)
    selector = pafs.FileSelector(f"{root.rstrip('/')}/{MEMBERS_DIR}", allow_not_found=True)
    return {
        info.base_name[: -len(".parquet")]
        for info in fs.get_file_info(selector)
        if info.base_name.endswith(".parquet") and not info.base_name.startswith(".tmp-")
    }


def list_member_files(run: str | os.PathLike) -> list[str]:
    """Member files under a run folder or URI (searching subfolders), sorted."""
    fs, root = resolve(run)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{run}: no such run folder")
    if info.type == pafs.FileType.File:
        return [root]
    selector = pafs.FileSelector(root, recursive=True)
    return sorted(
        i.path
        for i in fs.get_file_info(selector)
        if i.type == pafs.FileType.File
        and i.base_name.endswith(".parquet")
        and not i.base_name.startswith(".tmp-")
        and i.path.rsplit("/", 2)[-2] == MEMBERS_DIR
    )


def read_member(location: str) -> MemberResult:
    """Read one member file; a corrupt or foreign file raises InputError naming it."""
    fs, path = resolve(location)
    try:
        table = pq.read_table(path, filesystem=fs)
        meta = json.loads(table.schema.metadata[META_KEY])
    except (pa.ArrowException, OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise InputError(
            f"{location}: not a readable mer-ray member file ({type(e).__name__}: {e}); "
            "delete it and re-run training for that member"
        ) from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{location}: member format {meta.get('format')!r}, expected {FORMAT!r}")
    n_classes = len(meta["classes"])
    split_col = np.asarray(table["split"].to_pylist(), dtype=str)

    def matrix(name, rows):
        flat = table[name].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(-1, n_classes)[rows]

    def vector(name, rows):
        return table[name].to_numpy(zero_copy_only=False).astype(np.float32)[rows]

    names = np.asarray(table["name"].to_pylist(), dtype=str)
    label = table["label"].to_numpy().astype(np.int64)
    predictions = {}
    for split in PRED_SPLITS:
        rows = np.flatnonzero(split_col == split)
        if len(rows) == 0:
            raise InputError(
                f"{location}: member has no {split} predictions; re-train that member"
            )
        predictions[split] = SplitPredictions(
            names=names[rows],
            logits=matrix("logits", rows),
            valence=vector("valence", rows),
            label=label[rows],
            valence_label=vector("valence_label", rows),
            masked={
                mask_key(m): (
                    matrix(f"logits_mask_{mask_key(m)}", rows),
                    vector(f"valence_mask_{mask_key(m)}", rows),
                )
                for m in MASKS
                if f"logits_mask_{mask_key(m)}" in table.column_names
            },
        )
    return MemberResult(
        member_id=meta["member_id"],
        config=meta["config"],
        fold=meta["fold"],
        seed=meta["seed"],
        best_epoch=meta["best_epoch"],
        epochs_run=meta["epochs_run"],
        metrics=meta["metrics"],
        history=meta["history"],
        classes=meta["classes"],
        store=meta["store"],
        predictions=predictions,
        path=location,
    )
