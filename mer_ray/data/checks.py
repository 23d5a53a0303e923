"""Checks of a store's rows against its dataset description: samples, splits, labels and
valence agree with the description, and feature values are finite. Both writing a store
and verifying one before training run them (mer_ray.data.store)."""

from __future__ import annotations

import numpy as np

from mer_ray.data.dataset import NO_LABEL, TRAIN, Dataset
from mer_ray.errors import InputError


def count_classes(dataset: Dataset, split, emotion) -> dict:
    """{labelled split: [count per class]}."""
    return {s.name: [int(c) for c in np.bincount(emotion[split == s.name],
                                                   minlength=dataset.n_classes)]
            for s in dataset.splits if s.labelled and (split == s.name).any()}


def check_rows(dataset: Dataset, names, split, emotion, valence, where: str) -> None:
    """Labels, splits and valence agree with the dataset description (InputError naming
    the first offending sample)."""
    if len(names) == 0:
        raise InputError(f"{where}: no samples")
    uniq, counts = np.unique(names, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{where}: sample {uniq[counts > 1][0]} appears more than once")
    known = {s.name for s in dataset.splits}
    bad = ~np.isin(split, list(known))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{where}: sample {names[i]} is in split {split[i]!r}, which the "
                         f"dataset does not have (splits: {', '.join(sorted(known))})")
    if not (split == TRAIN).any():
        raise InputError(f"{where}: no sample in split {TRAIN!r}; it is required")
    for s in dataset.splits:
        rows = np.flatnonzero(split == s.name)
        if len(rows) == 0:
            raise InputError(f"{where}: split {s.name!r} is described but has no samples")
        e, v = emotion[rows], valence[rows]
        if s.labelled:
            bad = (e < 0) | (e >= dataset.n_classes)
            if bad.any():
                i = rows[np.flatnonzero(bad)[0]]
                raise InputError(f"{where}: sample {names[i]} in {s.name} has emotion index "
                                 f"{emotion[i]}, expected 0..{dataset.n_classes - 1} "
                                 f"({', '.join(dataset.classes)})")
        elif (e != NO_LABEL).any():
            i = rows[np.flatnonzero(e != NO_LABEL)[0]]
            raise InputError(f"{where}: sample {names[i]} in unlabelled split {s.name} has a "
                             "label; unlabelled splits carry none")
        if s.valence:
            bad = ~np.isfinite(v)
            if bad.any():
                i = rows[np.flatnonzero(bad)[0]]
                raise InputError(f"{where}: sample {names[i]} in {s.name} has no finite "
                                 f"valence ({valence[i]}), but the split has valence")
        elif not np.isnan(v).all():
            i = rows[np.flatnonzero(~np.isnan(v))[0]]
            raise InputError(f"{where}: sample {names[i]} in {s.name} has a valence, but the "
                             "dataset says the split has none")


def check_finite(x: np.ndarray, names, what: str) -> None:
    finite = np.isfinite(x)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise InputError(f"{what}: sample {names[rows[0]]} has "
                         f"{int((~finite[rows[0]]).sum())} NaN or Inf value(s) "
                         f"({len(rows)} sample(s) affected); re-extract those features")
