"""Combining groups (fold-averaged (config, seed) models) into one ensemble.

Strategies (each gives one non-negative weight per group, summing to 1):

- `mean` (default): uniform weights; ensemble logits = mean of the groups' logits.
- `prob`: uniform weights over softmax probabilities; the reported logits are the
  log of the mean probability (so argmax and softmax still mean what they should).
- `weighted`: weights fitted on the groups' out-of-fold predictions by minimising the
  cross-entropy of the weighted mean of logits, with exponentiated gradient on the
  simplex (`WEIGHTED_STEPS` steps; the loss is convex in the weights).
- `greedy`: Caruana et al. (2004) forward selection with replacement on the
  out-of-fold predictions: start from the n groups best on their own (n chosen on oof,
  the paper's sorted initialisation), each round add the group whose
  addition gives the highest oof combined metric (F1 - 0.25 MSE; F1 without valence)
  of the bag's mean logits, stop after `GREEDY_ROUNDS` rounds or when no group improves
  it; ties go to the earlier group (groups are in `make_groups` order). Weights = times
  chosen / bag size.

Valence (where the models predict it) is always the same weighted mean of the groups'
valence predictions. The cv row of an ensemble is its oof predictions combined with
the same weights over the train samples every group has a held-out prediction for.
For `weighted` and `greedy` the weights were fitted on those same oof predictions, so
their cv is optimistic; the test splits are the honest estimates. Nothing here ever
looks at a test split to choose: weights come from out-of-fold predictions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ensembles.groups import Group, group_members, make_groups, rows_in
from mer_ray.errors import InputError
from mer_ray.train.result import SplitPredictions

# The strategies, each with what it does (the --strategy help of every command).
STRATEGIES = {
    "mean": "mean of logits",
    "prob": "mean of probabilities",
    "weighted": "weights fitted on out-of-fold",
    "greedy": "Caruana forward selection on out-of-fold",
}
WEIGHTED_STEPS = 300
GREEDY_ROUNDS = 50


@dataclass
class Ensemble:
    strategy: str
    groups: list[Group]
    weights: np.ndarray  # [G], >= 0, sums to 1
    predictions: dict[str, SplitPredictions]  # "oof" (common train samples) + test splits
    notes: list[str] = field(default_factory=list)

    def weight_by_label(self) -> dict[str, float]:
        return {g.label: float(w) for g, w in zip(self.groups, self.weights)}


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _rows(x, rows):
    return None if x is None else x[rows]


def _take(p: SplitPredictions, rows: np.ndarray) -> SplitPredictions:
    return SplitPredictions(
        names=p.names[rows], logits=p.logits[rows], valence=_rows(p.valence, rows),
        label=p.label[rows], valence_label=p.valence_label[rows],
        masked={k: (lg[rows], _rows(va, rows)) for k, (lg, va) in p.masked.items()},
    )


def align(groups: list[Group]) -> tuple[dict[str, list[SplitPredictions]], list[str]]:
    """Each split's predictions of every group on the same samples in the same order.

    Test splits must hold the same samples in every group (else InputError naming a
    file); out-of-fold uses the train samples present in every group."""
    notes = []
    out = {}
    common = groups[0].predictions["oof"].names
    for g in groups[1:]:
        common = np.intersect1d(common, g.predictions["oof"].names)
    union = np.unique(np.concatenate([g.predictions["oof"].names for g in groups]))
    if len(common) == 0:
        raise InputError(
            f"{groups[0].where()}: the groups share no out-of-fold sample, so no cv can be "
            "computed; were they trained on different stores or folds?"
        )
    if len(common) < len(union):
        notes.append(f"cv uses the {len(common)} of {len(union)} train samples that every "
                     "group has an out-of-fold prediction for")
    # Each group's oof is sorted by name, so searchsorted finds the common rows.
    out["oof"] = [_take(g.predictions["oof"], np.searchsorted(g.predictions["oof"].names, common))
                  for g in groups]
    for split in groups[0].test_splits:
        ref = groups[0].predictions[split].names
        parts = []
        for g in groups:
            p = g.predictions[split]
            order = np.empty(len(ref), np.int64)
            order[rows_in(ref, p.names, split, g.where(), groups[0].where())] = np.arange(len(ref))
            parts.append(_take(p, order))
        out[split] = parts
    return out, notes


def _mix_logits(logit_list, weights, kind: str) -> np.ndarray:
    if kind == "prob":
        prob = sum(w * softmax(lg) for w, lg in zip(weights, logit_list))
        return np.log(np.clip(prob, 1e-12, None))
    return sum(w * np.asarray(lg, np.float64) for w, lg in zip(weights, logit_list))


def _mix_valence(valences, weights):
    if any(v is None for v in valences):
        return None
    return sum(w * np.asarray(v, np.float64) for w, v in zip(weights, valences))


def mix(parts: list[SplitPredictions], weights, kind: str = "logits") -> SplitPredictions:
    """Weighted combination of aligned predictions (masked ones too, same weights)."""
    ref = parts[0]
    keys = set.intersection(*(set(p.masked) for p in parts))
    return SplitPredictions(
        names=ref.names,
        logits=_mix_logits([p.logits for p in parts], weights, kind),
        valence=_mix_valence([p.valence for p in parts], weights),
        label=ref.label,
        valence_label=ref.valence_label,
        masked={k: (_mix_logits([p.masked[k][0] for p in parts], weights, kind),
                    _mix_valence([p.masked[k][1] for p in parts], weights))
                for k in sorted(keys)},
    )


def fit_weighted(oof: list[SplitPredictions], steps: int = WEIGHTED_STEPS) -> np.ndarray:
    """Simplex weights minimising the cross-entropy of the weighted mean of oof logits.

    Exponentiated gradient: w <- w * exp(-eta_t * g / max|g|), renormalised. Scaling by
    max|g| makes the step independent of the logits' scale; eta_t = 1/sqrt(t+1) lets it
    settle. The best weights seen are returned (the normalised steps are not monotone)."""
    logits = np.stack([np.asarray(p.logits, np.float64) for p in oof])  # [G, n, C]
    y = np.asarray(oof[0].label)
    n_groups, n = logits.shape[:2]
    onehot = np.zeros(logits.shape[1:])
    onehot[np.arange(n), y] = 1.0
    w = np.full(n_groups, 1.0 / n_groups)
    best_w, best_loss = w.copy(), np.inf
    for t in range(steps):
        z = np.tensordot(w, logits, axes=1)
        zmax = z.max(axis=1, keepdims=True)
        log_norm = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
        loss = float(np.mean(log_norm - z[np.arange(n), y]))
        if loss < best_loss:
            best_w, best_loss = w.copy(), loss
        p = np.exp(z - log_norm[:, None])
        g = np.einsum("gnc,nc->g", logits, p - onehot) / n
        scale = np.abs(g).max()
        if scale == 0:
            break
        w = w * np.exp(-(g / scale) / np.sqrt(t + 1))
        w /= w.sum()
    return best_w


def _weighted_f1(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """sklearn's weighted F1 from a confusion matrix, fast enough for the greedy loop."""
    cm = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes)
    cm = cm.reshape(n_classes, n_classes).astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    denom = cm.sum(axis=0) + support  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float((f1 * support).sum() / support.sum())


