"""The MERTools importer: good imports round-trip, every bad input is a clear InputError."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mer_ray.data.constants import MER2023, MER_CLASSES as CLASSES
from mer_ray.data.mertools import import_mertools
from mer_ray.data.store import read_store
from mer_ray.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
FEATS = {
    "audio": ("chinese-hubert-large-UTT", 8),
    "text": ("Baichuan-13B-Base-UTT", 16),
    "video": ("clip-vit-large-patch14-UTT", 4),
}
# name, split, discrete, valence
ROWS = [
    ("sample_00001", "train", "happy", "1.5"),
    ("sample_00002", "train", "Sad", "-2"),
    ("sample_00003", "train", "neutral", "0.25"),
    ("sample_00004", "test1", "angry", "0.5"),
    ("sample_00005", "test2", "worried", "-1"),
    ("sample_00006", "test3", "surprise", "-10"),
    # every class needs a training sample
    ("sample_00007", "train", "angry", "-1.5"),
    ("sample_00008", "train", "worried", "-0.5"),
    ("sample_00009", "train", "surprise", "1"),
]


def vec(name: str, m: str) -> np.ndarray:
    seed = int(name.split("_")[1]) * 10 + list(FEATS).index(m)
    return np.random.default_rng(seed).standard_normal(FEATS[m][1]).astype(np.float32)


def make_features(root: Path, names=None) -> Path:
    feats = root / "features"
    for m, (folder, _) in FEATS.items():
        (feats / folder).mkdir(parents=True, exist_ok=True)
        for name in names or [r[0] for r in ROWS]:
            np.save(feats / folder / f"{name}.npy", vec(name, m))
    return feats


def write_csv(path: Path, rows=ROWS, header="name,split,discrete,valence") -> Path:
    lines = [header] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_split_dir(path: Path, rows=ROWS) -> Path:
    path.mkdir()
    by_split: dict[str, list] = {}
    for n, s, e, v in rows:
        by_split.setdefault(s, []).append((n, e, v))
    for s, rs in by_split.items():
        write_csv(path / f"{s}.csv", rs, header="name,discrete,valence")
    return path


@pytest.fixture
def tree(tmp_path):
    feats = make_features(tmp_path)
    labels = write_csv(tmp_path / "labels.csv")
    return feats, labels, tmp_path / "store"


def run(feats, labels, out, **kw):
    return import_mertools(str(feats), str(labels), str(out), progress=False, **kw)


def assert_nothing_written(out: Path):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def check_roundtrip(out: Path, rows=ROWS):
    st = read_store(out, verify=True)
    assert list(st.names) == [r[0] for r in rows]
    assert list(st.split) == [r[1] for r in rows]
    assert [CLASSES[i] for i in st.emotion] == [r[2].lower() for r in rows]
    for (n, s, _, v), got in zip(rows, st.valence):
        if s == "test3" or v == "":
            assert np.isnan(got)
        else:
            assert got == pytest.approx(float(v))
    for m, (folder, dim) in FEATS.items():
        assert st.feature(m).shape == (len(rows), dim)
        assert st.manifest["modalities"][m] == [{"feature": folder, "dim": dim, "column": m}]
    return st


def test_good_import_roundtrips(tree):
    feats, labels, out = tree
    # a 2-D [T, D] file is averaged over T
    frames = np.arange(3 * 16, dtype=np.float32).reshape(3, 16)
    np.save(feats / FEATS["text"][0] / "sample_00002.npy", frames)
    assert run(feats, labels, out) == str(out)
    st = check_roundtrip(out)
    np.testing.assert_allclose(st.feature("text")[1], frames.mean(axis=0))
    np.testing.assert_allclose(st.feature("audio")[0], vec("sample_00001", "audio"))
    assert st.manifest["source"] == f"mertools:{feats}"
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_split_dir_form(tmp_path):
    feats = make_features(tmp_path)
    labels = write_split_dir(tmp_path / "labels")
    out = tmp_path / "store"
    run(feats, labels, out)
    check_roundtrip(out, sorted(ROWS, key=lambda r: ("train", "test1", "test2", "test3").index(r[1])))


def write_npz(path: Path) -> Path:
    corpora = {}
    for n, s, e, v in ROWS:
        corpora.setdefault(f"{s}_corpus", {})[n] = {"emo": e, "val": float(v) if v else -10.0}
    np.savez(path, **{k: np.array(d, dtype=object) for k, d in corpora.items()})
    return path


def test_npz_needs_trust_pickle(tmp_path):
    feats = make_features(tmp_path)
    labels = write_npz(tmp_path / "label-6way.npz")
    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"pickled code.*--trust-pickle"):
        run(feats, labels, out)
    assert_nothing_written(out)
    run(feats, labels, out, trust_pickle=True)
    st = read_store(out)
    by_split = sorted(ROWS, key=lambda r: ("train", "test1", "test2", "test3").index(r[1]))
    assert list(st.names) == [r[0] for r in by_split]
    assert st.dataset == MER2023  # test3's -10 is "no valence"
    assert np.isnan(st.valence[st.split == "test3"]).all()
    assert st.valence[0] == pytest.approx(1.5)


def test_overwrite(tree):
    feats, labels, out = tree
    out.mkdir()
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        run(feats, labels, out)
    run(feats, labels, out, overwrite=True)
    check_roundtrip(out)


def test_unlabelled_extra_samples_are_kept_and_counted(tree, capsys):
    feats, labels, out = tree
    extra = [f"sample_09{i:03d}" for i in range(10)]
    make_features(feats.parent, extra)
    run(feats, labels, out)
    assert "10 sample(s) with features and no label: kept as unlabelled split 'unlabelled'" \
        in capsys.readouterr().err
    st = read_store(out, verify=True)
    assert list(st.names[st.rows("unlabelled")]) == extra
    assert (st.emotion[st.rows("unlabelled")] == -1).all()
    assert st.dataset.split("unlabelled").role == "unlabelled"
    np.testing.assert_array_equal(st.feature("audio")[st.rows("unlabelled")][3],
                                  vec(extra[3], "audio"))
    # --drop-unlabelled leaves them out, and says so
    run(feats, labels, out, keep_unlabelled=False, overwrite=True)
    assert "have no label and were left out" in capsys.readouterr().err
    check_roundtrip(out)


# ---- bad inputs: (mutate tree) -> expected message -------------------------------------

def _rm_feature(feats, labels):
    (feats / FEATS["video"][0] / "sample_00004.npy").unlink()


def _wrong_dim(feats, labels):
    np.save(feats / FEATS["text"][0] / "sample_00005.npy", np.ones(12, np.float32))


def _nan(feats, labels):
    x = vec("sample_00003", "audio")
    x[2] = np.nan
    np.save(feats / FEATS["audio"][0] / "sample_00003.npy", x)


def _inf(feats, labels):
    x = vec("sample_00003", "audio")
    x[0] = np.inf
    np.save(feats / FEATS["audio"][0] / "sample_00003.npy", x)


def _truncated(feats, labels):
    p = feats / FEATS["audio"][0] / "sample_00002.npy"
    p.write_bytes(p.read_bytes()[:-10])


def _not_npy(feats, labels):
    (feats / FEATS["audio"][0] / "sample_00002.npy").write_text("hello, not numpy\n")


def _pickled_npy(feats, labels):
    with open(feats / FEATS["audio"][0] / "sample_00002.npy", "wb") as f:
        pickle.dump({"a": 1}, f)


def _bad_emotion(feats, labels):
    write_csv(labels, ROWS[:2] + [("sample_00003", "train", "bored", "0")] + ROWS[3:])


def _two_splits(feats, labels):
    write_csv(labels, ROWS + [("sample_00001", "test1", "happy", "1")])


def _no_train(feats, labels):
    write_csv(labels, [r for r in ROWS if r[1] != "train"])


def _no_split_col(feats, labels):
    write_csv(labels, [(n, e, v) for n, _, e, v in ROWS], header="name,discrete,valence")


def _bad_valence(feats, labels):
    write_csv(labels, [("sample_00001", "train", "happy", "high")] + ROWS[1:])


def _empty_valence(feats, labels):
    write_csv(labels, [("sample_00001", "train", "happy", "")] + ROWS[1:])


def _missing_folder(feats, labels):
    folder = feats / FEATS["text"][0]
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


def _unknown_split(feats, labels):
    write_csv(labels, ROWS + [("sample_00007", "dev", "happy", "1")])


BAD = {
    "missing feature file": (_rm_feature, r"clip-vit-large-patch14-UTT/sample_00004\.npy.*missing"),
    "wrong dim": (_wrong_dim, r"sample_00005 in Baichuan-13B-Base-UTT has 12 values, expected 16"),
    "nan": (_nan, r"sample_00003 in chinese-hubert-large-UTT has 1 NaN or Inf"),
    "inf": (_inf, r"sample_00003 in chinese-hubert-large-UTT has 1 NaN or Inf"),
    "truncated npy": (_truncated, r"sample_00002\.npy.*not a readable \.npy"),
    "not npy": (_not_npy, r"sample_00002\.npy.*not a readable \.npy"),
    "pickled npy": (_pickled_npy, r"sample_00002\.npy.*not a readable \.npy"),
    "unknown emotion": (_bad_emotion, r"sample_00003.*unknown emotion 'bored'.*neutral, angry, happy"),
    "two splits": (_two_splits, r"sample_00001 is in two splits \(train and test1\)"),
    "no train": (_no_train, r"split train is missing or empty"),
    "no split column": (_no_split_col, r"labels\.csv: missing column\(s\) split"),
    "bad valence": (_bad_valence, r"sample_00001.*valence 'high' is not a number"),
    "empty valence": (_empty_valence, r"sample_00001.*valence is empty; a number is required in split train"),
    "missing folder": (_missing_folder, r"text feature folder Baichuan-13B-Base-UTT not found"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(tree, case):
    feats, labels, out = tree
    mutate, pattern = BAD[case]
    mutate(feats, labels)
    with pytest.raises(InputError, match=pattern):
        run(feats, labels, out)
    assert_nothing_written(out)


def test_empty_split_file(tmp_path):
    feats = make_features(tmp_path)
    labels = write_split_dir(tmp_path / "labels")
    (labels / "test2.csv").write_text("name,discrete,valence\n")
    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"test2\.csv: split test2 is empty"):
        run(feats, labels, out)
    assert_nothing_written(out)


def test_empty_npz_split(tmp_path):
    feats = make_features(tmp_path)
    labels = tmp_path / "label-6way.npz"
    np.savez(labels, train_corpus=np.array({"sample_00001": {"emo": "happy", "val": 1.0}}),
             test1_corpus=np.array({}, dtype=object))
    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"split test1 \(test1_corpus\) is empty"):
        run(feats, labels, out, trust_pickle=True)
    assert_nothing_written(out)


def test_out_checked_before_reading(tmp_path):
    out = tmp_path / "store"
    out.mkdir()
    # features and labels don't even exist: the out check comes first
    with pytest.raises(InputError, match="already exists"):
        run(tmp_path / "nope", tmp_path / "nope.csv", out)


def test_cli_bad_input_exit_2(tree):
    feats, labels, out = tree
    _bad_emotion(feats, labels)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "mer_ray.cli", "data", "import", "--features", str(feats),
         "--labels", str(labels), "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "unknown emotion 'bored'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_nothing_written(out)
