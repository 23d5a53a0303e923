"""Import MERTools features and labels into a feature store.

MERTools (the MER2023 baseline) extracts one utterance-level feature file per sample and
feature extractor::

    FEATURES/chinese-hubert-large-UTT/sample_00000001.npy
    FEATURES/Baichuan-13B-Base-UTT/sample_00000001.npy
    FEATURES/clip-vit-large-patch14-UTT/sample_00000001.npy

Each file holds a 1-D vector; a 2-D [T, D] array is averaged over T, as MERTools does.

Labels come in one of three forms:

* one CSV with header ``name,split,discrete,valence``;
* a folder of ``<split>.csv`` files (header ``name,discrete,valence``), one per split
  present among train/test1/test2/test3 (train is required);
* MERTools' ``label-6way.npz`` (keys ``<split>_corpus``, each a pickled dict
  ``name -> {'emo': str, 'val': float}``). Loading it runs pickled code, so it is only
  read with ``trust_pickle=True``.

Every bad input raises :class:`~mer_ray.errors.InputError` naming the file, sample or
field, and nothing is written: the store is written only after everything validated.
"""

from __future__ import annotations

import csv
import math
import os
import pickle
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mer_ray.constants import CLASSES, DEFAULT_FEATURES, DISCRETE_ONLY_SPLITS, MODALITIES, SPLITS
from mer_ray.data.store import write_store
from mer_ray.errors import InputError

REQUIRED_SPLIT = "train"


def _emotion_index(emo, where: str) -> int:
    key = str(emo).strip().lower()
    for i, c in enumerate(CLASSES):
        if c == key:
            return i
    raise InputError(
        f"{where}: unknown emotion {emo!r}; expected one of {', '.join(CLASSES)}"
    )


def _valence(value, split: str, where: str) -> float:
    if split in DISCRETE_ONLY_SPLITS:
        return float("nan")  # test3 has no valence (MERTools writes -10 there)
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        raise InputError(
            f"{where}: valence is empty; a number is required in split {split} "
            "(only test3 has no valence)"
        )
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"{where}: valence {value!r} is not a number; expected a number or an empty cell"
        ) from None
    if math.isinf(v):
        raise InputError(f"{where}: valence {value!r} is not a finite number")
    return v


def _read_csv(path: Path, split: str | None) -> list[tuple[str, str, int, float]]:
    """Rows of one label CSV; split=None means the file has a split column."""
    need = ["name", "discrete", "valence"] if split is not None else [
        "name", "split", "discrete", "valence"]
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            missing = [c for c in need if c not in header]
            if missing:
                hint = ""
                if split is None and "split" in missing:
                    hint = (" (a single label file needs a split column; or give a folder "
                            "of <split>.csv files)")
                raise InputError(
                    f"{path}: missing column(s) {', '.join(missing)}{hint}; "
                    f"expected header {','.join(need)}"
                )
            rows = []
            for lineno, rec in enumerate(reader, start=2):
                name = (rec.get("name") or "").strip()
                where = f"{path} line {lineno}"
                if not name:
                    raise InputError(f"{where}: empty sample name")
                s = split if split is not None else (rec.get("split") or "").strip()
                if s not in SPLITS:
                    raise InputError(
                        f"{where} ({name}): unknown split {s!r}; expected one of {', '.join(SPLITS)}"
                    )
                where = f"{where} ({name})"
                emo = _emotion_index(rec.get("discrete") or "", where)
                val = _valence(rec.get("valence"), s, where)
                rows.append((name, s, emo, val))
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text CSV ({e})") from None
    except csv.Error as e:
        raise InputError(f"{path}: malformed CSV ({e})") from None
    return rows


