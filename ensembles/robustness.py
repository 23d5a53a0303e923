"""Robustness: the ensemble with modalities masked, and how far test features moved.

(a) Masked modalities. Every member file holds, per test set, predictions with each
single modality and each pair zeroed at inference through the model's
modality-dropout path (`mer_ray.train.result.mask_sets`). They are combined exactly like the
unmasked predictions (fold mean within a group, then the ensemble's weights; uniform
mean for the default strategy) and scored next to the unmasked ensemble.

(b) Feature shift, per modality and test set (unlabelled ones included: it needs no
labels), read from the feature store, on the features the members were trained on:

- `mean_shift` = ||mu_test - mu_train|| / sqrt(trace(Cov_train)): the distance between
  the test and train means in units of the train cloud's RMS spread (0 = same mean;
  scale-free, so modalities of different dimension compare).
- `spread_ratio` = sqrt(trace(Cov_test) / trace(Cov_train)): 1 = same overall spread;
  noise added to the features (MER-NOISE) shows here even when the mean stays put.
- `domain_auc`: how well a classifier tells test samples from train samples. Features
  of train and the test sets are pooled, standardised and reduced to `PCA_DIM`
  principal components (fitted on the pool: see `_reduce`); a logistic regression on
  those components and their squares (so a change of spread is visible to it, not
  only a change of mean) is scored by
  `CV_FOLDS`-fold stratified cross-validated ROC AUC (train vs that test set).
  0.5 = indistinguishable (no shift), 1.0 = fully separable; with small test sets it
  scatters around 0.5 by chance. Random parts use seed 0, so it is deterministic.
- `off_manifold`: the share of the test features' variance outside train's leading
  principal axes, beyond what unseen train rows show (`off_manifold`): where noise or
  blur hit a modality, even once the domain AUC has saturated at 1.

(c) From the analysis to a recipe: `suggest_recipe` turns the off-manifold shares of the
noisiest test split into per-modality modality dropout and feature noise, from the
features alone (no test label), for `mer-ray tune --set ...` to try against the plain
recipe on out-of-fold scores.

At full MER2023 size (5,030 samples, dims 1024/5120/768) all of (b) takes about 3 s of
CPU time on one core.
"""

from __future__ import annotations

import numpy as np

from ensembles.tables import score_split

PCA_DIM = 32
CV_FOLDS = 5
UNMASKED = "none"


def mask_label(key: str) -> str:
    return "all modalities" if key == UNMASKED else key.replace("_", "+") + " masked"


def masked_scores(ensemble, dataset) -> dict:
    """{mask key or "none": {labelled test split: metrics}} for the ensemble."""
    out = {UNMASKED: {}}
    for split in dataset.scored_splits:
        pred = ensemble.predictions[split]
        out[UNMASKED][split] = score_split(split, pred, dataset)
        for key, (lg, va) in pred.masked.items():
            masked = type(pred)(names=pred.names, logits=lg, valence=va, label=pred.label,
                                valence_label=pred.valence_label)
            out.setdefault(key, {})[split] = score_split(split, masked, dataset)
    return out


def format_masked(scores: dict) -> str:
    """Text table: one row per mask, F1 and acc per labelled test set."""
    splits = list(scores[UNMASKED])
    if not splits:
        return "(no labelled test split to score)"
    head = f"{'':<24}" + "".join(f"{s + ' F1':>11}{s + ' acc':>11}" for s in splits)
    lines = [head]
    for key, per_split in scores.items():
        cells = "".join(
            f"{per_split[s]['f1']:>11.4f}{per_split[s]['acc']:>11.4f}" if s in per_split
            else f"{'':>22}" for s in splits
        )
        lines.append(f"{mask_label(key):<24}{cells}".rstrip())
    return "\n".join(lines)


def mean_shift(train: np.ndarray, test: np.ndarray) -> float:
    mu_train = train.mean(axis=0, dtype=np.float64)
    mu_test = test.mean(axis=0, dtype=np.float64)
    spread = float(train.var(axis=0, dtype=np.float64).sum())
    return float(np.linalg.norm(mu_test - mu_train) / np.sqrt(spread)) if spread > 0 else 0.0


