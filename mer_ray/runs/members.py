"""Members: identity, and the two files each trained member leaves behind.

A member is one trained model = (recipe config, fold, seed). It leaves

    RUN/members/<member_id>.safetensors   its best-epoch weights (mer_ray.model.weights),
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
self-training student, pseudo (where its pseudo-labels came from: mer_ray.selftrain.pseudo).

Only pyarrow and numpy here: the `ensembles` package reads these files without torch.
Locations are local paths or pyarrow filesystem URIs (s3://, gs://, file://).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mer_ray.errors import InputError
from mer_ray.model.weights import weights_bytes, write_weights
from mer_ray.storage import (
    TMP_PREFIX,
    file_type,
    join,
    list_files,
    missing_bucket,
    parent_and_name,
    resolve,
    storage_errors,
    write_bytes,
)
from mer_ray.train.result import (
    FORMAT,
    OLD_FORMAT,
    OOF,
    PARQUET,
    WEIGHTS,
    MemberResult,
    SplitPredictions,
    _old_dataset,
)

META_KEY = b"mer_ray.member"
MEMBERS_DIR = "members"


def _fixed_size_lists(parts, width: int):
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
        "logits": _fixed_size_lists([p.logits for p in preds] or [np.zeros((0, n_classes))],
                                    n_classes),
    }
    if with_valence:
        arrays["valence"] = pa.array(np.concatenate([p.valence for p in preds]), pa.float32())
    for k in keys:
        arrays[f"logits_mask_{k}"] = _fixed_size_lists([p.masked[k][0] for p in preds], n_classes)
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
