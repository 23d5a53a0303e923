"""Writing a synthetic dataset (mer_ray.data.synth draws it) to disk.

* `synthesize`: a MERTools tree, DIR/features/<feature-name>/<sample>.npy plus the label
  files in the format the dataset comes in (MER2024/2025: MERTools' raw CSV pair, train
  labels and test candidates; else one labels.csv), for `mer-ray data import`;
* `synthesize_store`: straight to a feature store, for benchmarks and tests;
* the truth file (TRUTH_CSV): the true classes of the samples handed out unlabelled,
  for scoring what a user could not; never read by the importer.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mer_ray.data.dataset import MODALITIES
from mer_ray.data.store import write_store
from mer_ray.data.synth import Synthetic, generate
from mer_ray.errors import InputError

TRUTH_CSV = "truth.csv"  # the true classes of what the store holds unlabelled
# MERTools' raw label files for MER2024/2025 (train labels, test candidates)
TRAIN_CSV, CANDIDATES_CSV = "track1_train_disdim.csv", "track_all_candidates.csv"


def labels_for_store(data: Synthetic) -> np.ndarray:
    """The emotion column a store gets: true classes, -1 on unlabelled and pool splits."""
    emotion = data.emotion.copy()
    for s in data.dataset.splits:
        if not s.labelled:
            emotion[data.split == s.name] = -1
    return emotion


def truth_rows(data: Synthetic) -> list[tuple[str, str, str]]:
    """(name, split, class) of every sample a store holds without its label."""
    return [(n, s, data.dataset.classes[e]) for n, s, e in zip(data.names, data.split,
                                                              data.emotion)
            if not data.dataset.split(s).labelled]


def write_truth(path, data: Synthetic) -> Path | None:
    """TRUTH_CSV-style file: the true classes of the unlabelled and pool samples, for
    scoring what a user could not (docs, tests, benchmarks). None where there are none."""
    rows = truth_rows(data)
    if not rows:
        return None
    _write_csv(Path(path), ["name", "split", "discrete"], rows)
    return Path(path)


def read_truth(path) -> dict[str, str]:
    """name -> true class name, from a truth file."""
    with open(path, newline="") as f:
        return {r["name"]: r["discrete"] for r in csv.DictReader(f)}


def synthesize_store(path, seed: int = 0, scale: float = 1.0, overwrite: bool = True,
                     dataset: str = "mer2023", pool: int | None = None, test_prior=None,
                     truth=None) -> str:
    """generate(...) written straight to a feature store (no .npy tree in between): for
    benchmarks and tests, where the MERTools round trip is not what is measured. `truth`:
    where to write the unlabelled samples' true classes (a file beside the store, never
    in it)."""
    data = generate(seed, scale, dataset, pool=pool, test_prior=test_prior)
    out = write_store(path, data.names, data.split, labels_for_store(data), data.valence,
                      data.features, data.feature_names, dataset=data.dataset,
                      source=f"synthetic {dataset} seed={seed} scale={scale}"
                      + (f" pool={pool}" if pool else "")
                      + (f" test_prior={test_prior}" if test_prior is not None else ""),
                      overwrite=overwrite)
    if truth is not None:
        write_truth(truth, data)
    return out


def _write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_labels(folder: Path, data: Synthetic, dataset: str) -> list[str]:
    """The label files of a synthetic tree, in the format its dataset comes in.
    Returns their names."""
    classes = data.dataset.classes
    rows = list(zip(data.names, data.split, data.emotion, data.valence))
    candidates = [(n,) for n, s, _, _ in rows if s in data.dataset.unlabelled_splits]
    if dataset in ("mer2024", "mer2025"):  # MERTools' raw CSV pair: train labels + candidates
        _write_csv(folder / TRAIN_CSV, ["name", "discrete"],
                   [(n, classes[e]) for n, s, e, _ in rows if s == "train"])
        _write_csv(folder / CANDIDATES_CSV, ["name"], candidates)
        return [TRAIN_CSV, CANDIDATES_CSV]
    written = []
    if data.dataset.pool_splits and candidates:
        # the pool's files and the unlabelled test split's are told apart by this list
        _write_csv(folder / "candidates.csv", ["name"], candidates)
        written.append("candidates.csv")
    labelled = [r for r in rows if data.dataset.split(r[1]).labelled]
    if data.dataset.has_valence:
        _write_csv(folder / "labels.csv", ["name", "split", "discrete", "valence"],
                   [(n, s, classes[e], "" if np.isnan(v) else f"{v:.4f}")
                    for n, s, e, v in labelled])
    else:  # the unlabelled split has feature files only: the importer keeps them
        _write_csv(folder / "labels.csv", ["name", "split", "discrete"],
                   [(n, s, classes[e]) for n, s, e, _ in labelled])
    return ["labels.csv"] + written


def synthesize(out: str | os.PathLike, seed: int = 0, scale: float = 1.0, overwrite=False,
               progress: bool = True, dataset: str = "mer2023", pool: int | None = None,
               test_prior=None) -> Path:
    """Write DIR/features/<feature-name>/<sample>.npy, the dataset's label files (MERTools
    layout) and, where samples are handed out unlabelled, DIR/truth.csv with their true
    classes (for scoring what a user cannot; never read by the importer)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; choose another --out or pass --overwrite")
    data = generate(seed, scale, dataset, pool=pool, test_prior=test_prior)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        bar = tqdm(total=len(data.names) * len(MODALITIES), desc="writing features",
                   unit="file", disable=not progress, file=sys.stderr)
        for m in MODALITIES:
            folder = tmp / "features" / data.feature_names[m]
            folder.mkdir(parents=True)
            for name, vec in zip(data.names, data.features[m]):
                np.save(folder / f"{name}.npy", vec)
                bar.update()
        bar.close()
        write_labels(tmp, data, dataset)
        write_truth(tmp / TRUTH_CSV, data)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
