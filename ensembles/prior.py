"""The class prior of an unlabelled set, estimated from a model's probabilities by EM
(Saerens, Latinne & Decaestecker, Neural Computation 14(1), 2002), and the posteriors
re-weighted to it.

A classifier trained where class c has prior t_c gives posteriors p(c | x) that carry t.
On a set whose prior is q, Bayes' rule gives p_q(c | x) proportional to
p(c | x) q_c / t_c. EM finds q: start at t, re-weight every posterior by q / t and
renormalise, set q to the mean re-weighted posterior, repeat until q stops moving. Why by
hand: scikit-learn and scipy have no such estimator; the loop is a few lines.

The estimate is only as good as the posteriors are calibrated; below MIN_SAMPLES samples
it is refused (a handful of rows says little about six classes' shares).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mer_ray.errors import InputError

MIN_SAMPLES = 50
MAX_ITER = 1000
TOL = 1e-8


@dataclass
class PriorShift:
    train: np.ndarray  # [C] the training prior the posteriors carry
    estimate: np.ndarray  # [C] the estimated prior of the set
    probabilities: np.ndarray  # [n, C] the posteriors re-weighted to the estimate
    iterations: int

    @property
    def l1(self) -> float:
        """How far the estimate moved from the training prior (L1 distance)."""
        return float(np.abs(self.estimate - self.train).sum())


def class_prior(labels, n_classes: int) -> np.ndarray:
    """Class shares of integer labels (negative labels, i.e. unlabelled, are left out)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels[labels >= 0], minlength=n_classes).astype(np.float64)
    if counts.sum() == 0:
        raise InputError("no labelled sample to take a training prior from")
    return counts / counts.sum()


def reweight(probabilities, train_prior, prior) -> np.ndarray:
    """Posteriors moved from `train_prior` to `prior` (Bayes' rule, renormalised)."""
    p = np.asarray(probabilities, np.float64)
    ratio = np.divide(prior, train_prior, out=np.zeros(len(prior)), where=train_prior > 0)
    adjusted = p * ratio
    total = adjusted.sum(axis=1, keepdims=True)
    return np.divide(adjusted, total, out=np.full_like(adjusted, 1 / p.shape[1]),
                     where=total > 0)


def estimate_prior(probabilities, train_prior, where: str = "this set") -> PriorShift:
    """EM estimate of the prior of the set whose posteriors these are (module docstring).
    `where` names the set in a refusal."""
    p = np.asarray(probabilities, np.float64)
    t = np.asarray(train_prior, np.float64)
    if p.ndim != 2 or p.shape[1] != len(t):
        raise InputError(f"{where}: probabilities of shape {p.shape} for {len(t)} classes")
    if len(p) < MIN_SAMPLES:
        raise InputError(f"{where} has {len(p)} sample(s); estimating its class prior needs "
                         f"at least {MIN_SAMPLES}")
    if not np.isfinite(p).all():
        raise InputError(f"{where}: probabilities hold NaN or Inf")
    q = t.copy()
    for iteration in range(1, MAX_ITER + 1):
        adjusted = reweight(p, t, q)
        new = adjusted.mean(axis=0)
        moved = float(np.abs(new - q).sum())
        q = new
        if moved < TOL:
            break
    return PriorShift(t, q, reweight(p, t, q), iteration)


def prior_lines(shift: PriorShift, classes, what: str) -> list[str]:
    """Two lines for the console: the estimate beside the training prior, and how far it
    moved."""
    width = max(8, *(len(c) for c in classes))
    head = "".join(f"{c:>{width + 1}}" for c in classes)
    return [f"class prior of {what} (EM estimate from the ensemble's probabilities, "
            f"{shift.iterations} iterations):",
            f"  {'':<10}{head}",
            f"  {'train':<10}" + "".join(f"{v:>{width + 1}.3f}" for v in shift.train),
            f"  {'estimate':<10}" + "".join(f"{v:>{width + 1}.3f}" for v in shift.estimate),
            f"  the estimate moved {shift.l1:.3f} (L1) from train's prior"]
