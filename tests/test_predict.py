"""Keep what you train: `mer-ray predict` on a run's kept weights, on real files.

One run (a MERTools tree with 10 extra unlabelled samples, imported and trained) serves
every test: predictions must equal what the members stored, submissions what `ensemble
score` writes, and every bad input is exit 2 with nothing written."""

import csv
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from mer_ray.cli.main import main
from mer_ray.data.constants import MER2023_FEATURES
from mer_ray.data.store import read_store
from mer_ray.data.synth_files import synthesize
from mer_ray.runs.members import list_member_files, read_member
from raytools import set_args

EXTRA = [f"new_{i:03d}" for i in range(10)]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    tree = synthesize(root / "tree", seed=0, scale=0.05, progress=False)
    rng = np.random.default_rng(1)
    for m, (folder, dim) in MER2023_FEATURES.items():  # features nobody labelled
        for name in EXTRA:
            np.save(tree / "features" / folder / f"{name}.npy",
                    rng.normal(size=dim).astype(np.float32) * 0.2)
    store, run = root / "store", root / "run"
    assert main(["data", "import", "--features", str(tree / "features"), "--labels",
                 str(tree / "labels.csv"), "--out", str(store), "--quiet"]) == 0
    assert main(["train", "--store", str(store), "--out", str(run), "--no-ray", "--seeds",
                 "0", "1", "--pack-size", "10", *set_args()]) == 0
    return tree, store, run


def predict(run, out, *args):
    return main(["predict", str(run), "--out", str(out), "--quiet", *map(str, args)])


def test_import_keeps_and_reports_the_unlabelled_samples(trained, capsys):
    _, store, run = trained
    st = read_store(store)
    assert sorted(st.names[st.rows("unlabelled")]) == EXTRA
    assert main(["ensemble", "score", str(run)]) == 0
    out = capsys.readouterr().out
    assert "unlabelled: 10 samples, no labels: predictions only" in out
    sub = rows(run / "ensemble" / "submission_unlabelled.csv")
    assert sub[0] == ["name", "discrete", "valence"] and [r[0] for r in sub[1:]] == EXTRA


@pytest.mark.parametrize("strategy", ["mean", "greedy"])
def test_predict_a_store_split_equals_the_stored_predictions(trained, tmp_path, capsys, strategy):
    _, store, run = trained
    out = tmp_path / "p"
    assert predict(run, out, "--store", store, "--split", "test2", "--strategy", strategy) == 0
    text = capsys.readouterr().out
    assert "predicted 21 samples with 10 members" in text and "reading" in text
    assert "loading the members" in text and "the rest (importing torch, checks)" in text
    # every member's logits on test2: as its member file holds them
    table = pq.read_table(out / "member_logits.parquet").to_pydict()
    for f in list_member_files(run):
        m = read_member(f)
        mine = [i for i, mid in enumerate(table["member_id"]) if mid == m.member_id]
        got = np.array([table["logits"][i] for i in mine])
        np.testing.assert_array_equal(got, m.predictions["test2"].logits)  # bit for bit
    # and the submission is the one `ensemble score` writes with that strategy
    assert main(["ensemble", "score", str(run), "--strategy", strategy,
                 "--out", str(tmp_path / "e")]) == 0
    ours, theirs = rows(out / "submission.csv"), rows(tmp_path / "e" / "submission_test2.csv")
    assert [r[:2] for r in ours] == [r[:2] for r in theirs]
    np.testing.assert_allclose([float(r[2]) for r in ours[1:]],
                               [float(r[2]) for r in theirs[1:]], atol=1e-5)


def test_predict_an_unlabelled_feature_folder(trained, tmp_path, capsys):
    tree, _, run = trained
    only_new = tmp_path / "features"
    for folder, _ in MER2023_FEATURES.values():
        (only_new / folder).mkdir(parents=True)
        for name in EXTRA:
            shutil.copy(tree / "features" / folder / f"{name}.npy", only_new / folder)
    assert predict(run, tmp_path / "p", "--features", only_new) == 0
    assert "predicted 10 samples with 10 members" in capsys.readouterr().out
    sub = rows(tmp_path / "p" / "submission.csv")
    assert [r[0] for r in sub[1:]] == EXTRA
    # the same as predicting the store's unlabelled split (same features, same members)
    assert predict(run, tmp_path / "q", "--store", trained[1], "--split", "unlabelled") == 0
    assert rows(tmp_path / "q" / "submission.csv") == sub


