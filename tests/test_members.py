import numpy as np
import pytest

from mer_ray.errors import InputError
from mer_ray.data.constants import MER2023
from mer_ray.runs.members import existing_member_ids, list_member_files, read_member, weights_path, write_member
from mer_ray.train.result import MASKS, MemberResult, SplitPredictions, mask_key, member_id
from mer_ray.train.presets import PRESETS

PRED_SPLITS = ("oof",) + MER2023.test_splits


def fake_member(seed=0, weights=True):
    import torch

    rng = np.random.default_rng(seed)
    cfg = PRESETS["robust_v3"].to_dict()
    preds = {}
    for i, s in enumerate(PRED_SPLITS):
        n = 3 + i
        preds[s] = SplitPredictions(
            names=np.array([f"{s}_{j}" for j in range(n)]),
            logits=rng.normal(size=(n, 6)).astype(np.float32),
            valence=rng.normal(size=n).astype(np.float32),
            label=rng.integers(0, 6, n),
            valence_label=np.full(n, np.nan if s == "test3" else 0.5, np.float32),
            masked={mask_key(m): (rng.normal(size=(n, 6)).astype(np.float32),
                                  rng.normal(size=n).astype(np.float32)) for m in MASKS},
        )
    return MemberResult(member_id=member_id(cfg, 1, seed), config=cfg, fold=1, seed=seed,
                        best_epoch=41, epochs_run=80, metrics={"oof": {"f1": 0.5}},
                        history=[{"epoch": 0, "loss": 1.0}], classes=list("abcdef"),
                        store={"content_hash": "x"}, predictions=preds,
                        weights={"emotion.W": torch.ones(4, 6), "emotion.b": torch.zeros(1, 6)}
                        if weights else None)


def test_member_id_stable_and_distinct():
    cfg = PRESETS["robust_v3"].to_dict()
    assert member_id(cfg, 0, 0) == member_id(dict(cfg), 0, 0)
    ids = {member_id(cfg, f, s) for f in range(5) for s in range(3)}
    ids.add(member_id(PRESETS["robust_v3"].replace(warmup=40).to_dict(), 0, 0))
    assert len(ids) == 16
    assert member_id(cfg, 2, 3).startswith("robust_v3-w30-f2-s3-")


def test_round_trip(tmp_path):
    m = fake_member()
    path = write_member(m, tmp_path / "run")
    assert existing_member_ids(tmp_path / "run") == {m.member_id}
    # the weights file is half of a member: without it the member is not complete
    import os

    os.unlink(weights_path(path))
    assert existing_member_ids(tmp_path / "run") == set()
    path = write_member(m, tmp_path / "run")
    assert list_member_files(tmp_path) == [path]
    r = read_member(path)
    assert (r.member_id, r.fold, r.seed, r.best_epoch) == (m.member_id, 1, 0, 41)
    assert r.config == m.config and r.history == m.history
    for s in PRED_SPLITS:
        a, b = m.predictions[s], r.predictions[s]
        np.testing.assert_array_equal(a.names, b.names)
        np.testing.assert_array_equal(a.logits, b.logits)
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(np.isnan(a.valence_label), np.isnan(b.valence_label))
        for k in a.masked:
            np.testing.assert_array_equal(a.masked[k][0], b.masked[k][0])


def test_corrupt_file_named(tmp_path):
    path = write_member(fake_member(), tmp_path / "run")
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(InputError, match=str(path)):
        read_member(path)
