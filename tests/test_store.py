import json

import numpy as np
import pytest

from mer_ray.data.constants import MER_CLASSES as CLASSES, MODALITIES
from mer_ray.data.manifest import summary_table
from mer_ray.data.store import read_store, write_store
from mer_ray.errors import InputError

DIMS = {"audio": 8, "text": 16, "video": 4}
NAMES = {m: f"{m}-feat" for m in MODALITIES}


def small(n=12, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"s{i:03d}" for i in range(n)]
    split = np.array(["train"] * (n - 4) + ["test1", "test2", "test3", "test3"])
    emotion = rng.integers(0, 6, n)
    valence = rng.normal(size=n).astype(np.float32)
    valence[split == "test3"] = np.nan
    feats = {m: rng.normal(size=(n, d)).astype(np.float32) for m, d in DIMS.items()}
    return names, split, emotion, valence, feats


def test_round_trip(tmp_path):
    names, split, emotion, valence, feats = small()
    write_store(tmp_path / "st", names, split, emotion, valence, feats, NAMES, source="t")
    st = read_store(tmp_path / "st", verify=True)
    assert list(st.names) == names
    assert list(st.split) == list(split)
    np.testing.assert_array_equal(st.emotion, emotion)
    np.testing.assert_array_equal(np.isnan(st.valence), split == "test3")
    np.testing.assert_allclose(st.valence[split != "test3"], valence[split != "test3"])
    for m in MODALITIES:
        np.testing.assert_array_equal(st.feature(m), feats[m])
        assert st.feature(m).dtype == np.float32
    assert st.classes == list(CLASSES) and st.dataset.name == "MER2023"
    assert st.manifest["modalities"]["text"] == [{"feature": "text-feat", "dim": 16,
                                                   "column": "text"}]
    assert list(st.rows("test3")) == [10, 11]
    assert "test3" in summary_table(st)


def test_refuses_existing_and_leaves_no_temp(tmp_path):
    args = small()
    write_store(tmp_path / "st", *args, NAMES, source="t")
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        write_store(tmp_path / "st", *args, NAMES, source="t")
    write_store(tmp_path / "st", *args, NAMES, source="t", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st"]


def test_tampered_data_fails_verification(tmp_path):
    names, split, emotion, valence, feats = small()
    write_store(tmp_path / "st", names, split, emotion, valence, feats, NAMES, source="t")
    mf = tmp_path / "st" / "manifest.json"
    m = json.loads(mf.read_text())
    m["content_hash"] = "0" * 64
    mf.write_text(json.dumps(m))
    read_store(tmp_path / "st")  # unverified read still works
    with pytest.raises(InputError, match="content hash"):
        read_store(tmp_path / "st", verify=True)


def test_not_a_store(tmp_path):
    with pytest.raises(InputError, match="not a feature store"):
        read_store(tmp_path)
