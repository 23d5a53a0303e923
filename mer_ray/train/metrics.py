"""MER2023 metrics (scikit-learn): weighted F1, accuracy, valence MSE, combined score.

combined = weighted F1 - 0.25 * valence MSE, the MERTools model-selection metric.
Splits without valence labels (MER2023's test3) are scored on the discrete label only.
"""

from __future__ import annotations

import numpy as np


def score(logits, labels, valence_pred=None, valence_true=None) -> dict:
    """Metrics for one split. MSE and combined appear only where valence labels exist."""
    # imported here: scikit-learn takes seconds to import, and `predict` never scores
    from sklearn.metrics import accuracy_score, f1_score, mean_squared_error

    pred = np.asarray(logits).argmax(axis=1)
    labels = np.asarray(labels)
    out = {
        "f1": float(f1_score(labels, pred, average="weighted")),
        "acc": float(accuracy_score(labels, pred)),
    }
    if valence_pred is not None and valence_true is not None:
        vt = np.asarray(valence_true, dtype=np.float64)
        if not np.isnan(vt).any():
            out["mse"] = float(mean_squared_error(vt, np.asarray(valence_pred, np.float64)))
            out["combined"] = out["f1"] - 0.25 * out["mse"]
    return out