def _read_npz(path: Path, trust_pickle: bool) -> list[tuple[str, str, int, float]]:
    if not trust_pickle:
        raise InputError(
            f"{path}: loading a MERTools .npz label file runs pickled code, which can execute "
            "anything; pass --trust-pickle only for a file you trust (or convert it to CSV)"
        )
    try:
        data = np.load(path, allow_pickle=True)
        keys = list(data.keys())
    except (ValueError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise InputError(f"{path}: cannot be read as a .npz label file ({e})") from None
    rows = []
    found = []
    for s in SPLITS:
        key = f"{s}_corpus"
        if key not in keys:
            continue
        found.append(s)
        try:
            corpus = data[key]
            corpus = corpus.item() if isinstance(corpus, np.ndarray) else corpus
        except (ValueError, EOFError, OSError, pickle.UnpicklingError) as e:
            raise InputError(f"{path}: key {key} cannot be read ({e})") from None
        if not isinstance(corpus, dict):
            raise InputError(
                f"{path}: key {key} holds {type(corpus).__name__}, expected a dict "
                "name -> {'emo': ..., 'val': ...}"
            )
        if not corpus:
            raise InputError(f"{path}: split {s} ({key}) is empty; it has no samples")
        for name, rec in corpus.items():
            where = f"{path} {key} sample {name}"
            if not isinstance(rec, dict) or "emo" not in rec:
                raise InputError(f"{where}: expected a dict with 'emo' and 'val', got {rec!r}")
            emo = _emotion_index(rec["emo"], where)
            val = _valence(rec.get("val"), s, where)
            rows.append((str(name), s, emo, val))
    if not found:
        raise InputError(
            f"{path}: no label keys found (have {', '.join(keys) or 'none'}); expected "
            + ", ".join(f"{s}_corpus" for s in SPLITS)
        )
    return rows


def read_labels(labels, trust_pickle: bool = False) -> list[tuple[str, str, int, float]]:
    """(name, split, emotion index, valence) rows, validated."""
    path = Path(labels)
    if not path.exists():
        raise InputError(f"label file or folder {path} does not exist")
    if path.is_dir():
        files = {s: path / f"{s}.csv" for s in SPLITS if (path / f"{s}.csv").is_file()}
        if not files:
            raise InputError(
                f"{path}: no label files found; expected {', '.join(s + '.csv' for s in SPLITS)}"
            )
        rows = []
        for s, f in files.items():
            part = _read_csv(f, s)
            if not part:
                raise InputError(f"{f}: split {s} is empty; it has no samples")
            rows += part
    elif path.suffix.lower() == ".npz":
        rows = _read_npz(path, trust_pickle)
    else:
        rows = _read_csv(path, None)

    present = Counter(r[1] for r in rows)
    if REQUIRED_SPLIT not in present:
        raise InputError(
            f"{path}: split {REQUIRED_SPLIT} is missing or empty; it is required "
            f"(found: {', '.join(s for s in SPLITS if s in present) or 'no samples'})"
        )
    seen: dict[str, str] = {}
    for name, s, _, _ in rows:
        if name in seen:
            if seen[name] == s:
                raise InputError(f"{path}: sample {name} is listed twice in split {s}")
            raise InputError(
                f"{path}: sample {name} is in two splits ({seen[name]} and {s}); "
                "each sample must belong to exactly one split"
            )
        seen[name] = s
    return rows


def _load_vector(path: Path, name: str, feature: str) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise InputError(
            f"{path}: sample {name} in {feature} is not a readable .npy file ({e}); "
            "re-extract it"
        ) from None
    if not isinstance(x, np.ndarray):
        try:
            x.close()
        except Exception:
            pass
        raise InputError(f"{path}: sample {name} in {feature} is not a .npy array file")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InputError(
            f"{path}: sample {name} in {feature} has dtype {x.dtype}, expected real numbers"
        )
    if x.ndim == 2:
        if x.shape[0] == 0:
            raise InputError(f"{path}: sample {name} in {feature} has zero frames (shape {x.shape})")
        x = x.astype(np.float64).mean(axis=0)
    elif x.ndim != 1:
        raise InputError(
            f"{path}: sample {name} in {feature} has shape {x.shape}, "
            "expected a 1-D vector or a 2-D [frames, dim] array"
        )
    if x.size == 0:
        raise InputError(f"{path}: sample {name} in {feature} is empty (0 values)")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise InputError(
            f"{path}: sample {name} in {feature} has {bad} NaN or Inf value(s); re-extract it"
        )
    return x


def import_mertools(
    features: str,
    labels: str,
    out: str,
    audio: str = DEFAULT_FEATURES["audio"][0],
    text: str = DEFAULT_FEATURES["text"][0],
    video: str = DEFAULT_FEATURES["video"][0],
    trust_pickle: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Read MERTools features + labels, validate everything, then write a store at out."""
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise InputError(f"{out_path} already exists; choose another --out or pass --overwrite")
    feat_root = Path(features)
    if not feat_root.is_dir():
        raise InputError(f"feature folder {feat_root} does not exist or is not a folder")
    feature_names = {"audio": audio, "text": text, "video": video}
    for m in MODALITIES:
        d = feat_root / feature_names[m]
        if not d.is_dir():
            have = sorted(p.name for p in feat_root.iterdir() if p.is_dir())
            raise InputError(
                f"{d}: {m} feature folder {feature_names[m]} not found in {feat_root} "
                f"(found: {', '.join(have) or 'none'}); pass --{m} with the right name"
            )

    rows = read_labels(labels, trust_pickle=trust_pickle)
    names = [r[0] for r in rows]

    # Every labelled sample needs a file in every modality; check before the slow loads.
    for m in MODALITIES:
        d = feat_root / feature_names[m]
        for name in names:
            p = d / f"{name}.npy"
            if not p.is_file():
                raise InputError(
                    f"{p}: missing {m} feature file for labelled sample {name}"
                )

    total = len(names) * len(MODALITIES)
    matrices = {}
    with tqdm(total=total, desc="import", unit="file", file=sys.stderr,
              disable=not progress) as bar:
        for m in MODALITIES:
            feat = feature_names[m]
            d = feat_root / feat
            vecs = []
            for name in names:
                vecs.append(_load_vector(d / f"{name}.npy", name, feat))
                bar.update(1)
            dims = Counter(v.size for v in vecs)
            # Majority dimension; ties go to the dim of the first sample read.
            top = max(dims.values())
            expected = next(v.size for v in vecs if dims[v.size] == top)
            for name, v in zip(names, vecs):
                if v.size != expected:
                    raise InputError(
                        f"{d / (name + '.npy')}: {name} in {feat} has {v.size} values, "
                        f"expected {expected}"
                    )
            matrices[m] = np.stack(vecs).astype(np.float32, copy=False)

    labelled = set(names)
    extra = 0
    for m in MODALITIES:
        d = feat_root / feature_names[m]
        extra_m = sum(
            1 for e in os.scandir(d)
            if e.name.endswith(".npy") and e.name[:-4] not in labelled
        )
        extra += extra_m
    if extra:
        print(
            f"warning: {extra} feature file(s) in {feat_root} have no label and were skipped",
            file=sys.stderr,
        )

    return write_store(
        out_path,
        names,
        [r[1] for r in rows],
        [r[2] for r in rows],
        np.array([r[3] for r in rows], dtype=np.float32),
        features=matrices,
        feature_names=feature_names,
        source=f"mertools:{features}",
        overwrite=overwrite,
    )
