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
This module draws the arrays (`generate`); mer_ray.data.synth_files writes them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mer_ray.data.constants import MER2023, MER2023_COUNTS, MER2023_FEATURES, MER_CLASSES
from mer_ray.data.dataset import MODALITIES, Dataset, Split
from mer_ray.errors import InputError

LATENT = 12  # class-signal subspace
NUISANCE = 8  # nuisance subspace (speaker, channel)
# Per modality: class-signal strength
STRENGTH = {"audio": 1.0, "text": 0.8, "video": 0.6}
NOISE = 0.035
POOL = "pool"  # the split of --pool's samples (role pool)
VALENCE_AXIS = 0.7  # valence per unit of the first latent deviation


@dataclass(frozen=True)
class SynthSpec:
    dataset: Dataset
    counts: dict  # split -> class counts at scale 1 (true classes, also of unlabelled splits)
    features: dict  # modality -> (feature name, dim)
    class_valence: tuple  # mean valence per class (drawn even where the dataset has none)
    noisy_split: str | None  # the MER-NOISE-like split
    # newer datasets: the task (class means, feature bases) comes from a stream of its
    # own, so a seed is the same task at any --scale (the first three keep their draws)
    task_first: bool = False
    pool: int = 0  # unlabelled pool samples at scale 1 (a split `pool`)


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
    # MER2025 / MER2026 Track 1's shape: a few thousand labelled samples, 20,000
    # candidates handed out unlabelled, and a larger unlabelled pool; no valence.
    "mer2025": SynthSpec(
        Dataset("MER2025", MER_CLASSES, (Split("train", "train"),
                                         Split("test1", "unlabelled"))),
        {"train": tuple(sum(c) for c in zip(*MER2023_COUNTS.values())),
         "test1": (4962, 4803, 4127, 2903, 2449, 756)},  # train's prior (--test-prior)
        MER2023_FEATURES, (0.0, -2.0, 2.0, -2.2, -1.5, 0.8), None, task_first=True,
        pool=20_000),
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
        raise InputError(f"{dataset!r}: choose one of {', '.join(SPECS)}", param="dataset")
    return SPECS[dataset]


def split_counts(scale: float, dataset: str = "mer2023") -> dict[str, list[int]]:
    spec = spec_of(dataset)
    return {s.name: [max(1, round(c * scale)) for c in spec.counts[s.name]]
            for s in spec.dataset.splits}


def _basis(rng, dim: int, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((dim, k)))
    return q.astype(np.float32)  # orthonormal columns


class Task(NamedTuple):
    """What a dataset's samples are drawn from: class means in the latent space, each
    modality's signal and nuisance bases, and each modality's feature scale (the unit of
    the noisy split's noise)."""

    means: np.ndarray  # [C, LATENT]
    bases: dict  # modality -> (w_sig [D, LATENT], w_nui [D, NUISANCE])
    scale: dict  # modality -> std of the clean features


def _task(rng, spec: SynthSpec) -> Task:
    means = rng.standard_normal((spec.dataset.n_classes, LATENT)) * 0.55
    bases = {m: (_basis(rng, spec.features[m][1], LATENT),
                 _basis(rng, spec.features[m][1], NUISANCE)) for m in MODALITIES}
    return Task(means, bases, {})


def _draw(rng, spec: SynthSpec, emotion, noisy, task: Task | None = None):
    """Features and valence of samples of the given classes (noisy where `noisy`), from
    `task`, or from a task drawn here, in the stream order the first generator used (so
    MER2023, MER2024 and toy4 stay what they always were). Returns (features, valence,
    task)."""
    n = len(emotion)
    means = task.means if task is not None else \
        rng.standard_normal((spec.dataset.n_classes, LATENT)) * 0.55
    deviation = rng.standard_normal((n, LATENT))
    z = means[emotion] + deviation
    nuisance = rng.standard_normal((n, NUISANCE)) * 1.5
    # Within a class, valence follows the sample's position along one latent axis, so the
    # features carry it (as real audio/text features carry valence); a little is unseen.
    valence = (np.asarray(spec.class_valence)[emotion] + VALENCE_AXIS * deviation[:, 0]
               + rng.standard_normal(n) * 0.3)
    valence = np.clip(valence, -5.0, 4.25).astype(np.float32)
    features, bases, scale = {}, {}, {}
    for m in MODALITIES:
        dim = spec.features[m][1]
        if task is not None:
            w_sig, w_nui = task.bases[m]
        else:
            w_sig, w_nui = _basis(rng, dim, LATENT), _basis(rng, dim, NUISANCE)
        bases[m] = (w_sig, w_nui)
        # Each modality sees its own noisy view of the shared latent.
        view = STRENGTH[m] * z + rng.standard_normal((n, LATENT)) * (1.2 - STRENGTH[m])
        x = view @ w_sig.T + nuisance @ w_nui.T
        x = x / np.sqrt(LATENT + NUISANCE)
        x += rng.standard_normal((n, dim)).astype(np.float32) * NOISE
        scale[m] = task.scale[m] if task is not None and m in task.scale else x[~noisy].std()
        if noisy.any():
            lo, hi = (0.1, 0.4) if m == "text" else (0.5, 0.95)
            severity = rng.uniform(lo, hi, size=(int(noisy.sum()), 1))
            noise = rng.standard_normal((int(noisy.sum()), dim)) * scale[m]
            x[noisy] = (1 - severity) * x[noisy] + severity * noise
        features[m] = x.astype(np.float32)
    return features, valence, Task(means, bases, scale)


