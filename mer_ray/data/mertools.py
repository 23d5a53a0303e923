"""Import MERTools features and labels into a feature store.

MERTools (the MER2023 baseline) extracts one utterance-level feature file per sample and
feature extractor::

    FEATURES/chinese-hubert-large-UTT/sample_00000001.npy
    FEATURES/Baichuan-13B-Base-UTT/sample_00000001.npy
    FEATURES/clip-vit-large-patch14-UTT/sample_00000001.npy

Each file holds a 1-D vector; a 2-D [T, D] array is averaged over T, as MERTools does.
A modality may name several feature folders (`--audio A,B`): all are stored, and a
recipe picks one (`--set audio_feature=B`). A modality given as `none` is left out.

Labels come in one of these forms:

* one CSV with header ``name,split,discrete[,valence]`` (MER2023's, or any dataset's);
* a folder of ``<split>.csv`` files (header ``name,discrete[,valence]``), train required;
* MERTools' ``label-6way.npz`` / ``track1_label_6way.npz`` (keys ``<split>_corpus``,
  each a pickled dict ``name -> {'emo': str, 'val': float}``, val -10 meaning "none").
  Loading it runs pickled code, so it is only read with ``trust_pickle=True``. A test
  split whose labels are all the placeholder (emotion 'neutral', no valence), as
  MER2024 onwards hand out, becomes an unlabelled split, and the importer says so;
* MERTools' raw CSV pair for MER2024/2025: the train labels (``name,discrete``, no
  split column) plus ``candidates`` (a CSV with column ``name``: the unlabelled test
  set, in the order the submission must follow).

Classes: `classes` fixes their order; otherwise MER's six classes in MER order when
every label is one of them, else the sorted set of labels found (printed). Valence is
optional: a split has it when its rows carry numbers (not the -10 placeholder), and
then every row of that split must.

Samples with features in every modality but no label are kept, as an unlabelled split
(`unlabelled_split`, default "unlabelled"; the candidates' split where a candidates file
is given, which then decides which of them are kept), and counted. Every bad input
raises :class:`~mer_ray.errors.InputError` naming the file, sample or field, and
nothing is written: the store is written only after everything validated.
"""

from __future__ import annotations

import csv
import math
import os
import pickle
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mer_ray.data.constants import (MER2023, MER2023_FEATURES, MER_CLASSES, PLACEHOLDER_EMOTION,
                               VALENCE_PLACEHOLDER)
from mer_ray.data.store import NO_LABEL, check_output_path, write_store
from mer_ray.data.dataset import MODALITIES, TRAIN, Dataset, Split
from mer_ray.errors import InputError

UNLABELLED = "unlabelled"


@dataclass
class LabelRow:
    name: str
    split: str
    emotion: str  # the label as written (case kept for messages)
    valence: object  # the cell as written (str, float or None)
    where: str  # file and line, for messages