def test_python_api(trained):
    from mer_ray.predict import Predictor

    predictor = Predictor.load(trained[2], where="seed == 1")
    out = predictor.predict_store(read_store(trained[1]), "test1")
    assert len(out.member_logits) == 5 and out.probabilities.shape == (20, 6)
    np.testing.assert_allclose(out.probabilities.sum(1), 1, atol=1e-6)
    assert set(out.labels) <= set(out.classes)
    x = {m: read_store(trained[1]).feature(m)[:3] for m in ("audio", "text", "video")}
    again = predictor.predict_arrays(x)
    assert again.probabilities.shape == (3, 6)



def test_predict_runs_with_denormals_flushed_as_training_does(trained):
    """A fresh process that only predicts (it never imports the trainer) flushes
    denormals before the first forward pass, as training does: otherwise weights near
    zero take the CPU's slow denormal path and the logits could differ from the stored."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from mer_ray.predict import Predictor\n"
            "assert (torch.tensor([1e-39]) * 1.0).item() != 0.0  # not flushed yet\n"
            f"Predictor.load({str(trained[2])!r}, where='seed == 1')\n"
            "assert 'mer_ray.train.trainer' not in sys.modules\n"
            "print((torch.tensor([1e-39]) * 1.0).item())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.0"]


# ---- bad input: exit 2, named, nothing written ----------------------------------------

def features_copy(tree, tmp_path):
    dst = tmp_path / "features"
    shutil.copytree(tree / "features", dst)
    return dst


def test_bad_feature_folders(trained, tmp_path, capsys):
    tree, _, run = trained
    audio = MER2023_FEATURES["audio"][0]
    feats = features_copy(tree, tmp_path)
    out = tmp_path / "p"

    np.save(feats / audio / "new_003.npy", np.zeros(512, np.float32))
    assert predict(run, out, "--features", feats) == 2
    err = capsys.readouterr().err
    assert "new_003 in chinese-hubert-large-UTT has 512 values" in err and "1024" in err
    assert not out.exists()

    x = np.zeros(1024, np.float32)
    x[7] = np.inf
    np.save(feats / audio / "new_003.npy", x)
    assert predict(run, out, "--features", feats) == 2
    assert "new_003.npy: sample new_003 in chinese-hubert-large-UTT has 1 NaN or Inf" in \
        capsys.readouterr().err and not out.exists()

    (feats / audio / "new_003.npy").unlink()
    assert predict(run, out, "--features", feats) == 2
    err = capsys.readouterr().err
    assert "sample new_003 has no audio feature chinese-hubert-large-UTT (1 sample(s) lack " \
           "it)" in err and "--missing zero" in err and not out.exists()
    assert predict(run, out, "--features", feats, "--missing", "zero") == 0
    assert "1 sample(s) had no audio (chinese-hubert-large-UTT); that modality was zeroed" \
        in capsys.readouterr().out

    shutil.move(feats / audio, tmp_path / "elsewhere")
    assert predict(run, tmp_path / "p2", "--features", feats) == 2
    assert "no folder chinese-hubert-large-UTT" in capsys.readouterr().err
    assert not (tmp_path / "p2").exists()


def test_out_exists_and_a_run_without_weights(trained, tmp_path, capsys):
    _, store, run = trained
    out = tmp_path / "p"
    out.mkdir()
    assert predict(run, out, "--store", store, "--split", "test1") == 2
    assert "already exists" in capsys.readouterr().err and not list(out.iterdir())
    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    for w in (old / "members").glob("*.safetensors"):
        w.unlink()
    assert predict(old, tmp_path / "q", "--store", store) == 2
    err = capsys.readouterr().err
    assert "predates kept weights" in err and "retrain" in err
    assert not (tmp_path / "q").exists()