def _shuffled_labels(rng, counts: dict, splits) -> tuple[np.ndarray, np.ndarray]:
    """(split, class) per sample, shuffled within each split so that names do not give
    the class away."""
    split, emotion = [], []
    for s in splits:
        for c, n in enumerate(counts[s]):
            split += [s] * n
            emotion += [c] * n
    split = np.array(split, dtype=object).astype(str)
    emotion = np.array(emotion, dtype=np.int64)
    order = np.concatenate([rng.permutation(np.flatnonzero(split == s)) for s in splits])
    return split[order], emotion[order]


def prior_counts(prior, total: int) -> list[int]:
    """`total` samples split by `prior` (largest remainder, so they add up exactly)."""
    p = np.asarray(prior, np.float64)
    exact = p / p.sum() * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def check_prior(text_or_values, classes, flag: str = "--test-prior") -> list[float]:
    """A class prior from 'p1,p2,...' (one per class, non-negative, summing to about 1)."""
    if isinstance(text_or_values, str):
        try:
            values = [float(v) for v in text_or_values.split(",")]
        except ValueError:
            raise InputError(f"{flag} {text_or_values!r}: expected {len(classes)} numbers "
                             f"separated by commas, one per class ({', '.join(classes)})") \
                from None
    else:
        values = [float(v) for v in text_or_values]
    if len(values) != len(classes):
        raise InputError(f"{flag}: {len(values)} value(s) for {len(classes)} classes "
                         f"({', '.join(classes)})")
    if any(not np.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1) > 1e-3:
        raise InputError(f"{flag} {values}: expected non-negative class shares summing to 1")
    return values


def planned_counts(scale: float = 1.0, dataset: str = "mer2023", pool: int | None = None,
                   test_prior=None) -> tuple[dict, dict]:
    """(class counts of the dataset's own splits, class counts of the splits drawn from
    the extra stream: a --test-prior split's replacement and the pool). Every check of
    the options happens here."""
    if not (0 < scale <= 1.0):
        raise InputError(f"{scale}: expected a fraction in (0, 1]", param="scale")
    spec = spec_of(dataset)
    if pool is None:
        pool = round(spec.pool * scale)
    if isinstance(pool, bool) or not isinstance(pool, int) or not 0 <= pool <= 10_000_000:
        raise InputError(f"{pool!r}: expected a number of samples in [0, 10000000]", param="pool")
    counts = split_counts(scale, dataset)
    extra_counts = {}
    if test_prior is not None:
        target = spec.dataset.unlabelled_splits
        if len(target) != 1:
            raise InputError(f": {dataset} has no unlabelled test split "
                             "(choose --dataset mer2024, mer2025 or toy4)", param="test_prior")
        prior = check_prior(test_prior, spec.dataset.classes)
        extra_counts[target[0]] = prior_counts(prior, sum(counts[target[0]]))
    if pool:
        extra_counts[POOL] = prior_counts(counts["train"], pool)
    return counts, extra_counts


def generate(seed: int = 0, scale: float = 1.0, dataset: str = "mer2023",
             pool: int | None = None, test_prior=None) -> Synthetic:
    """In-memory arrays of a synthetic dataset (module docstring). `pool`: that many
    more unlabelled samples (default: the dataset's own pool at this scale), drawn with
    the train split's class prior from the same task, as a split `pool` (role pool);
    `test_prior`: the class prior of the dataset's unlabelled test split (its size
    stays). Neither changes the other samples: both are drawn from a stream of their own
    after the dataset as it would be without them."""
    spec = spec_of(dataset)
    counts, extra_counts = planned_counts(scale, dataset, pool, test_prior)
    pool = sum(extra_counts.get(POOL, ()))
    unlabelled = next(iter(spec.dataset.unlabelled_splits), None)
    splits = [s.name for s in spec.dataset.splits]
    rng = np.random.default_rng(seed)
    # the task from a stream of its own (newer datasets): the same task at any scale
    task = _task(np.random.default_rng([seed, 1]), spec) if spec.task_first else None
    split, emotion = _shuffled_labels(rng, counts, splits)
    features, valence, task = _draw(rng, spec, emotion, split == spec.noisy_split, task)
    keep = ~np.isin(split, list(extra_counts))
    split, emotion, valence = split[keep], emotion[keep], valence[keep]
    features = {m: x[keep] for m, x in features.items()}
    # a replaced test split and the pool: each from a stream of its own, the same task
    for stream, name in ((2, unlabelled), (3, POOL)):
        if name not in extra_counts:
            continue
        extra_rng = np.random.default_rng([seed, stream])
        x_split, x_emotion = _shuffled_labels(extra_rng, {name: extra_counts[name]}, [name])
        x_features, x_valence, _ = _draw(extra_rng, spec, x_emotion,
                                         x_split == spec.noisy_split, task)
        split = np.concatenate([split, x_split])
        emotion = np.concatenate([emotion, x_emotion])
        valence = np.concatenate([valence, x_valence])
        features = {m: np.concatenate([features[m], x_features[m]]) for m in MODALITIES}
    described = spec.dataset
    if pool:
        described = Dataset(described.name, described.classes,
                            described.splits + (Split(POOL, "pool"),))
    order = np.concatenate([np.flatnonzero(split == s.name) for s in described.splits])
    split, emotion, valence = split[order], emotion[order], valence[order]
    features = {m: x[order] for m, x in features.items()}
    for s in described.splits:
        if not s.valence:
            valence[split == s.name] = np.nan
    names = np.array([f"sample_{i:08d}" for i in range(len(split))])
    return Synthetic(names, split, emotion, valence, features, described,
                     {m: spec.features[m][0] for m in MODALITIES})
