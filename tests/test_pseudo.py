"""The parts of self-training one at a time: the synthetic pool and prior shift, the
importer's pool split, the EM prior estimate, the selection rules, class weights and
soft targets in the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mer_ray.cli.main import main
from mer_ray.data.store import read_store
from mer_ray.data.synth import generate, planned_counts
from mer_ray.data.synth_files import synthesize, synthesize_store
from mer_ray.data.dataset import MODALITIES
from mer_ray.errors import InputError
from mer_ray.train.presets import TrainConfig
from mer_ray.runs.pseudo_labels import FoldLabels, PseudoLabels
from mer_ray.selftrain.pseudo import FoldVotes, capped_counts, select
from mer_ray.train.trainer import train_pack
from mer_ray.train.train_data import class_weights


# ---------------------------------------------------------------- synthetic data
def test_a_pool_and_a_test_prior_leave_every_other_sample_as_it_was():
    plain = generate(0, 0.05, dataset="mer2024")
    shifted = generate(0, 0.05, dataset="mer2024", pool=200,
                       test_prior="0.5,0.1,0.1,0.1,0.1,0.1")
    train = plain.split == "train"
    for m in MODALITIES:
        np.testing.assert_array_equal(shifted.features[m][shifted.split == "train"],
                                      plain.features[m][train])
    assert [(s.name, s.role) for s in shifted.dataset.splits][-1] == ("pool", "pool")
    counts = np.bincount(shifted.emotion[shifted.split == "test1"], minlength=6)
    assert counts.sum() == (plain.split == "test1").sum()
    assert abs(counts[0] - 0.5 * counts.sum()) <= 1 and counts.argmax() == 0
    pool = np.bincount(shifted.emotion[shifted.split == "pool"], minlength=6)
    assert pool.sum() == 200 and pool.argmax() == 0  # train's prior: neutral first
    # the pool does not depend on the test prior, nor the test split on the pool
    other = generate(0, 0.05, dataset="mer2024", pool=200)
    np.testing.assert_array_equal(other.features["audio"][other.split == "pool"],
                                  shifted.features["audio"][shifted.split == "pool"])


def test_mer2025_is_the_same_task_at_every_scale_with_a_pool_by_default():
    counts, extra = planned_counts(1.0, "mer2025")
    assert sum(counts["train"]) == 5030 and sum(counts["test1"]) == 20000
    assert sum(extra["pool"]) == 20000
    small = generate(0, 0.02, dataset="mer2025")
    assert [(s.name, s.role) for s in small.dataset.splits] == [
        ("train", "train"), ("test1", "unlabelled"), ("pool", "pool")]
    assert np.isnan(small.valence).all()


@pytest.mark.parametrize("prior, message", [
    ("0.5,0.5", r"2 value\(s\) for 6 classes"),
    ("0.5,0.5,0.1,0.1,0.1,-0.3", "non-negative class shares summing to 1"),
    ("0.2,0.2,0.2,0.2,0.2,0.2", "summing to 1"),
    ("a,b,c,d,e,f", "expected 6 numbers"),
])
def test_bad_test_priors_are_refused(prior, message):
    with pytest.raises(InputError, match=message):
        generate(0, 0.05, dataset="mer2025", test_prior=prior)


def test_synth_cli_refusals_and_truth_file(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "a"), "--test-prior",
                 "0.2,0.2,0.2,0.2,0.1,0.1", "--quiet"]) == 2
    assert "mer2023 has no unlabelled test split" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "b"), "--pool", "-3",
                 "--quiet"]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    tree = synthesize(tmp_path / "c", scale=0.05, dataset="toy4", pool=40, progress=False)
    truth = (tree / "truth.csv").read_text().splitlines()
    counts, extra = planned_counts(0.05, "toy4", 40)
    assert truth[0] == "name,split,discrete"
    assert len(truth) - 1 == sum(counts["final"]) + sum(extra["pool"]) == 10 + 40
    assert {line.split(",")[1] for line in truth[1:]} == {"final", "pool"}


# ---------------------------------------------------------------- the importer
def test_import_keeps_the_rest_as_a_pool_only_when_asked(tmp_path, capsys):
    tree = synthesize(tmp_path / "tree", scale=0.02, dataset="mer2025", progress=False)
    base = ["data", "import", "--features", str(tree / "features"), "--labels",
            str(tree / "track1_train_disdim.csv"), "--candidates",
            str(tree / "track_all_candidates.csv"), "--unlabelled-split", "test1", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "plain")]) == 0
    assert "neither labelled nor candidates; left out (--pool-split" in capsys.readouterr().err
    assert [s.name for s in read_store(tmp_path / "plain").dataset.splits] == ["train", "test1"]
    assert main(base + ["--out", str(tmp_path / "pooled"), "--pool-split", "pool"]) == 0
    st = read_store(tmp_path / "pooled", verify=True)
    assert [(s.name, s.role) for s in st.dataset.splits] == [
        ("train", "train"), ("test1", "unlabelled"), ("pool", "pool")]
    assert len(st.rows("pool")) == 400 and (st.emotion[st.rows("pool")] == -1).all()
    assert st.dataset.test_splits == ("test1",)  # members never predict the pool
    assert main(base + ["--out", str(tmp_path / "bad"), "--pool-split", "train"]) == 2
    assert "--pool-split train: the labels already have a split" in capsys.readouterr().err


# ---------------------------------------------------------------- the prior
def test_em_recovers_a_prior_shift_from_calibrated_posteriors():
    """Three 1-D Gaussian classes: the exact posteriors under train's prior, on a set
    drawn with another prior. EM moves the estimate to that prior."""
    from ensembles.prior import estimate_prior

    rng = np.random.default_rng(0)
    means, train, test = np.array([-2.0, 0.0, 2.0]), np.array([0.6, 0.3, 0.1]), \
        np.array([0.2, 0.3, 0.5])
    y = rng.choice(3, size=20000, p=test)
    x = rng.normal(means[y], 1.0)
    lik = np.exp(-0.5 * (x[:, None] - means[None, :]) ** 2)
    post = lik * train
    post /= post.sum(1, keepdims=True)
    shift = estimate_prior(post, train)
    assert np.abs(shift.estimate - test).sum() < 0.03
    assert shift.l1 > 0.7
    # argmax with the estimate is right more often than with train's prior
    assert (shift.probabilities.argmax(1) == y).mean() > (post.argmax(1) == y).mean() + 0.05
    with pytest.raises(InputError, match="needs at least 50"):
        estimate_prior(post[:10], train, "tiny")


# ---------------------------------------------------------------- the selection
def votes(probs, agreement=None):
    probs = np.asarray(probs, float)
    return FoldVotes(["t"], probs, np.ones(len(probs)) if agreement is None
                     else np.asarray(agreement, float))


def test_threshold_top_k_agreement_and_caps_select_what_they_say():
    cfg = TrainConfig(pseudo_round=1, pseudo_cap=None, pseudo_threshold=0.8)
    p = [[0.9, 0.1], [0.6, 0.4], [0.05, 0.95], [0.81, 0.19], [0.3, 0.7]]
    assert select(votes(p), cfg, [0.5, 0.5]).tolist() == [0, 2, 3]
    top = cfg.replace(pseudo_top_k=1)
    assert select(votes(p), top, [0.5, 0.5]).tolist() == [0, 2]  # the most sure per class
    agree = cfg.replace(pseudo_agreement=1.0)
    assert select(votes(p, [1, 1, 0.5, 1, 1]), agree, [0.5, 0.5]).tolist() == [0, 3]
    capped = cfg.replace(pseudo_cap=1.0, pseudo_threshold=0.5)
    many = [[0.9, 0.1]] * 8 + [[0.2, 0.8]] * 2  # the teachers say class 0 eight times
    kept = select(votes(many), capped, [0.5, 0.5])
    assert np.bincount(np.asarray(many)[kept].argmax(1), minlength=2).tolist() == [2, 2]


def test_caps_keep_as_much_as_the_shares_allow():
    share = 1.5 * np.array([0.25, 0.24, 0.21, 0.15, 0.12, 0.03])
    assert capped_counts(np.array([0, 0, 400, 0, 0, 0]), share).tolist() == [0] * 6
    assert capped_counts(np.array([100, 80, 60, 30, 20, 2]), share).tolist() == \
        [100, 80, 60, 30, 20, 2]
    kept = capped_counts(np.array([1000, 10, 10, 10, 10, 10]), share)
    assert kept[0] / kept.sum() <= share[0] + 1e-9 and kept[1:].tolist() == [10, 10, 10, 10, 3]


# ---------------------------------------------------------------- the trainer
@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    return read_store(synthesize_store(tmp_path_factory.mktemp("u") / "s", scale=0.5,
                                       dataset="toy4", pool=200))


def small(**kw):
    base = dict(hidden_dim=16, epochs=3, batch_size=16, warmup=1, dropout=0.2,
                modality_dropout=0.1, grad_clip=1.0, plateau_patience=0, lr=1e-3)
    return TrainConfig(**{**base, **kw})


def test_balanced_class_weights_are_scikit_learns_and_change_training(toy_store):
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 1, 2, 2])
    np.testing.assert_allclose(class_weights(y, 3), compute_class_weight(
        "balanced", classes=np.arange(3), y=y), rtol=1e-6)
    plain = train_pack(toy_store, small(), [(0, 0)])[0]
    again = train_pack(toy_store, small(), [(0, 0)])[0]
    balanced = train_pack(toy_store, small(class_weights="balanced"), [(0, 0)])[0]
    np.testing.assert_array_equal(plain.predictions["oof"].logits, again.predictions["oof"].logits)
    assert not np.array_equal(plain.predictions["oof"].logits,
                              balanced.predictions["oof"].logits)
    with pytest.raises(InputError, match="class_weights='inverse'"):
        small(class_weights="inverse")


def fold_labels(store, n, seed=0):
    rows = store.rows("pool")[:n]
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4), size=n).astype(np.float32)
    return FoldLabels(rows, probs.argmax(1), probs, {"file": "x", "rows": n})


def test_pseudo_rows_train_with_hard_and_soft_targets_and_are_never_held_out(toy_store):
    labels = PseudoLabels({-1: fold_labels(toy_store, 80)})
    hard = small(pseudo_round=1)
    soft = small(pseudo_round=1, pseudo_targets="soft")
    lighter = small(pseudo_round=1, pseudo_weight=0.1)
    out = {c: train_pack(toy_store, cfg, [(0, 0), (1, 0)], pseudo=labels)
           for c, cfg in (("hard", hard), ("soft", soft), ("light", lighter))}
    plain = train_pack(toy_store, small(), [(0, 0), (1, 0)])
    pool = set(toy_store.names[toy_store.rows("pool")])
    for name, results in out.items():
        for r, p in zip(results, plain):
            assert r.pseudo["rows"] == 80
            assert not pool & set(r.predictions["oof"].names)
            assert sorted(r.predictions["oof"].names) == sorted(p.predictions["oof"].names)
            assert not np.array_equal(r.predictions["oof"].logits, p.predictions["oof"].logits)
    assert not np.array_equal(out["hard"][0].predictions["oof"].logits,
                              out["soft"][0].predictions["oof"].logits)
    assert not np.array_equal(out["hard"][0].predictions["oof"].logits,
                              out["light"][0].predictions["oof"].logits)
    with pytest.raises(InputError, match="needs the pseudo-labels"):
        train_pack(toy_store, hard, [(0, 0)])


def test_a_student_is_the_same_in_any_pack(toy_store):
    """The pack invariant holds with pseudo-labelled rows too (members of different
    folds have different numbers of them)."""
    labels = PseudoLabels({f: fold_labels(toy_store, 20 + 15 * f, seed=f) for f in range(5)})
    cfg = small(pseudo_round=1, pseudo_targets="soft", class_weights="balanced")
    pack = train_pack(toy_store, cfg, [(0, 0), (3, 1), (1, 2)], pseudo=labels)
    alone = train_pack(toy_store, cfg, [(3, 1)], pseudo=labels)[0]
    np.testing.assert_array_equal(alone.predictions["oof"].logits,
                                  pack[1].predictions["oof"].logits)
    for name, w in alone.weights.items():
        assert torch.equal(w, pack[1].weights[name]), name