def _oof_objective(logits, valence, y, valence_true) -> float:
    f1 = _weighted_f1(logits.argmax(axis=1), y, logits.shape[1])
    if valence is None or np.isnan(valence_true).any():
        return f1
    return f1 - 0.25 * float(np.mean((valence - valence_true) ** 2))


def fit_greedy(oof: list[SplitPredictions], rounds: int = GREEDY_ROUNDS) -> np.ndarray:
    """Caruana forward selection with replacement from a sorted initialisation; returns
    times-chosen / bag size. Its oof objective is never below the uniform mean's."""
    logits = np.stack([np.asarray(p.logits, np.float64) for p in oof])
    with_valence = all(p.valence is not None for p in oof)
    valence = np.stack([np.asarray(p.valence if with_valence else np.zeros(len(p.names)),
                                   np.float64) for p in oof])
    y = np.asarray(oof[0].label, np.int64)
    vt = np.asarray(oof[0].valence_label, np.float64)
    def objective(sum_l, sum_v, k):
        return _oof_objective(sum_l / k, sum_v / k if with_valence else None, y, vt)

    # Sorted initialisation (Caruana et al. 2004, section 2.1): the bag starts as the n
    # groups best on their own oof score, n chosen on oof. Started from one group, the
    # climb can stop there when no single addition helps, while the mean of many does
    # (seen on the demo: 1 of 9 groups, below the uniform mean on its own objective).
    order = sorted(range(len(oof)), key=lambda i: -objective(logits[i], valence[i], 1))
    tops = [objective(logits[order[:n]].sum(0), valence[order[:n]].sum(0), n)
            for n in range(1, len(oof) + 1)]
    n_init = int(np.argmax(tops)) + 1  # first of equal scores: the smaller bag
    counts = np.zeros(len(oof), np.int64)
    counts[order[:n_init]] = 1
    sum_l, sum_v = logits[order[:n_init]].sum(0), valence[order[:n_init]].sum(0)
    current = tops[n_init - 1]
    for k in range(n_init + 1, n_init + rounds + 1):
        trial = [objective(sum_l + logits[i], sum_v + valence[i], k) for i in range(len(oof))]
        best = int(np.argmax(trial))  # first of equal scores: deterministic tie-break
        if trial[best] <= current:
            break
        current = trial[best]
        counts[best] += 1
        sum_l += logits[best]
        sum_v += valence[best]
    return counts / counts.sum()


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise InputError(f"{strategy!r}: choose one of {', '.join(STRATEGIES)}",
                         param="strategy")


