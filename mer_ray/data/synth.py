"""Synthetic datasets in the real layout: MER2023 (the default), MER2024 and a 4-class toy.

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
  train range [-5, 4.25]; left out where the dataset has none.
* The noisy split (MER2023 test2, MER-NOISE): audio and video pulled toward noise with
  a random per-sample severity, text mildly degraded (ASR of noisy audio).
* Each split has its own class counts (MER2023's test3: the label prior shift).

Datasets (`--dataset`):

* `mer2023`: MER2023's split sizes, class counts, feature names and dims.
* `mer2024`: MER2024's shape: the six classes, no valence, a labelled train split of
  MER2023's 5,030 samples and one test split handed out unlabelled (noisy like test2),
  with a candidates file; written as MERTools' raw CSV pair.
* `toy4`: four classes (calm, joy, anger, fear), no valence, small feature dims, splits
  train / test (labelled) / final (unlabelled): quick end-to-end tests of everything
  that is not MER2023.

Deterministic for (dataset, seed, scale); `mer2023` draws exactly what it always did.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mer_ray.constants import MER2023, MER2023_COUNTS, MER2023_FEATURES, MER_CLASSES
from mer_ray.dataset import MODALITIES, Dataset, Split
from mer_ray.errors import InputError

LATENT = 12  # class-signal subspace
NUISANCE = 8  # nuisance subspace (speaker, channel)
# Per modality: class-signal strength
STRENGTH = {"audio": 1.0, "text": 0.8, "video": 0.6}
NOISE = 0.035
VALENCE_AXIS = 0.7  # valence per unit of the first latent deviation
# MERTools' raw label files for MER2024/2025 (train labels, test candidates)
TRAIN_CSV, CANDIDATES_CSV = "track1_train_disdim.csv", "track_all_candidates.csv"


@dataclass(frozen=True)
class SynthSpec:
    dataset: Dataset
    counts: dict  # split -> class counts at scale 1 (true classes, also of unlabelled splits)
    features: dict  # modality -> (feature name, dim)
    class_valence: tuple  # mean valence per class (drawn even where the dataset has none)
    noisy_split: str | None  # the MER-NOISE-like split


SPECS = {
    "mer2023": SynthSpec(
        MER2023, MER2023_COUNTS, MER2023_FEATURES,
        # neutral, angry, happy, sad, worried, surprise
        (0.0, -2.0, 2.0, -2.2, -1.5, 0.8), "test2"),
    "mer2024": SynthSpec(
        Dataset("MER2024", MER_CLASSES, (Split("train", "train"),
                                         Split("test1", "unlabelled"))),
        {"train": tuple(sum(c) for c in zip(*MER2023_COUNTS.values())),
         "test1": (246, 196, 174, 80, 104, 24)},
        MER2023_FEATURES, (0.0, -2.0, 2.0, -2.2, -1.5, 0.8), "test1"),
    "toy4": SynthSpec(
        Dataset("toy4", ("calm", "joy", "anger", "fear"),
                (Split("train", "train"), Split("test", "test"),
                 Split("final", "unlabelled"))),
        {"train": (300, 260, 220, 180), "test": (80, 70, 60, 50), "final": (60, 60, 50, 50)},
        {"audio": ("toy-audio", 32), "text": ("toy-text", 48), "video": ("toy-video", 24)},
        (0.0, 2.0, -2.0, -1.5), "final"),
}


class Synthetic(NamedTuple):
    names: np.ndarray
    split: np.ndarray
    emotion: np.ndarray  # the true class of every sample, unlabelled splits included
    valence: np.ndarray  # NaN where the dataset has none
    features: dict  # modality -> [N, D]
    dataset: Dataset
    feature_names: dict  # modality -> name


def spec_of(dataset: str) -> SynthSpec:
    if dataset not in SPECS:
        raise InputError(f"--dataset {dataset!r}: choose one of {', '.join(SPECS)}")
    return SPECS[dataset]


def split_counts(scale: float, dataset: str = "mer2023") -> dict[str, list[int]]:
    spec = spec_of(dataset)
    return {s.name: [max(1, round(c * scale)) for c in spec.counts[s.name]]
            for s in spec.dataset.splits}


def _basis(rng, dim: int, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((dim, k)))
    return q.astype(np.float32)  # orthonormal columns


def generate(seed: int = 0, scale: float = 1.0, dataset: str = "mer2023") -> Synthetic:
    """In-memory arrays of a synthetic dataset (module docstring)."""
    if not (0 < scale <= 1.0):
        raise InputError(f"--scale {scale}: expected a fraction in (0, 1]")
    spec = spec_of(dataset)
    splits = [s.name for s in spec.dataset.splits]
    rng = np.random.default_rng(seed)
    counts = split_counts(scale, dataset)
    split, emotion = [], []
    for s in splits:
        for c, n in enumerate(counts[s]):
            split += [s] * n
            emotion += [c] * n
    split = np.array(split)
    emotion = np.array(emotion, dtype=np.int64)
    # Shuffle within each split so names do not give the class away.
    order = np.concatenate([rng.permutation(np.flatnonzero(split == s)) for s in splits])
    split, emotion = split[order], emotion[order]
    n = len(split)
    names = np.array([f"sample_{i:08d}" for i in range(n)])

    # Class means in the latent space: overlapping clusters.
    means = rng.standard_normal((spec.dataset.n_classes, LATENT)) * 0.55
    deviation = rng.standard_normal((n, LATENT))
    z = means[emotion] + deviation
    nuisance = rng.standard_normal((n, NUISANCE)) * 1.5
    # Within a class, valence follows the sample's position along one latent axis, so the
    # features carry it (as real audio/text features carry valence); a little is unseen.
    valence = (np.asarray(spec.class_valence)[emotion] + VALENCE_AXIS * deviation[:, 0]
               + rng.standard_normal(n) * 0.3)
    valence = np.clip(valence, -5.0, 4.25).astype(np.float32)
    for s in spec.dataset.splits:
        if not s.valence:
            valence[split == s.name] = np.nan

    features = {}
    noisy = split == spec.noisy_split
    for m in MODALITIES:
        dim = spec.features[m][1]
        w_sig, w_nui = _basis(rng, dim, LATENT), _basis(rng, dim, NUISANCE)
        # Each modality sees its own noisy view of the shared latent.
        view = STRENGTH[m] * z + rng.standard_normal((n, LATENT)) * (1.2 - STRENGTH[m])
        x = view @ w_sig.T + nuisance @ w_nui.T
        x = x / np.sqrt(LATENT + NUISANCE)
        x += rng.standard_normal((n, dim)).astype(np.float32) * NOISE
        if noisy.any():
            lo, hi = (0.1, 0.4) if m == "text" else (0.5, 0.95)
            severity = rng.uniform(lo, hi, size=(int(noisy.sum()), 1))
            noise = rng.standard_normal((int(noisy.sum()), dim)) * x[~noisy].std()
            x[noisy] = (1 - severity) * x[noisy] + severity * noise
        features[m] = x.astype(np.float32)
    return Synthetic(names, split, emotion, valence, features, spec.dataset,
                     {m: spec.features[m][0] for m in MODALITIES})


def labels_for_store(data: Synthetic) -> np.ndarray:
    """The emotion column a store gets: true classes, -1 on unlabelled splits."""
    emotion = data.emotion.copy()
    for s in data.dataset.unlabelled_splits:
        emotion[data.split == s] = -1
    return emotion


def synthesize_store(path, seed: int = 0, scale: float = 1.0, overwrite: bool = True,
                     dataset: str = "mer2023") -> str:
    """generate(...) written straight to a feature store (no .npy tree in between): for
    benchmarks and tests, where the MERTools round trip is not what is measured."""
    from mer_ray.data.store import write_store

    data = generate(seed, scale, dataset)
    return write_store(path, data.names, data.split, labels_for_store(data), data.valence,
                       data.features, data.feature_names, dataset=data.dataset,
                       source=f"synthetic {dataset} seed={seed} scale={scale}",
                       overwrite=overwrite)


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
    if dataset == "mer2024":  # MERTools' raw CSV pair: train labels + test candidates
        _write_csv(folder / TRAIN_CSV, ["name", "discrete"],
                   [(n, classes[e]) for n, s, e, _ in rows if s == "train"])
        _write_csv(folder / CANDIDATES_CSV, ["name"],
                   [(n,) for n, s, _, _ in rows if s != "train"])
        return [TRAIN_CSV, CANDIDATES_CSV]
    labelled = [r for r in rows if data.dataset.split(r[1]).labelled]
    if data.dataset.has_valence:
        _write_csv(folder / "labels.csv", ["name", "split", "discrete", "valence"],
                   [(n, s, classes[e], "" if np.isnan(v) else f"{v:.4f}")
                    for n, s, e, v in labelled])
    else:  # the unlabelled split has feature files only: the importer keeps them
        _write_csv(folder / "labels.csv", ["name", "split", "discrete"],
                   [(n, s, classes[e]) for n, s, e, _ in labelled])
    return ["labels.csv"]


def synthesize(out: str | os.PathLike, seed: int = 0, scale: float = 1.0, overwrite=False,
               progress: bool = True, dataset: str = "mer2023") -> Path:
    """Write DIR/features/<feature-name>/<sample>.npy and the dataset's label files
    (MERTools layout)."""
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; choose another --out or pass --overwrite")
    data = generate(seed, scale, dataset)
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
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
