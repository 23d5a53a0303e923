"""Import MERTools features and labels into a feature store.

MERTools (the MER2023 baseline) extracts one utterance-level feature file per sample and
feature extractor (FEATURES/<feature-name>/<sample>.npy; read by mer_ray.data.features),
and hands out labels in a few forms (read by mer_ray.data.labels, whose docstring lists
them and how classes and valence are found).

Samples with features in every modality but no label are kept, as an unlabelled split
(`unlabelled_split`, default "unlabelled"; the candidates' split where a candidates file
is given, which then decides which of them are kept), and counted. Every bad input
raises :class:`~mer_ray.errors.InputError` naming the file, sample or field, and
nothing is written: the store is written only after everything validated.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mer_ray.data.constants import MER2023, MER2023_FEATURES, PLACEHOLDER_EMOTION
from mer_ray.data.dataset import NO_LABEL, TRAIN, Dataset, Split
from mer_ray.data.features import feature_folders, load_feature
from mer_ray.data.labels import (
    LabelRow,
    candidate_names,
    choose_classes,
    class_index,
    is_no_valence,
    read_label_rows,
    row_valence,
)
from mer_ray.data.store import check_output_path, write_store
from mer_ray.errors import InputError

UNLABELLED = "unlabelled"


@dataclass
class _Samples:
    """The store's columns as the import builds them, in store order: the label file's
    rows, then the samples found among the feature files without a label."""

    names: list
    split: list
    emotion: list  # class index; NO_LABEL on unlabelled splits
    valence: list  # NaN where the split has none
    listed: set  # the names with a row in the label file

    def add_unlabelled(self, split: str, names: list) -> None:
        self.names += names
        self.split += [split] * len(names)
        self.emotion += [NO_LABEL] * len(names)
        self.valence += [np.nan] * len(names)


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
    wanted = _wanted_features(feat_root, audio, text, video)
    rows = read_label_rows(labels, trust_pickle, candidates=candidates is not None)
    classes = choose_classes(rows, classes, log)
    splits = _label_splits(rows, labels, unlabelled, log)
    samples = _labelled_samples(rows, classes, splits)
    first = feat_root / next(iter(wanted.values()))[0]
    _add_unlabelled(samples, splits, first, candidates, unlabelled_split, pool_split,
                    keep_unlabelled, log)
    _check_feature_files(feat_root, wanted, samples)
    dataset = Dataset(dataset_name or _dataset_name(classes, splits), classes, tuple(splits))
    _check_train_classes(classes, samples)
    matrices = _load_features(feat_root, wanted, samples.names, progress)
    return write_store(out, samples.names, samples.split, samples.emotion,
                       np.array(samples.valence, dtype=np.float32), features=matrices,
                       dataset=dataset, source=f"mertools:{features}", overwrite=overwrite)


def _wanted_features(feat_root: Path, audio, text, video) -> dict[str, list[str]]:
    """modality -> feature folder names, each checked to be a folder of feat_root."""
    if not feat_root.is_dir():
        raise InputError(f"feature folder {feat_root} does not exist or is not a folder")
    wanted = feature_folders(audio, text, video)
    for m, names in wanted.items():
        for feat in names:
            if not (feat_root / feat).is_dir():
                have = sorted(p.name for p in feat_root.iterdir() if p.is_dir())
                raise InputError(
                    f"{feat_root / feat}: {m} feature folder {feat} not found in {feat_root} "
                    f"(found: {', '.join(have) or 'none'}); pass --{m} with the right name")
    return wanted


def _label_splits(rows: list[LabelRow], labels, unlabelled, log) -> list[Split]:
    """The splits of the label file, train first: labelled unless named in `unlabelled`
    or handed out unlabelled (every label the placeholder, no valence: MER2024+)."""
    order = list(dict.fromkeys(r.split for r in rows))
    order = [TRAIN] + [s for s in order if s != TRAIN]
    unknown = sorted(set(unlabelled) - set(order))
    if unknown:
        raise InputError(f"{', '.join(unknown)}: no such split in the labels "
                         f"(splits: {', '.join(order)})", param="unlabelled")
    if TRAIN in unlabelled:
        raise InputError("train: the train split must be labelled", param="unlabelled")

    by_split = {s: [r for r in rows if r.split == s] for s in order}
    placeholder = [s for s in order if s != TRAIN and s not in unlabelled and all(
        r.emotion.lower() == PLACEHOLDER_EMOTION and is_no_valence(r.valence)
        for r in by_split[s]) and Path(labels).suffix.lower() == ".npz"]
    for s in placeholder:
        log(f"split {s}: every label is the placeholder {PLACEHOLDER_EMOTION!r} with no "
            "valence, so it is taken as handed out unlabelled (predicted, never scored)")
    unlabelled = set(unlabelled) | set(placeholder)

    splits = []
    for s in order:
        labelled = s not in unlabelled
        has_val = labelled and not all(is_no_valence(r.valence) for r in by_split[s])
        splits.append(Split(s, TRAIN if s == TRAIN else ("test" if labelled else "unlabelled"),
                            has_val))
    return splits


def _labelled_samples(rows: list[LabelRow], classes, splits: list[Split]) -> _Samples:
    """The columns of the label file's rows, in its order."""
    described = {s.name: s for s in splits}
    samples = _Samples([], [], [], [], set())
    for r in rows:
        s = described[r.split]
        samples.names.append(r.name)
        samples.split.append(r.split)
        samples.emotion.append(class_index(classes, r) if s.labelled else NO_LABEL)
        samples.valence.append(row_valence(r) if s.valence else np.nan)
    samples.listed = set(samples.names)
    return samples


