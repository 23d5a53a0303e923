"""Reading MERTools label files for the importer (mer_ray.data.mertools).

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

Every bad input raises :class:`~mer_ray.errors.InputError` naming the file, line or
sample.
"""

from __future__ import annotations

import csv
import math
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mer_ray.data.constants import MER_CLASSES, VALENCE_PLACEHOLDER
from mer_ray.data.dataset import TRAIN
from mer_ray.errors import InputError


@dataclass
class LabelRow:
    """One sample's label as a label file gives it."""

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


def is_no_valence(cell) -> bool:
    """A valence cell that carries none: empty, or MERTools' -10 placeholder."""
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


def row_valence(row: LabelRow) -> float:
    """The valence of a row of a split that has valence, checked to be a real number."""
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
    """Every row of a label file or folder (module docstring), in file order; the train
    split is required and each sample belongs to exactly one split. `candidates`: a CSV
    without a split column holds the train split."""
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
            raise InputError(f": {', '.join(dup)} listed twice", param="classes")
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


def class_index(classes, row: LabelRow) -> int:
    """The index of the row's emotion in `classes` (case-insensitive)."""
    key = row.emotion.lower()
    for i, c in enumerate(classes):
        if c.lower() == key:
            return i
    raise InputError(f"{row.where}: unknown emotion {row.emotion!r}; expected one of "
                     f"{', '.join(classes)}")


def candidate_names(path) -> list[str]:
    """The names a candidates file lists (column ``name``), in its order."""
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
