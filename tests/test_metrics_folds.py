import numpy as np
import pytest

from mer_ray.train.folds import make_folds
from mer_ray.train.metrics import score


def test_metrics_hand_computed():
    logits = np.eye(6)[[0, 0, 1, 1]]  # predictions 0, 0, 1, 1
    labels = np.array([0, 1, 1, 1])
    # class 0: P=1/2 R=1 F1=2/3 (support 1); class 1: P=1 R=2/3 F1=0.8 (support 3)
    f1 = (1 * 2 / 3 + 3 * 0.8) / 4
    out = score(logits, labels, np.array([0.0, 1, 2, 3]), np.array([1.0, 1, 2, 5]))
    assert out["acc"] == pytest.approx(0.75)
    assert out["f1"] == pytest.approx(f1)
    assert out["mse"] == pytest.approx((1 + 0 + 0 + 4) / 4)
    assert out["combined"] == pytest.approx(f1 - 0.25 * 1.25)


def test_no_valence_scores_discrete_only():
    out = score(np.eye(6)[[0, 1]], np.array([0, 1]), np.zeros(2), np.full(2, np.nan))
    assert set(out) == {"f1", "acc"}


def test_folds_stratified_and_repeatable():
    labels = np.repeat(np.arange(6), [50, 40, 30, 20, 15, 10])
    a, b = make_folds(labels, 5, 7), make_folds(labels, 5, 7)
    c = make_folds(labels, 5, 8)
    for (tr, te), (tr2, te2) in zip(a, b):
        np.testing.assert_array_equal(te, te2)
        assert len(np.intersect1d(tr, te)) == 0
        assert np.bincount(labels[te]).tolist() == [10, 8, 6, 4, 3, 2]
    held = np.sort(np.concatenate([te for _, te in a]))
    np.testing.assert_array_equal(held, np.arange(len(labels)))
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c))
