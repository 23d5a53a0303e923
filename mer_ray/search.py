"""`mer-ray search`: a recipe search that selects on out-of-fold scores only.

Random search over SPACE (the way MERBench tunes: about 50 random draws, then the best),
each trial one seed's folds of one drawn recipe, run by Ray Tune like the warmup grid
(FIFO: a scheduler that stopped trials early would compare folds of different
difficulty; whole trials always finish). The draws come from `--search-seed`, so the
same command draws the same trials and a restart trains only what is missing.

The objective is the trial's out-of-fold combined metric (F1 - 0.25 MSE; F1 without
valence). Test splits are printed beside it, marked as held out, and never decide
anything: `best_trials` ranks on cv alone. The experiment report this project started
from chose its recipe by test2, which leaks the test set into the choice; this makes
the honest way the easy one. The best trials' members feed `mer-ray ensemble score`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mer_ray.errors import InputError


@dataclass(frozen=True)
class Dimension:
    field: str
    kind: str  # "choice", "uniform" or "loguniform"
    values: tuple  # the choices, or (low, high)
    digits: int = 3  # drawn floats are rounded: readable member ids and labels

    def draw(self, rng):
        if self.kind == "choice":
            return self.values[int(rng.integers(len(self.values)))]
        lo, hi = self.values
        if self.kind == "uniform":
            return round(float(rng.uniform(lo, hi)), self.digits)
        return float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.{self.digits}g}")

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.field} in {{{', '.join(map(str, self.values))}}}"
        return f"{self.field} ~ {self.kind}({self.values[0]}, {self.values[1]})"


# The documented space: robust_v3's knobs and the report's next steps (per-modality
# robustness aimed at test2, contrastive loss).
SPACE = (
    Dimension("warmup", "choice", (20, 30, 40, 50)),
    Dimension("dropout", "uniform", (0.2, 0.5), 2),
    Dimension("weight_decay", "loguniform", (1e-5, 1e-3), 2),
    Dimension("modality_dropout_audio", "uniform", (0.0, 0.45), 2),
    Dimension("modality_dropout_text", "uniform", (0.0, 0.45), 2),
    Dimension("modality_dropout_video", "uniform", (0.0, 0.45), 2),
    Dimension("feature_noise_audio", "choice", (0.0, 0.1, 0.3)),
    Dimension("feature_noise_video", "choice", (0.0, 0.1, 0.3)),
    Dimension("contrastive_weight", "choice", (0.0, 0.05, 0.1, 0.2)),
)


def draw_settings(n: int, search_seed: int = 0, space=SPACE, modalities=None) -> list[dict]:
    """n recipe settings drawn from `space` (deterministic for a seed; duplicates are
    drawn again). Dimensions of modalities the store lacks are left out."""
    if n < 1:
        raise InputError(f"--trials {n}: must be at least 1")
    dims = [d for d in space if modalities is None or not any(
        d.field.endswith(f"_{m}") for m in {"audio", "text", "video"} - set(modalities))]
    rng = np.random.default_rng(search_seed)
    settings, seen = [], set()
    for _ in range(n * 100):
        s = {d.field: d.draw(rng) for d in dims}
        key = tuple(sorted(s.items()))
        if key not in seen:
            seen.add(key)
            settings.append(s)
        if len(settings) == n:
            return settings
    raise InputError(f"--trials {n}: the search space has fewer distinct recipes")


def best_trials(rows: list[tuple[dict, dict]], k: int = 1) -> list[int]:
    """Indices of the k best trials by out-of-fold score ('cv_combined', else 'cv_f1').
    Test scores in the rows are never read: choosing by them would leak the test set."""
    def oof(metrics):
        return metrics.get("cv_combined", metrics.get("cv_f1", -math.inf))

    order = sorted(range(len(rows)), key=lambda i: (-oof(rows[i][1]), i))
    return order[:k]


def search_table(rows: list[tuple[dict, dict]], best: list[int]) -> str:
    """The trials, best cv first; the cv columns chose, the test columns are held out."""
    from ensembles.groups import trial_table

    order = best_trials(rows, len(rows))
    lines = trial_table([({"trial": i + 1}, rows[i][1]) for i in order]).splitlines()
    out = ["  " + lines[0], "  " + lines[1]]
    out += [("* " if i in best else "  ") + line for i, line in zip(order, lines[2:])]
    out.append("* chosen on cv (out-of-fold) only; the test columns are held out and chose "
               "nothing")
    out += [f"trial {i + 1}: " + ", ".join(f"{k}={v}" for k, v in rows[i][0].items())
            for i in order]
    return "\n".join(out)