def _csv_rows(path: Path, split: str | None, allow_no_split: bool = False) -> list[LabelRow]:
    """Rows of one label CSV; split=None means the file has a split column (or, with
    allow_no_split, that a file without one holds the train split)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            if "discrete" not in header and "valence" in header:
                raise InputError(f"{path}: has valence but no discrete column; valence-only "
                                 "(regression) datasets are not supported yet")
            need = ["name", "discrete"] + (["split"] if split is None else [])
            if split is None and "split" not in header and allow_no_split:
                need, split = ["name", "discrete"], TRAIN
            missing = [c for c in need if c not in header]
            if missing:
                hint = ""
                if "split" in missing:
                    hint = (" (a single label file needs a split column; or give a folder "
                            "of <split>.csv files, or train labels with --candidates)")
                raise InputError(f"{path}: missing column(s) {', '.join(missing)}{hint}; "
                                 f"expected header {','.join(need)}[,valence]")
            rows = []
            for lineno, rec in enumerate(reader, start=2):
                name = (rec.get("name") or "").strip()
                where = f"{path} line {lineno}"
                if not name:
                    raise InputError(f"{where}: empty sample name")
                s = split if split is not None else (rec.get("split") or "").strip()
                if not s:
                    raise InputError(f"{where} ({name}): empty split")
                rows.append(LabelRow(name, s, (rec.get("discrete") or "").strip(),
                                     rec.get("valence"), f"{where} ({name})"))
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text CSV ({e})") from None
    except csv.Error as e:
        raise InputError(f"{path}: malformed CSV ({e})") from None
    return rows


def _npz_rows(path: Path, trust_pickle: bool) -> list[LabelRow]:
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
    corpora = [k for k in keys if k.endswith("_corpus")]
    if not corpora:
        raise InputError(f"{path}: no label keys found (have {', '.join(keys) or 'none'}); "
                         "expected train_corpus, test1_corpus, ...")
    rows = []
    for key in corpora:
        s = key[: -len("_corpus")]
        try:
            corpus = data[key]
            corpus = corpus.item() if isinstance(corpus, np.ndarray) else corpus
        except (ValueError, EOFError, OSError, pickle.UnpicklingError) as e:
            raise InputError(f"{path}: key {key} cannot be read ({e})") from None
        if not isinstance(corpus, dict):
            raise InputError(f"{path}: key {key} holds {type(corpus).__name__}, expected a "
                             "dict name -> {'emo': ..., 'val': ...}")
        if not corpus:
            raise InputError(f"{path}: split {s} ({key}) is empty; it has no samples")
        for name, rec in corpus.items():
            where = f"{path} {key} sample {name}"
            if not isinstance(rec, dict) or "emo" not in rec:
                raise InputError(f"{where}: expected a dict with 'emo' and 'val', got {rec!r}")
            rows.append(LabelRow(str(name), s, str(rec["emo"]).strip(), rec.get("val"), where))
    return rows


def _no_valence(cell) -> bool:
    if cell is None:
        return True
    if isinstance(cell, str):
        cell = cell.strip()
        if cell == "":
            return True
        try:
            cell = float(cell)
        except ValueError:
            return False
    try:
        return float(cell) == VALENCE_PLACEHOLDER
    except (TypeError, ValueError):
        return False


def _valence(row: LabelRow) -> float:
    value = row.valence.strip() if isinstance(row.valence, str) else row.valence
    if value is None or value == "":
        raise InputError(f"{row.where}: valence is empty; a number is required in split "
                         f"{row.split} (its other samples have one)")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{row.where}: valence {value!r} is not a number; expected a number "
                         "or an empty cell") from None
    if not math.isfinite(v):
        raise InputError(f"{row.where}: valence {value!r} is not a finite number")
    if v == VALENCE_PLACEHOLDER:
        raise InputError(f"{row.where}: valence {value!r} is the 'no valence' placeholder, "
                         f"but the other samples of split {row.split} have valence")
    return v


def read_label_rows(labels, trust_pickle: bool = False,
                    candidates: bool = False) -> list[LabelRow]:
    path = Path(labels)
    if not path.exists():
        raise InputError(f"label file or folder {path} does not exist")
    if path.is_dir():
        files = sorted(path.glob("*.csv"), key=lambda p: (p.stem != TRAIN, p.stem))
        if not files:
            raise InputError(f"{path}: no label files found; expected <split>.csv files "
                             "(train.csv, test1.csv, ...)")
        rows = []
        for f in files:
            part = _csv_rows(f, f.stem)
            if not part:
                raise InputError(f"{f}: split {f.stem} is empty; it has no samples")
            rows += part
    elif path.suffix.lower() == ".npz":
        rows = _npz_rows(path, trust_pickle)
    else:
        rows = _csv_rows(path, None, allow_no_split=candidates)
    present = Counter(r.split for r in rows)
    if TRAIN not in present:
        raise InputError(f"{path}: split {TRAIN} is missing or empty; it is required "
                         f"(found: {', '.join(present) or 'no samples'})")
    seen: dict[str, str] = {}
    for r in rows:
        if r.name in seen:
            if seen[r.name] == r.split:
                raise InputError(f"{path}: sample {r.name} is listed twice in split {r.split}")
            raise InputError(f"{path}: sample {r.name} is in two splits ({seen[r.name]} and "
                             f"{r.split}); each sample must belong to exactly one split")
        seen[r.name] = r.split
    return rows


def choose_classes(rows: list[LabelRow], classes=None, log=print) -> tuple[str, ...]:
    """The class order (module docstring): given, MER's, or the sorted set found."""
    found = sorted({r.emotion.lower() for r in rows})
    if classes:
        classes = tuple(c.strip() for c in classes)
        dup = sorted({c for c in classes if classes.count(c) > 1})
        if dup:
            raise InputError(f"--classes: {', '.join(dup)} listed twice")
        return classes
    mer = [f for f in found if f in MER_CLASSES]
    if len(mer) == len(found):
        return MER_CLASSES
    if mer:  # mostly MER labels and a stranger: a typo, not a new class
        odd = next(r for r in rows if r.emotion.lower() not in MER_CLASSES)
        raise InputError(f"{odd.where}: unknown emotion {odd.emotion!r}; expected one of "
                         f"{', '.join(MER_CLASSES)} (pass --classes a,b,c for a dataset with "
                         "other class names)")
    log(f"classes (sorted, as found in the labels; fix the order with --classes): "
        f"{', '.join(found)}")
    return tuple(found)


def _class_index(classes, row: LabelRow) -> int:
    key = row.emotion.lower()
    for i, c in enumerate(classes):
        if c.lower() == key:
            return i
    raise InputError(f"{row.where}: unknown emotion {row.emotion!r}; expected one of "
                     f"{', '.join(classes)}")