def _kind(strategy: str) -> str:
    """What a strategy averages: probabilities (prob) or logits (the others)."""
    return "prob" if strategy == "prob" else "logits"


def group_weights(members, strategy: str = "mean") -> dict[str, float]:
    """group label -> weight, as `combine` would give the groups of these members:
    fitted on their stored out-of-fold predictions (weighted, greedy) or uniform, which
    needs no prediction read."""
    check_strategy(strategy)
    if strategy in ("weighted", "greedy"):
        groups = make_groups(members)
        return {g.label: float(w) for g, w in zip(groups, combine(groups, strategy).weights)}
    labels = [label for label, _ in group_members(members)]
    return {label: 1.0 / len(labels) for label in labels}


def mix_groups(groups: list[tuple[float, list[tuple]]], strategy: str = "mean"):
    """New samples through an ensemble: `groups` is (weight, [(logits [n, C], valence [n]
    or None) of each fold member]) per group. Each group's fold members averaged (the
    MERTools protocol), then the groups mixed as `strategy` mixes them. Returns (logits
    [n, C], valence [n] or None)."""
    weights, logits, valences = [], [], []
    for weight, outputs in groups:
        weights.append(weight)
        logits.append(np.mean([lg for lg, _ in outputs], axis=0))
        has_valence = outputs[0][1] is not None
        valences.append(np.mean([v for _, v in outputs], axis=0) if has_valence else None)
    return _mix_logits(logits, weights, _kind(strategy)), _mix_valence(valences, weights)


def combine(groups: list[Group], strategy: str = "mean") -> Ensemble:
    """Weights per group and the combined predictions of every split."""
    check_strategy(strategy)
    if not groups:
        raise InputError("no group to combine")
    parts, notes = align(groups)
    if strategy == "weighted" and len(groups) > 1:
        weights = fit_weighted(parts["oof"])
    elif strategy == "greedy" and len(groups) > 1:
        weights = fit_greedy(parts["oof"])
    else:
        weights = np.full(len(groups), 1.0 / len(groups))
    if strategy in ("weighted", "greedy"):
        notes.append(f"{strategy} weights are fitted on the out-of-fold predictions, so the "
                     "cv row is optimistic; judge it by the test splits")
    predictions = {split: mix(p, weights, _kind(strategy)) for split, p in parts.items()}
    return Ensemble(strategy, list(groups), weights, predictions, notes)
