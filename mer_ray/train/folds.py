"""Stratified, seeded cross-validation folds (scikit-learn).

The folds depend only on (labels, n_folds, fold_seed): every member, worker and node that
shares a fold seed sees the same folds.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold


def make_folds(labels, n_folds: int = 5, fold_seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(train_idx, held_out_idx)] per fold, indices into `labels`, each sorted."""
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=fold_seed)
    labels = np.asarray(labels)
    return [
        (np.sort(tr), np.sort(te)) for tr, te in skf.split(np.zeros(len(labels)), labels)
    ]