def _add_unlabelled(samples: _Samples, splits: list[Split], first: Path, candidates,
                    unlabelled_split, pool_split, keep_unlabelled, log) -> None:
    """Feature files with no label row (those in `first`, the first feature folder): an
    unlabelled split (or the candidates'), and with pool_split the rest as a pool;
    appended to `samples` and `splits`."""
    cand = candidate_names(candidates) if candidates else None
    order = [s.name for s in splits]
    for param, name in (("unlabelled_split", unlabelled_split), ("pool_split", pool_split)):
        if name is not None and name in order:
            raise InputError(f"{name}: the labels already have a split of that name; "
                             "choose another name", param=param)
    if pool_split is not None and pool_split == unlabelled_split and cand is None:
        raise InputError(f"{pool_split}: the same name as --unlabelled-split; "
                         "choose another name", param="pool_split")
    if cand is None and not keep_unlabelled and pool_split is None:
        extra = sum(1 for e in os.scandir(first)
                    if e.name.endswith(".npy") and e.name[:-4] not in samples.listed)
        if extra:
            log(f"note: {extra} feature file(s) in {first} have no label and were left out "
                "(--drop-unlabelled)")
        return
    extra, pool = _unlabelled_names(first, samples.listed, cand, candidates, pool_split, log)
    for split_name, role, names, what in (
            (unlabelled_split, "unlabelled", extra, "(predicted, never scored)"),
            (pool_split, "pool", pool, "(for `mer-ray selftrain`: never predicted or "
             "scored)")):
        if not names:
            continue
        splits.append(Split(split_name, role, False))
        samples.add_unlabelled(split_name, names)
        log(f"{len(names)} sample(s) with features and no label: kept as {role} split "
            f"{split_name!r} {what}")


def _unlabelled_names(first: Path, listed: set, cand, candidates, pool_split,
                      log) -> tuple[list, list]:
    """(the unlabelled split's names, the pool's) among the files of `first` with no
    label row: the candidates where given (the rest the pool, with pool_split), else
    every such file (the pool's, with pool_split)."""
    on_disk = sorted(e.name[:-4] for e in os.scandir(first) if e.name.endswith(".npy"))
    if cand is None:
        if pool_split is not None:
            return [], [n for n in on_disk if n not in listed]
        return [n for n in on_disk if n not in listed], []
    clash = [n for n in cand if n in listed]
    if clash:
        raise InputError(f"{candidates}: candidate {clash[0]} also has a label "
                         f"({len(clash)} such); candidates are the unlabelled test set")
    rest = sorted(set(on_disk) - listed - set(cand))
    if rest and pool_split is not None:
        return cand, rest
    if rest:
        log(f"note: {len(rest)} feature file(s) in {first} are neither labelled nor "
            "candidates; left out (--pool-split NAME keeps them as a pool for "
            "`mer-ray selftrain`)")
    return cand, []


def _check_feature_files(feat_root: Path, wanted: dict, samples: _Samples) -> None:
    """Every sample has a file in every feature: checked before the slow loads."""
    for m, feats in wanted.items():
        for feat in feats:
            d = feat_root / feat
            absent = [n for n in samples.names if not (d / f"{n}.npy").is_file()]
            if absent:
                kind = "labelled " if absent[0] in samples.listed else ""
                raise InputError(f"{d / (absent[0] + '.npy')}: missing {m} feature file for "
                                 f"{kind}sample {absent[0]} ({len(absent)} sample(s) lack "
                                 f"{feat})")


def _check_train_classes(classes, samples: _Samples) -> None:
    """Every class has a training sample."""
    train = [e for e, s in zip(samples.emotion, samples.split) if s == TRAIN]
    for c, n in zip(classes, np.bincount(train, minlength=len(classes))):
        if n == 0:
            raise InputError(f"class {c!r} has no training sample; a model cannot learn it "
                             "(drop it from --classes or add labelled samples)")


def _load_features(feat_root: Path, wanted: dict, names: list, progress: bool) -> dict:
    """modality -> feature name -> [N, D] for `names`, every file checked."""
    total = len(names) * sum(len(f) for f in wanted.values())
    matrices = {}
    with tqdm(total=total, desc="import", unit="file", file=sys.stderr,
              disable=not progress) as bar:
        for m, feats in wanted.items():
            matrices[m] = {feat: load_feature(feat_root / feat, feat, names, bar) for feat in feats}
    return matrices


def _dataset_name(classes, splits) -> str:
    if tuple(classes) == MER2023.classes and [s.name for s in splits] == [
            s.name for s in MER2023.splits][: len(splits)] and splits[0].valence:
        return "MER2023"
    return "imported"