def _feature_lists(audio, text, video) -> dict[str, list[str]]:
    out = {}
    for m, value in zip(MODALITIES, (audio, text, video)):
        names = [] if value is None else [v.strip() for v in str(value).split(",") if v.strip()]
        if names == ["none"]:
            continue
        if not names:
            raise InputError(f"--{m}: give a feature folder name (or 'none' to leave the "
                             "modality out)")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"--{m}: feature {', '.join(dup)} named twice")
        out[m] = names
    if not out:
        raise InputError("every modality is 'none'; at least one is needed")
    return out


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


def load_feature(folder: Path, feature: str, names, bar=None) -> np.ndarray:
    """[N, D] of one feature folder's files for `names` (all must exist), every vector
    checked; the dimension is the majority's (ties: the first sample's)."""
    vecs = []
    for name in names:
        vecs.append(_load_vector(folder / f"{name}.npy", name, feature))
        if bar is not None:
            bar.update(1)
    dims = Counter(v.size for v in vecs)
    top = max(dims.values())
    expected = next(v.size for v in vecs if dims[v.size] == top)
    for name, v in zip(names, vecs):
        if v.size != expected:
            raise InputError(f"{folder / (name + '.npy')}: {name} in {feature} has {v.size} "
                             f"values, expected {expected}")
    return np.stack(vecs).astype(np.float32, copy=False)


