"""Scoring predictions split by split, and the MERTools-style text table.

Scores are keyed by the table's row names: "cv" (the out-of-fold predictions), then
each labelled test split in the dataset's order. Valence (MSE and combined) is scored
only where the model predicts it and the split has valence labels (MER2023's test3 has
none; MER2024 onwards have none at all). Unlabelled splits are never scored: the table
lists them as "N samples, no labels: predictions only".
"""

from __future__ import annotations

import math

from mer_ray.data.dataset import Dataset
from mer_ray.train.metrics import score
from mer_ray.train.result import OOF

CV = "cv"
COLUMNS = (("F1", "f1"), ("acc", "acc"), ("MSE", "mse"), ("combined", "combined"))


def row_split(row: str) -> str:
    """Table row -> member-file split ("cv" is the out-of-fold split)."""
    return OOF if row == CV else row


def rows_of(dataset: Dataset) -> list[str]:
    """The scored rows: cv, then the labelled test splits."""
    return [CV, *dataset.scored_splits]


def score_split(split: str, pred, dataset: Dataset) -> dict:
    """Metrics of one labelled split's predictions (a SplitPredictions-like object)."""
    with_valence = dataset.has_valence if split == OOF else dataset.scores_valence(split)
    if with_valence and pred.valence is not None:
        return score(pred.logits, pred.label, pred.valence, pred.valence_label)
    return score(pred.logits, pred.label)


def score_splits(predictions: dict, dataset: Dataset) -> dict:
    """{row: metrics} for every scored row whose split is in `predictions`."""
    return {row: score_split(row_split(row), predictions[row_split(row)], dataset)
            for row in rows_of(dataset) if row_split(row) in predictions}


def unlabelled_lines(predictions: dict, dataset: Dataset) -> list[str]:
    return [f"{s}: {len(predictions[s].names)} samples, no labels: predictions only"
            for s in dataset.unlabelled_splits if s in predictions]


def _cell(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def columns_for(scores: dict) -> list[tuple[str, str]]:
    """F1 and acc always; MSE and combined where any row has them."""
    return [(n, k) for n, k in COLUMNS
            if k in ("f1", "acc") or any(k in s for s in scores.values())]


def format_table(scores: dict, title: str | None = None, notes=()) -> str:
    """Rows cv + labelled test splits x columns F1, acc[, MSE, combined] (blank where
    absent), then `notes` (the unlabelled splits' lines)."""
    width = 10
    cols = columns_for(scores)
    lines = [title] if title else []
    lines.append(f"{'':<7}" + "".join(f"{name:>{width}}" for name, _ in cols))
    for row, metrics in scores.items():
        cells = "".join(f"{_cell(metrics.get(key)):>{width}}" for _, key in cols)
        lines.append(f"{row:<7}{cells}".rstrip())
    lines += list(notes)
    return "\n".join(lines)