def spread_ratio(train: np.ndarray, test: np.ndarray) -> float:
    a = float(train.var(axis=0, dtype=np.float64).sum())
    b = float(test.var(axis=0, dtype=np.float64).sum())
    return float(np.sqrt(b / a)) if a > 0 else float("nan")


def _reduce(x: np.ndarray) -> np.ndarray:
    """Standardise, then project onto the top `PCA_DIM` principal axes of all rows given.

    The rows are train and every test set pooled, not train alone: with fewer samples
    than dimensions, PCA fitted on train overfits train's noise, so train samples
    project with more variance than unseen ones, and the classifier would "detect" a
    shift that is not there. PCA is unsupervised, so pooling leaks no domain label.

    Randomised PCA (Halko et al. 2011) with two power iterations, in float32 numpy:
    accurate enough for a shift test, and about a second for 5,030 x 5,120 features."""
    x = np.asarray(x, np.float32)
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    k = max(1, min(PCA_DIM, x.shape[0] - 1, x.shape[1]))
    width = min(k + 10, *x.shape)
    rng = np.random.default_rng(0)
    q = x @ rng.standard_normal((x.shape[1], width)).astype(np.float32)
    for _ in range(2):
        q, _ = np.linalg.qr(q)
        q = x @ (x.T @ q)
    q, _ = np.linalg.qr(q)
    b = q.T @ x  # x ~ q b; the eigenvectors of b b^T give the left singular vectors
    eigval, eigvec = np.linalg.eigh((b @ b.T).astype(np.float64))
    top = np.argsort(eigval)[::-1][:k]
    return (q @ eigvec[:, top].astype(np.float32)) * np.sqrt(np.maximum(eigval[top], 0))


