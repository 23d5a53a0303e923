import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from mer_ray.data.constants import MER2023, MER2023_COUNTS, MER2023_FEATURES, MODALITIES

SPLITS = [s.name for s in MER2023.splits]
from mer_ray.data.synth import generate, split_counts
from mer_ray.data.synth_files import synthesize


@pytest.fixture(scope="module")
def data():
    return generate(seed=0, scale=0.3)


def test_counts_full_scale_match_mer2023():
    assert split_counts(1.0) == {s: list(MER2023_COUNTS[s]) for s in SPLITS}
    assert sum(map(sum, split_counts(1.0).values())) == 3373 + 411 + 412 + 834


def test_counts_dims_and_valence(data):
    names, split, emotion, valence, feats = data[:5]
    for s in SPLITS:
        assert np.bincount(emotion[split == s], minlength=6).tolist() == split_counts(0.3)[s]
    for m in MODALITIES:
        assert feats[m].shape == (len(names), MER2023_FEATURES[m][1])
    assert np.isnan(valence[split == "test3"]).all()
    tv = valence[split == "train"]
    assert tv.min() >= -5 and tv.max() <= 4.25
    # valence goes with the class: happy above sad
    assert tv[emotion[split == "train"] == 2].mean() > tv[emotion[split == "train"] == 3].mean() + 2


def test_deterministic(data):
    again = generate(seed=0, scale=0.3)
    for a, b in zip(data[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    for m in MODALITIES:
        np.testing.assert_array_equal(data[4][m], again[4][m])
    other = generate(seed=1, scale=0.3)
    assert not np.array_equal(data[4]["audio"], other[4]["audio"])


def test_logistic_regression_difficulty_band(data):
    names, split, emotion, valence, feats = data[:5]
    x = np.concatenate([feats[m] for m in MODALITIES], axis=1)
    tr = split == "train"
    sc = StandardScaler().fit(x[tr])
    clf = LogisticRegression(max_iter=300, C=0.05).fit(sc.transform(x[tr]), emotion[tr])
    f1 = {s: f1_score(emotion[split == s], clf.predict(sc.transform(x[split == s])),
                      average="weighted") for s in ("test1", "test2")}
    assert 0.55 <= f1["test1"] <= 0.80, f1
    assert f1["test2"] < f1["test1"] - 0.02, f1


def test_writes_mertools_layout(tmp_path):
    out = synthesize(tmp_path / "syn", seed=0, scale=0.02, progress=False)
    lines = (out / "labels.csv").read_text().splitlines()
    assert lines[0] == "name,split,discrete,valence"
    n = len(lines) - 1
    for m in MODALITIES:
        files = list((out / "features" / MER2023_FEATURES[m][0]).glob("*.npy"))
        assert len(files) == n
        assert np.load(files[0]).shape == (MER2023_FEATURES[m][1],)
    assert all(l.endswith(",") for l in lines[1:] if ",test3," in l)  # no valence
