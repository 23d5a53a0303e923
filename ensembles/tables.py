"""Scoring predictions split by split, and the MERTools-style text table.

Scores are keyed by the table's row names: "cv" (the out-of-fold predictions), then
"test1", "test2", "test3". test3 is scored on the discrete label only (MER-SEMI has
no valence), so its MSE and combined cells stay blank.
"""

from __future__ import annotations

import math

from mer_ray.constants import DISCRETE_ONLY_SPLITS
from mer_ray.metrics import score

ROWS = ("cv", "test1", "test2", "test3")
COLUMNS = (("F1", "f1"), ("acc", "acc"), ("MSE", "mse"), ("combined", "combined"))


def row_split(row: str) -> str:
    """Table row -> member-file split ("cv" is the out-of-fold split)."""
    return "oof" if row == "cv" else row


def score_split(split: str, pred) -> dict:
    """Metrics of one split's predictions (a SplitPredictions-like object)."""
    if split in DISCRETE_ONLY_SPLITS:
        return score(pred.logits, pred.label)
    return score(pred.logits, pred.label, pred.valence, pred.valence_label)


def score_splits(predictions: dict) -> dict:
    """{row: metrics} for every row whose split is in `predictions`."""
    return {
        row: score_split(row_split(row), predictions[row_split(row)])
        for row in ROWS
        if row_split(row) in predictions
    }


def _cell(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def format_table(scores: dict, title: str | None = None) -> str:
    """Rows cv/test1/test2/test3 x columns F1, acc, MSE, combined (blank where absent)."""
    width = 10
    lines = [title] if title else []
    lines.append(f"{'':<7}" + "".join(f"{name:>{width}}" for name, _ in COLUMNS))
    for row in ROWS:
        if row not in scores:
            continue
        cells = "".join(f"{_cell(scores[row].get(key)):>{width}}" for _, key in COLUMNS)
        lines.append(f"{row:<7}{cells}".rstrip())
    return "\n".join(lines)