def domain_auc(train_z: np.ndarray, test_z: np.ndarray) -> float:
    """Cross-validated ROC AUC of logistic regression telling test from train."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.concatenate([train_z, test_z])
    x = np.concatenate([x, x**2], axis=1)
    x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-12)  # lbfgs converges fast
    y = np.r_[np.zeros(len(train_z)), np.ones(len(test_z))]
    folds = min(CV_FOLDS, len(test_z), len(train_z))
    if folds < 2:
        return float("nan")
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    clf = LogisticRegression(max_iter=500)
    s = cross_val_predict(clf, x, y, cv=cv, method="decision_function")
    return float(roc_auc_score(y, s))


def off_manifold(train: np.ndarray, test: np.ndarray, k: int = PCA_DIM) -> float:
    """How much of `test`'s variance leaves the subspace train's features live in: the
    share of its (train-centred) energy outside train's top-k principal axes, minus the
    same share for unseen train rows (the axes come from one half of train, the baseline
    from the other), so 0 = as on the manifold as train itself. Noise and blur added to
    a modality land mostly off its manifold, even where mean and spread barely move and
    a domain classifier already tells every sample apart."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))
    fit, held = train[order[: len(train) // 2]], train[order[len(train) // 2:]]
    mu = fit.mean(axis=0, dtype=np.float64).astype(np.float32)
    k = max(1, min(k, len(fit) - 1, fit.shape[1]))
    _, _, vt = np.linalg.svd(fit - mu, full_matrices=False)
    basis = vt[:k].T  # [D, k]

    def outside(x):
        x = x - mu
        total = float((x.astype(np.float64) ** 2).sum())
        inside = float(((x @ basis).astype(np.float64) ** 2).sum())
        return 1 - inside / total if total > 0 else 0.0

    return max(0.0, outside(test) - outside(held)) if len(held) else float("nan")


def feature_shift(store, features: dict | None = None) -> dict:
    """{modality: {test split: {"mean_shift", "spread_ratio", "domain_auc",
    "off_manifold", "n"}}} on `features` ({modality: feature name}; default each
    modality's first feature)."""
    features = features or {}
    rows = {s: store.rows(s) for s in ("train", *store.dataset.test_splits)}
    rows = {s: r for s, r in rows.items() if len(r)}
    used = np.concatenate(list(rows.values()))
    out = {}
    for m in store.modalities:
        x = np.asarray(store.feature(m, features.get(m))[used], np.float32)
        z = _reduce(x)
        start, part = 0, {}
        for s, r in rows.items():  # `used` is rows' values concatenated in this order
            part[s] = (x[start:start + len(r)], z[start:start + len(r)])
            start += len(r)
        train, train_z = part["train"]
        out[m] = {
            s: {"mean_shift": mean_shift(train, test), "spread_ratio": spread_ratio(train, test),
                "domain_auc": domain_auc(train_z, test_z),
                "off_manifold": off_manifold(train, test), "n": int(len(test))}
            for s, (test, test_z) in part.items() if s != "train"
        }
    return out


def format_shift(shift: dict) -> str:
    splits = list(dict.fromkeys(s for per in shift.values() for s in per))
    head = f"{'':<8}" + "".join(f"{s + ' shift':>13}{s + ' spread':>14}{s + ' AUC':>11}"
                                f"{s + ' off':>11}" for s in splits)
    lines = [head]
    for m, per in shift.items():
        cells = "".join(f"{per[s]['mean_shift']:>13.3f}{per[s]['spread_ratio']:>14.3f}"
                        f"{per[s]['domain_auc']:>11.3f}{per[s].get('off_manifold', np.nan):>11.3f}"
                        for s in splits)
        lines.append(f"{m:<8}{cells}")
    return "\n".join(lines)


# ---- from the analysis to a recipe ------------------------------------------------------
SUGGEST_DROPOUT = (0.1, 0.4)  # per-modality dropout from the least to the most shifted
SUGGEST_NOISE = 0.3  # feature noise (train-set sds) for the most shifted modality


def shift_scores(shift: dict, split: str) -> dict[str, float]:
    """How far each modality of `split` moved off train's feature manifold
    (`off_manifold`, 0 = not at all): the domain classifier's AUC saturates at 1 as soon
    as samples can be told apart, which says nothing about which modality is hit worst."""
    return {m: per[split]["off_manifold"] for m, per in shift.items()
            if split in per and np.isfinite(per[split].get("off_manifold", np.nan))}


def noisiest_split(shift: dict) -> str | None:
    """The test split whose features moved furthest from train (mean shift score)."""
    splits = list(dict.fromkeys(s for per in shift.values() for s in per))
    if not splits:
        return None
    return max(splits, key=lambda s: np.mean(list(shift_scores(shift, s).values()) or [0]))


def suggest_recipe(shift: dict, split: str | None = None) -> tuple[dict, str]:
    """A per-modality robustness setting aimed at `split` (default the noisiest one),
    from the feature shift alone: no test label is looked at, so trying it stays honest.
    The most shifted modality gets the most modality dropout (SUGGEST_DROPOUT) and
    training-time noise (SUGGEST_NOISE); the others in proportion to their shift.
    Returns ({field: value}, a line saying why)."""
    split = split or noisiest_split(shift)
    scores = shift_scores(shift, split) if split else {}
    if not scores:
        return {}, "no feature shift to aim at (no test split, or no store)"
    top = max(scores.values()) or 1.0
    lo, hi = SUGGEST_DROPOUT
    setting = {}
    for m, s in scores.items():
        rel = s / top
        setting[f"modality_dropout_{m}"] = round(lo + (hi - lo) * rel, 2)
        setting[f"feature_noise_{m}"] = round(SUGGEST_NOISE * rel, 2) if rel >= 0.5 else 0.0
    ranked = ", ".join(f"{m} {scores[m]:.2f}" for m in sorted(scores, key=scores.get,
                                                                 reverse=True))
    why = (f"{split}'s features left train's manifold most in {max(scores, key=scores.get)} "
           f"(off-manifold share: {ranked}); from features alone, no {split} label used")
    return setting, why


def suggestion_lines(shift: dict) -> list[str]:
    setting, why = suggest_recipe(shift)
    if not setting:
        return [f"suggested robustness setting: none ({why})"]
    flags = " ".join(f"--set {k}={v}" for k, v in setting.items())
    return [f"suggested per-modality robustness setting ({why}):",
            f"  mer-ray tune --preset robust_v3 --store STORE --out RUN {flags}",
            "  compare it with the plain recipe on cv (out-of-fold) before you look at any "
            "test score"]
