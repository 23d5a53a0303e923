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

from ensembles.groups import make_groups, score_group, trial_table
from mer_ray.errors import InputError
from mer_ray.storage import join
from mer_ray.train.presets import PRESETS
from mer_ray.train.recipes import RECIPE_FILE, write_recipe


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


def draw_settings(trials: int, search_seed: int = 0, space=SPACE, modalities=None) -> list[dict]:
    """`trials` recipe settings drawn from `space` (deterministic for a seed; duplicates are
    drawn again). Dimensions of modalities the store lacks are left out."""
    if trials < 1:
        raise InputError(f"{trials}: must be at least 1", param="trials")
    dims = [d for d in space if modalities is None or not any(
        d.field.endswith(f"_{m}") for m in {"audio", "text", "video"} - set(modalities))]
    rng = np.random.default_rng(search_seed)
    settings, seen = [], set()
    for _ in range(trials * 100):
        s = {d.field: d.draw(rng) for d in dims}
        key = tuple(sorted(s.items()))
        if key not in seen:
            seen.add(key)
            settings.append(s)
        if len(settings) == trials:
            return settings
    raise InputError(f"{trials}: the search space has fewer distinct recipes", param="trials")


def best_trials(rows: list[tuple[dict, dict]], k: int = 1) -> list[int]:
    """Indices of the k best trials by out-of-fold score ('cv_combined', else 'cv_f1').
    Test scores in the rows are never read: choosing by them would leak the test set."""
    def oof(metrics):
        return metrics.get("cv_combined", metrics.get("cv_f1", -math.inf))

    order = sorted(range(len(rows)), key=lambda i: (-oof(rows[i][1]), i))
    return order[:k]


def search_table(rows: list[tuple[dict, dict]], best: list[int]) -> str:
    """The trials, best cv first; the cv columns chose, the test columns are held out."""
    order = best_trials(rows, len(rows))
    lines = trial_table([({"trial": i + 1}, rows[i][1]) for i in order]).splitlines()
    out = ["  " + lines[0], "  " + lines[1]]
    out += [("* " if i in best else "  ") + line for i, line in zip(order, lines[2:])]
    out.append("* chosen on cv (out-of-fold) only; the test columns are held out and chose "
               "nothing")
    out += [f"trial {i + 1}: " + ", ".join(f"{k}={v}" for k, v in rows[i][0].items())
            for i in order]
    return "\n".join(out)


def seed_spread(members) -> list[float]:
    """A trial's out-of-fold objective per seed (each seed's fold-averaged model):
    cv combined where there is valence, else cv F1."""
    values = []
    for g in make_groups(members) if members else []:
        cv = score_group(g)["cv"]
        values.append(cv.get("combined", cv["f1"]))
    return values


def _mean_se(values) -> tuple[float, float | None]:
    v = np.asarray(values, float)
    if len(v) < 2:
        return float(v.mean()) if len(v) else math.nan, None
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


def within_noise(spreads: list[list[float]], best: int) -> tuple[float | None, float | None]:
    """(the winner's lead over the runner-up, the winner's standard error over seeds);
    None where there is no runner-up or only one seed."""
    means = [_mean_se(s)[0] for s in spreads]
    others = [m for i, m in enumerate(means) if i != best and not math.isnan(m)]
    lead = means[best] - max(others) if others else None
    return lead, _mean_se(spreads[best])[1]


def spread_lines(rows, spreads, best: int) -> list[str]:
    """Each trial's objective per seed and its standard error, and whether the winner
    leads by more than that."""
    lines = ["", "out-of-fold objective per seed (mean, standard error over seeds):"]
    for i, values in enumerate(spreads):
        mean, se = _mean_se(values)
        lines.append(f"  trial {i + 1}: " + " ".join(f"{v:.4f}" for v in values)
                     + f"  (mean {mean:.4f}" + (f", se {se:.4f})" if se is not None else ")"))
    lead, se = within_noise(spreads, best)
    if lead is None:
        return lines
    if se is None:
        lines.append(f"trial {best + 1} leads by {lead:.4f}, with one seed per trial: how much "
                     "of that is seed noise is unknown (docs/recipes.md measured a searched "
                     "lead of about one standard error); --seeds 0 1 2 measures it")
    elif lead < se:
        lines.append(f"WITHIN SEED NOISE: trial {best + 1} leads by {lead:.4f}, less than its "
                     f"own standard error over seeds ({se:.4f}); the ranking may not hold on "
                     "other seeds")
    else:
        lines.append(f"trial {best + 1} leads by {lead:.4f}, more than its standard error over "
                     f"seeds ({se:.4f})")
    return lines


def write_search_recipe(args, config, setting: dict, rows, spreads, best: int, manifest,
                        seeds) -> str:
    """RUN/recipe.yaml: the chosen trial as a recipe file (mer_ray.train.recipes) with what
    chose it."""
    chosen = config.replace(**setting)
    lead, se = within_noise(spreads, best)
    metrics = rows[best][1]
    objective = "cv_combined" if "cv_combined" in metrics else "cv_f1"
    chosen_on = {
        "store": str(args.store), "store_content_hash": manifest["content_hash"],
        "search_seed": args.search_seed, "trials": len(rows), "trial": best + 1,
        "seeds": [int(s) for s in seeds], "objective": objective,
        "objective_value": round(float(metrics.get(objective, math.nan)), 6),
        "per_seed": [round(v, 6) for v in spreads[best]],
        "standard_error": None if se is None else round(se, 6),
        "lead_over_runner_up": None if lead is None else round(lead, 6),
        "within_seed_noise": None if lead is None or se is None else bool(lead < se),
    }
    comment = (f"chosen by `mer-ray search` (trial {best + 1} of {len(rows)}, search seed "
               f"{args.search_seed}) on the out-of-fold scores of the store below only.\n"
               "A recipe searched on one dataset is that dataset's: search again on yours.")
    return write_recipe(join(args.out, RECIPE_FILE), chosen, _base_name(config), chosen_on,
                        comment)


def _base_name(config) -> str:
    return config.preset if config.preset in PRESETS else "robust_v3"
