"""Reading MERTools feature files, for the importer and for prediction on a feature folder.

MERTools (the MER2023 baseline) extracts one utterance-level feature file per sample and
feature extractor::

    FEATURES/chinese-hubert-large-UTT/sample_00000001.npy
    FEATURES/Baichuan-13B-Base-UTT/sample_00000001.npy
    FEATURES/clip-vit-large-patch14-UTT/sample_00000001.npy

Each file holds a 1-D vector; a 2-D [T, D] array is averaged over T, as MERTools does.
A modality may name several feature folders (`--audio A,B`): all are stored, and a
recipe picks one (`--set audio_feature=B`). A modality given as `none` is left out.
Every bad file raises :class:`~mer_ray.errors.InputError` naming the file and sample.
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np

from mer_ray.data.dataset import MODALITIES
from mer_ray.errors import InputError


def feature_folders(audio, text, video) -> dict[str, list[str]]:
    """modality -> the feature folder names given for it (`--audio A,B`); a modality
    given as 'none' is left out."""
    out = {}
    for m, value in zip(MODALITIES, (audio, text, video)):
        names = [] if value is None else [v.strip() for v in str(value).split(",") if v.strip()]
        if names == ["none"]:
            continue
        if not names:
            raise InputError(": give a feature folder name (or 'none' to leave the "
                             "modality out)", param=m)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f": feature {', '.join(dup)} named twice", param=m)
        out[m] = names
    if not out:
        raise InputError("every modality is 'none'; at least one is needed")
    return out


def load_vector(path: Path, name: str, feature: str) -> np.ndarray:
    """One sample's feature file as a float32 vector (a 2-D array averaged over its
    frames), checked: readable, real numbers, not empty, finite."""
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
        vecs.append(load_vector(folder / f"{name}.npy", name, feature))
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