def _candidates_rows(path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if "name" not in header:
                raise InputError(f"{path}: missing column name; a candidates file lists the "
                                 "test samples' names (header: name)")
            reader.fieldnames = header
            names = [(rec.get("name") or "").strip() for rec in reader]
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text CSV ({e})") from None
    if not names or any(not n for n in names):
        raise InputError(f"{path}: empty candidate name(s)")
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise InputError(f"{path}: candidate {dup[0]} is listed twice")
    return names


def import_mertools(
    features: str,
    labels: str,
    out: str,
    audio: str | None = MER2023_FEATURES["audio"][0],
    text: str | None = MER2023_FEATURES["text"][0],
    video: str | None = MER2023_FEATURES["video"][0],
    trust_pickle: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    classes=None,
    candidates: str | None = None,
    unlabelled_split: str = UNLABELLED,
    unlabelled=(),
    keep_unlabelled: bool = True,
    dataset_name: str | None = None,
    pool_split: str | None = None,
    log=None,
) -> str:
    """Read MERTools features + labels, validate everything, then write a store at out.
    `unlabelled`: names of labelled-looking splits to treat as unlabelled. `pool_split`:
    the feature files with no label that are not candidates become this split, role
    pool (`mer-ray selftrain` labels it; never predicted or submitted)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    check_output_path(out, overwrite)
    feat_root = Path(features)
    if not feat_root.is_dir():
        raise InputError(f"feature folder {feat_root} does not exist or is not a folder")
    wanted = _feature_lists(audio, text, video)
    for m, names in wanted.items():
        for feat in names:
            if not (feat_root / feat).is_dir():
                have = sorted(p.name for p in feat_root.iterdir() if p.is_dir())
                raise InputError(
                    f"{feat_root / feat}: {m} feature folder {feat} not found in {feat_root} "
                    f"(found: {', '.join(have) or 'none'}); pass --{m} with the right name")
    rows = read_label_rows(labels, trust_pickle, candidates=candidates is not None)
    classes = choose_classes(rows, classes, log)
    order = list(dict.fromkeys(r.split for r in rows))
    order = [TRAIN] + [s for s in order if s != TRAIN]
    unknown = sorted(set(unlabelled) - set(order))
    if unknown:
        raise InputError(f"--unlabelled {', '.join(unknown)}: no such split in the labels "
                         f"(splits: {', '.join(order)})")
    if TRAIN in unlabelled:
        raise InputError("--unlabelled train: the train split must be labelled")

    # splits handed out unlabelled: every label the placeholder, no valence (MER2024+)
    by_split = {s: [r for r in rows if r.split == s] for s in order}
    placeholder = [s for s in order if s != TRAIN and s not in unlabelled and all(
        r.emotion.lower() == PLACEHOLDER_EMOTION and _no_valence(r.valence) for r in by_split[s])
        and Path(labels).suffix.lower() == ".npz"]
    for s in placeholder:
        log(f"split {s}: every label is the placeholder {PLACEHOLDER_EMOTION!r} with no "
            "valence, so it is taken as handed out unlabelled (predicted, never scored)")
    unlabelled = set(unlabelled) | set(placeholder)

    splits = []
    for s in order:
        labelled = s not in unlabelled
        has_val = labelled and not all(_no_valence(r.valence) for r in by_split[s])
        splits.append(Split(s, TRAIN if s == TRAIN else ("test" if labelled else "unlabelled"),
                            has_val))
    described = {s.name: s for s in splits}
    names, split_col, emotion, valence = [], [], [], []
    for r in rows:  # the label file's order
        s = described[r.split]
        names.append(r.name)
        split_col.append(r.split)
        emotion.append(_class_index(classes, r) if s.labelled else NO_LABEL)
        valence.append(_valence(r) if s.valence else np.nan)
    labelled_names = set(names)

    # feature files with no label row: an unlabelled split (or the candidates'), and
    # with pool_split the rest as a pool
    cand = _candidates_rows(candidates) if candidates else None
    for flag, name in (("--unlabelled-split", unlabelled_split), ("--pool-split", pool_split)):
        if name is not None and name in order:
            raise InputError(f"{flag} {name}: the labels already have a split of that name; "
                             "choose another name")
    if pool_split is not None and pool_split == unlabelled_split and cand is None:
        raise InputError(f"--pool-split {pool_split}: the same name as --unlabelled-split; "
                         "choose another name")
    if cand is not None or keep_unlabelled or pool_split is not None:
        first = feat_root / next(iter(wanted.values()))[0]
        on_disk = sorted(e.name[:-4] for e in os.scandir(first) if e.name.endswith(".npy"))
        pool = []
        if cand is not None:
            clash = [n for n in cand if n in labelled_names]
            if clash:
                raise InputError(f"{candidates}: candidate {clash[0]} also has a label "
                                 f"({len(clash)} such); candidates are the unlabelled test set")
            extra = cand
            rest = sorted(set(on_disk) - labelled_names - set(cand))
            if rest and pool_split is not None:
                pool = rest
            elif rest:
                log(f"note: {len(rest)} feature file(s) in {first} are neither labelled nor "
                    "candidates; left out (--pool-split NAME keeps them as a pool for "
                    "`mer-ray selftrain`)")
        elif pool_split is not None:
            extra, pool = [], [n for n in on_disk if n not in labelled_names]
        else:
            extra = [n for n in on_disk if n not in labelled_names]
        for split_name, role, rows, what in (
                (unlabelled_split, "unlabelled", extra, "(predicted, never scored)"),
                (pool_split, "pool", pool, "(for `mer-ray selftrain`: never predicted or "
                 "scored)")):
            if not rows:
                continue
            splits.append(Split(split_name, role, False))
            names += rows
            split_col += [split_name] * len(rows)
            emotion += [NO_LABEL] * len(rows)
            valence += [np.nan] * len(rows)
            log(f"{len(rows)} sample(s) with features and no label: kept as {role} split "
                f"{split_name!r} {what}")
    elif not keep_unlabelled:
        first = feat_root / next(iter(wanted.values()))[0]
        extra = sum(1 for e in os.scandir(first)
                    if e.name.endswith(".npy") and e.name[:-4] not in labelled_names)
        if extra:
            log(f"note: {extra} feature file(s) in {first} have no label and were left out "
                "(--drop-unlabelled)")

    # every sample needs a file in every feature; check before the slow loads
    for m, feats in wanted.items():
        for feat in feats:
            d = feat_root / feat
            absent = [n for n in names if not (d / f"{n}.npy").is_file()]
            if absent:
                kind = "labelled " if absent[0] in labelled_names else ""
                raise InputError(f"{d / (absent[0] + '.npy')}: missing {m} feature file for "
                                 f"{kind}sample {absent[0]} ({len(absent)} sample(s) lack "
                                 f"{feat})")
    dataset = Dataset(dataset_name or _dataset_name(classes, splits), classes, tuple(splits))
    for c, n in zip(classes, np.bincount([e for e, s in zip(emotion, split_col) if s == TRAIN],
                                         minlength=len(classes))):
        if n == 0:
            raise InputError(f"class {c!r} has no training sample; a model cannot learn it "
                             "(drop it from --classes or add labelled samples)")

    total = len(names) * sum(len(f) for f in wanted.values())
    matrices = {}
    with tqdm(total=total, desc="import", unit="file", file=sys.stderr,
              disable=not progress) as bar:
        for m, feats in wanted.items():
            matrices[m] = {feat: load_feature(feat_root / feat, feat, names, bar) for feat in feats}
    return write_store(out, names, split_col, emotion, np.array(valence, dtype=np.float32),
                       features=matrices, dataset=dataset, source=f"mertools:{features}",
                       overwrite=overwrite)


def _dataset_name(classes, splits) -> str:
    if tuple(classes) == MER2023.classes and [s.name for s in splits] == [
            s.name for s in MER2023.splits][: len(splits)] and splits[0].valence:
        return "MER2023"
    return "imported"
