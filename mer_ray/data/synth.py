"""Synthetic MER2023: the real layout, split sizes, class counts, feature names and dims.

The generative model (documented in docs/synthetic-data.md):

* Each sample has a class y, a continuous "arousal-like" latent and a nuisance
  latent (speaker, recording conditions). Class evidence lives in a K=12-dimensional
  latent space: class means mu_y plus per-sample variation, so classes overlap.
* Each modality m embeds its latent vector through its own random orthonormal basis
  W_m [D_m, K] (plus a nuisance basis), then adds small isotropic noise over every
  dimension. Signal thus lives in a structured low-dimensional subspace, as in
  pretrained embeddings, not spread over every coordinate.
* Signal strength differs by modality: audio strongest, then text, then video.
* Valence = class mean valence + 0.7 x the sample's deviation along the first latent
  axis (visible in every modality) + small unseen noise (sd 0.3), clipped to MER2023's
  train range [-5, 4.25].
* test2 (MER-NOISE): audio and video pulled toward noise with a random per-sample
  severity, text mildly degraded (ASR of noisy audio).
* test3 uses its own class counts (the label prior shift) and has no valence.

Deterministic for a seed.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from mer_ray.constants import CLASS_COUNTS, CLASSES, DEFAULT_FEATURES, MODALITIES, SPLITS
from mer_ray.errors import InputError

LATENT = 12  # class-signal subspace
NUISANCE = 8  # nuisance subspace (speaker, channel)
# Per modality: (class-signal strength, isotropic noise level)
STRENGTH = {"audio": 1.0, "text": 0.8, "video": 0.6}
NOISE = 0.035
# Class mean valence, in CLASSES order (neutral, angry, happy, sad, worried, surprise).
CLASS_VALENCE = np.array([0.0, -2.0, 2.0, -2.2, -1.5, 0.8])
VALENCE_AXIS = 0.7  # valence per unit of the first latent deviation


def split_counts(scale: float) -> dict[str, list[int]]:
    return {s: [max(1, round(c * scale)) for c in CLASS_COUNTS[s]] for s in SPLITS}


def _basis(rng, dim: int, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((dim, k)))
    return q.astype(np.float32)  # orthonormal columns


def generate(seed: int = 0, scale: float = 1.0):
    """In-memory arrays: names, split, emotion, valence, features {modality: [N, D]}."""
    if not (0 < scale <= 1.0):
        raise InputError(f"--scale {scale}: expected a fraction in (0, 1]")
    rng = np.random.default_rng(seed)
    counts = split_counts(scale)
    split, emotion = [], []
    for s in SPLITS:
        for c, n in enumerate(counts[s]):
            split += [s] * n
            emotion += [c] * n
    split = np.array(split)
    emotion = np.array(emotion, dtype=np.int64)
    # Shuffle within each split so names do not give the class away.
    order = np.concatenate([rng.permutation(np.flatnonzero(split == s)) for s in SPLITS])
    split, emotion = split[order], emotion[order]
    n = len(split)
    names = np.array([f"sample_{i:08d}" for i in range(n)])

    # Class means in the latent space: overlapping clusters.
    means = rng.standard_normal((len(CLASSES), LATENT)) * 0.55
    deviation = rng.standard_normal((n, LATENT))
    z = means[emotion] + deviation
    nuisance = rng.standard_normal((n, NUISANCE)) * 1.5
    # Within a class, valence follows the sample's position along one latent axis, so the
    # features carry it (as real audio/text features carry valence); a little is unseen.
    valence = CLASS_VALENCE[emotion] + VALENCE_AXIS * deviation[:, 0] + rng.standard_normal(n) * 0.3
    valence = np.clip(valence, -5.0, 4.25).astype(np.float32)
    valence[split == "test3"] = np.nan

    features = {}
    test2 = split == "test2"
    for m in MODALITIES:
        dim = DEFAULT_FEATURES[m][1]
        w_sig, w_nui = _basis(rng, dim, LATENT), _basis(rng, dim, NUISANCE)
        # Each modality sees its own noisy view of the shared latent.
        view = STRENGTH[m] * z + rng.standard_normal((n, LATENT)) * (1.2 - STRENGTH[m])
        x = view @ w_sig.T + nuisance @ w_nui.T
        x = x / np.sqrt(LATENT + NUISANCE)
        x += rng.standard_normal((n, dim)).astype(np.float32) * NOISE
        if test2.any():
            lo, hi = (0.1, 0.4) if m == "text" else (0.5, 0.95)
            severity = rng.uniform(lo, hi, size=(int(test2.sum()), 1))
            noise = rng.standard_normal((int(test2.sum()), dim)) * x[~test2].std()
            x[test2] = (1 - severity) * x[test2] + severity * noise
        features[m] = x.astype(np.float32)
    return names, split, emotion, valence, features


def synthesize_store(path, seed: int = 0, scale: float = 1.0, overwrite: bool = True) -> Path:
    """generate(seed, scale) written straight to a feature store (no .npy tree in between):
    for benchmarks and tests, where the MERTools round trip is not what is measured."""
    from mer_ray.data.store import write_store

    names, split, emotion, valence, features = generate(seed, scale)
    return write_store(path, names, split, emotion, valence, features,
                       {m: DEFAULT_FEATURES[m][0] for m in MODALITIES},
                       source=f"synthetic seed={seed} scale={scale}", overwrite=overwrite)


def synthesize(out: str | os.PathLike, seed: int = 0, scale: float = 1.0, overwrite=False,
               progress: bool = True) -> Path:
    """Write DIR/features/<feature-name>/<sample>.npy and DIR/labels.csv (MERTools layout)."""
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; choose another --out or pass --overwrite")
    names, split, emotion, valence, features = generate(seed, scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        bar = tqdm(total=len(names) * len(MODALITIES), desc="writing features", unit="file",
                   disable=not progress, file=sys.stderr)
        for m in MODALITIES:
            folder = tmp / "features" / DEFAULT_FEATURES[m][0]
            folder.mkdir(parents=True)
            for name, vec in zip(names, features[m]):
                np.save(folder / f"{name}.npy", vec)
                bar.update()
        bar.close()
        with open(tmp / "labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "split", "discrete", "valence"])
            for name, s, e, v in zip(names, split, emotion, valence):
                w.writerow([name, s, CLASSES[e], "" if np.isnan(v) else f"{v:.4f}"])
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
