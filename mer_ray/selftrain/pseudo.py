"""Pseudo-labels for self-training: round r-1's members label the pool, a selection of
those labels joins round r's training rows.

Fold-matched teachers (the default, `pseudo_teachers=fold`): a student of fold f learns
only from pseudo-labels made by round r-1's members of fold f (every seed of them),
which never saw fold f's held-out rows, nor did their own teachers (by induction back
to round 0). Labels from the whole ensemble would carry those rows' labels into the
student through the pool, and its out-of-fold score would rise without the model
improving (`pseudo_teachers=all` does exactly that, for measuring it).

Selection, per teacher fold, from the teachers' mean probability p(c | x):
- the class is the argmax; with `pseudo_agreement` a > 0 at least a share a of the
  teachers must have that class as their own argmax;
- a sample is kept where its class's probability reaches `pseudo_threshold`, or (with
  `pseudo_top_k` k) the k most confident samples of each class are kept;
- `pseudo_cap` c: no class fills more than c x its prior share of what is kept (the most
  confident of each class are kept, as many as that allows), so a majority class the
  teachers are sure of cannot flood the students; the prior is train's, or with
  `pseudo_prior=em` the pool's own, estimated by EM from the teachers' probabilities
  (ensembles.prior).

Each (setting, round) has one table, written once and read by every student of it:

    RUN/rounds/<r>/pseudo_labels-<preset>-w<warmup>-<digest>.parquet

one row per (teacher fold, selected sample): name, split, teacher_fold (-1: every
fold, with `pseudo_teachers=all`), class, probabilities (the teachers' mean), confidence,
agreement, round. Rows reference the store's samples by name: features are never
copied. The schema metadata (`mer_ray.selftrain.pseudo`) holds the student config, the store's
content hash, the teacher member ids per fold, how many candidates each fold had, the
counts selected per class and the priors the caps used.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

from ensembles.groups import trial_summary
from ensembles.prior import class_prior, estimate_prior
from ensembles.strategies import softmax
from mer_ray.errors import InputError
from mer_ray.predict import Predictor
from mer_ray.runs.pseudo_labels import (
    ALL_FOLDS,
    FORMAT,
    RoundLabels,
    labels_file,
    labels_meta,
    write_labels,
)
from mer_ray.runs.run import read_config_members
from mer_ray.storage import exists
from mer_ray.train.presets import PSEUDO_FIELDS, TrainConfig

LABEL_CHUNK = 8192  # pool rows labelled at a time: memory stays bounded by the chunk


def teacher_config(config):
    """The config of the round before: round 0 is the plain recipe (every self-training
    field at its default, so an existing run's members are the teachers)."""
    if config.pseudo_round <= 0:
        raise InputError("round 0 has no teachers")
    if config.pseudo_round == 1:
        defaults = TrainConfig()
        return config.replace(**{f: getattr(defaults, f) for f in PSEUDO_FIELDS})
    return config.replace(pseudo_round=config.pseudo_round - 1)


def candidate_splits(dataset, config) -> list[str]:
    """The splits a round's teachers label (pool; with pool+test the unlabelled test
    splits too). None at all is an InputError listing the splits the store has."""
    splits = list(dataset.pool_splits)
    if config.pseudo_source == "pool+test":
        splits += list(dataset.unlabelled_splits)
    if not splits:
        have = ", ".join(f"{s.name} ({s.role})" for s in dataset.splits)
        wanted = ("a pool split" if config.pseudo_source == "pool"
                  else "a pool or unlabelled split")
        raise InputError(f"self-training needs {wanted} to label; the store has {have}. "
                         "Import the unlabelled samples as a pool (`mer-ray data import "
                         "--pool-split pool`, or `data synth --pool N`)"
                         + (", or label the unlabelled test split with --transductive"
                            if config.pseudo_source == "pool" and dataset.unlabelled_splits
                            else ""))
    return splits


# ---------------------------------------------------------------- the teachers
@dataclass
class FoldVotes:
    """What one teacher fold says about the candidates."""

    teachers: list[str]  # member ids
    probabilities: np.ndarray  # [n, C] mean of the teachers' softmax
    agreement: np.ndarray  # [n] share of teachers whose argmax is the mean's argmax


def teacher_votes(store, teachers_by_fold: dict, rows: np.ndarray, device: str = "cpu",
                  chunk: int = LABEL_CHUNK, progress: bool = False) -> dict[int, FoldVotes]:
    """Every teacher's probabilities on store rows `rows`, averaged per teacher fold.
    The rows go through in chunks of `chunk` (their features gathered one chunk at a
    time), so memory is bounded by the chunk and the per-fold sums, not the pool."""
    from tqdm import tqdm

    members = [m for ms in teachers_by_fold.values() for m in ms]
    predictor = Predictor.from_members(members, device=device)
    n, n_classes = len(rows), len(members[0].classes)
    sums = {f: np.zeros((n, n_classes)) for f in teachers_by_fold}
    votes = {f: np.zeros((n, n_classes), np.int32) for f in teachers_by_fold}
    fold_of = {m.member_id: f for f, ms in teachers_by_fold.items() for m in ms}
    with tqdm(total=n, desc="labelling", unit="sample", file=sys.stderr,
              disable=not progress) as bar:
        for start in range(0, n, chunk):
            part = rows[start : start + chunk]
            arrays = {key: np.asarray(store.features[key[0]][key[1]][part], np.float32)
                      for key in predictor.features}
            outs = predictor.member_outputs(arrays)
            for mid, (logits, _) in outs.items():
                f = fold_of[mid]
                p = softmax(logits)
                sums[f][start : start + len(part)] += p
                votes[f][np.arange(start, start + len(part)), p.argmax(1)] += 1
            bar.update(len(part))
    out = {}
    for f, ms in teachers_by_fold.items():
        mean = sums[f] / len(ms)
        agreement = votes[f][np.arange(n), mean.argmax(1)] / len(ms)
        out[f] = FoldVotes([m.member_id for m in ms], mean, agreement)
    return out


# ---------------------------------------------------------------- the selection
def select(votes: FoldVotes, config, prior: np.ndarray) -> np.ndarray:
    """Indices (into the candidates) of the samples this fold's students learn from,
    sorted; module docstring for the rule."""
    p = votes.probabilities
    cls, conf = p.argmax(1), p.max(1)
    ok = votes.agreement >= config.pseudo_agreement if config.pseudo_agreement > 0 \
        else np.ones(len(p), bool)
    # most confident first; ties by candidate order (deterministic)
    ranked = np.lexsort((np.arange(len(p)), -conf))
    if config.pseudo_top_k is not None:
        chosen = np.concatenate([ranked[ok[ranked] & (cls[ranked] == c)][: config.pseudo_top_k]
                                 for c in range(p.shape[1])])
    else:
        chosen = ranked[ok[ranked] & (conf[ranked] >= config.pseudo_threshold)]
    if config.pseudo_cap is not None and len(chosen):
        quota = capped_counts(np.bincount(cls[chosen], minlength=p.shape[1]),
                              config.pseudo_cap * np.asarray(prior, np.float64))
        chosen = np.concatenate([
            chosen[cls[chosen] == c][np.argsort(-conf[chosen[cls[chosen] == c]],
                                                kind="stable")][: quota[c]]
            for c in range(p.shape[1])])
    return np.sort(chosen)


def capped_counts(available: np.ndarray, max_share: np.ndarray) -> np.ndarray:
    """Per class, how many of the `available` selected samples to keep so that no class
    is more than `max_share` of what is kept, keeping as many as possible: the largest N
    with sum_c min(available_c, floor(max_share_c N)) >= N, then those counts. A teacher
    sure of one class only gets nothing through (no class may be all of a selection
    unless its share allows it)."""
    n = np.arange(int(available.sum()) + 1)
    fits = np.minimum(available[None, :],
                      np.floor(max_share[None, :] * n[:, None] + 1e-9)).sum(axis=1) >= n
    best = int(n[fits].max())
    return np.minimum(available, np.floor(max_share * best + 1e-9)).astype(int)


def make_labels(store, config, teachers_by_fold: dict, device: str = "cpu",
                progress: bool = False) -> RoundLabels:
    """Label the candidates with round r-1's members and select, per teacher fold."""
    t0 = time.perf_counter()
    dataset = store.dataset
    splits = candidate_splits(dataset, config)
    rows = np.concatenate([store.rows(s) for s in splits])
    train_prior = class_prior(store.emotion[store.rows("train")], dataset.n_classes)
    votes = teacher_votes(store, teachers_by_fold, rows, device, progress=progress)
    parts, priors, candidates = [], {}, {}
    for f, v in votes.items():
        prior = train_prior
        if config.pseudo_prior == "em":
            prior = estimate_prior(v.probabilities, train_prior,
                                   f"the pool ({', '.join(splits)})").estimate
        chosen = select(v, config, prior)
        priors[str(f)] = [float(x) for x in prior]
        candidates[str(f)] = len(rows)
        parts.append((f, chosen, v))
    take = lambda fn: np.concatenate([fn(f, c, v) for f, c, v in parts])  # noqa: E731
    labels = RoundLabels(
        names=take(lambda f, c, v: store.names[rows[c]]),
        splits=take(lambda f, c, v: store.split[rows[c]]),
        teacher_fold=take(lambda f, c, v: np.full(len(c), f, np.int16)),
        classes=take(lambda f, c, v: v.probabilities[c].argmax(1).astype(np.int16)),
        probabilities=np.concatenate([v.probabilities[c] for _, c, v in parts]).astype(
            np.float32).reshape(-1, dataset.n_classes),
        confidence=take(lambda f, c, v: v.probabilities[c].max(1).astype(np.float32)),
        agreement=take(lambda f, c, v: v.agreement[c].astype(np.float32)),
    )
    labels.meta = {
        "format": FORMAT, "round": config.pseudo_round, "config": config.to_dict(),
        "store_content_hash": store.content_hash, "splits": splits,
        "teachers": {str(f): v.teachers for f, _, v in parts},
        "candidates": candidates, "priors": priors,
        "train_prior": [float(x) for x in train_prior],
        "counts": {str(f): np.bincount(v.probabilities[c].argmax(1),
                                       minlength=dataset.n_classes).tolist()
                   for f, c, v in parts},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return labels


def teachers_by_fold(members, config) -> dict[int, list]:
    """Round r-1's members as teachers: by fold, or all of them as one (ALL_FOLDS)."""
    if config.pseudo_teachers == "all":
        return {ALL_FOLDS: sorted(members, key=lambda m: m.member_id)}
    out: dict[int, list] = {}
    for m in sorted(members, key=lambda m: (m.fold, m.seed)):
        out.setdefault(int(m.fold), []).append(m)
    missing = sorted(set(range(config.n_folds)) - set(out))
    if missing:
        raise InputError(f"round {config.pseudo_round - 1} has no trained member of fold(s) "
                         f"{', '.join(map(str, missing))}, whose students need them as "
                         "teachers; train that round completely first (the same "
                         "command resumes it)")
    return out


def ensure_labels(run, store, config, seeds, device: str = "cpu", log=print,
                  progress: bool = False) -> str:
    """The table of a round >= 1 config: made from round r-1's saved members unless it
    exists (a resumed run keeps the labels its students already learnt from)."""
    location = labels_file(run, config)
    if exists(location) and labels_meta(location) is not None:
        return location
    teacher = teacher_config(config)
    members = read_config_members(run, teacher, seeds, log=log)
    if not members:
        raise InputError(f"round {config.pseudo_round - 1} has no trained member in {run} to "
                         "label the pool; train it first (the same command does)")
    by_fold = teachers_by_fold(members, config)
    t0 = time.perf_counter()
    labels = make_labels(store, config, by_fold, device, progress=progress)
    where = write_labels(run, config, labels, store.dataset.n_classes)
    n = next(iter(labels.meta["candidates"].values()))
    empty = [f for f, c in labels.meta["counts"].items() if sum(c) == 0]
    if empty:
        log(f"note: round {config.pseudo_round}: teacher fold(s) {', '.join(empty)} selected "
            "nothing (no candidate reached the threshold or the caps allowed none); those "
            "students train as their teachers did. Lower --threshold or use --top-k.")
    log(f"round {config.pseudo_round}: {len(members)} teacher(s) labelled {n} candidate(s) in "
        f"{time.perf_counter() - t0:.1f} s; selected per teacher fold: "
        + "; ".join(f"fold {f}: {sum(c)} {c}" for f, c in labels.meta["counts"].items())
        + f" -> {where}")
    return where


def round_scores(members) -> dict:
    """Out-of-fold score of a round's members: the mean over seeds of each seed's
    fold-averaged model (what `mer-ray tune` prints as cv)."""
    return trial_summary(members) if members else {}
