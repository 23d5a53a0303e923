"""Nothing silently wrong, no training lost: every class of bad input to `train` / `tune`
stops before the first epoch with exit 2, a message naming what is wrong, and no run
folder; what is fine still trains. In-process through mer_ray.cli.main (a traceback
would fail the test), on real files."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mer_ray.cli.main import main
from mer_ray.data.store import content_hash, read_store, write_store
from mer_ray.data.synth_files import synthesize_store
from mer_ray.errors import InputError
from mer_ray.runs.members import existing_member_ids
from raytools import set_args

FAST = set_args() + ["--set", "epochs=1"]


@pytest.fixture(scope="module")
def good_store(tmp_path_factory):
    return Path(synthesize_store(tmp_path_factory.mktemp("st") / "store", seed=0, scale=0.05))


@pytest.fixture
def store(good_store, tmp_path):
    """A private copy to damage."""
    path = tmp_path / "store"
    shutil.copytree(good_store, path)
    return path


def train(store, out, *extra, command="train"):
    return main([command, "--store", str(store), "--out", str(out), "--no-ray",
                 "--pack-size", "5", *FAST, *extra])


def refused(capsys, rc, *needles, out=None):
    err = capsys.readouterr().err
    assert rc == 2, err
    for n in needles:
        assert n in err, err
    if out is not None:
        assert not out.exists(), "a refused run left a run folder behind"
    return err


def rewrite_samples(store, change):
    """Change the data behind the manifest's back (damaged or edited bytes)."""
    path = store / "samples.parquet"
    table = pq.read_table(path)
    pq.write_table(change(table), path, compression="none")


def edit_manifest(store, change):
    mf = store / "manifest.json"
    m = json.loads(mf.read_text())
    change(m)
    mf.write_text(json.dumps(m))


# ---- silent wrong results -------------------------------------------------------------

def test_changed_store_bytes_are_caught_by_the_content_hash(store, tmp_path, capsys):
    def bump(table):
        video = table["video"].combine_chunks()
        x = video.flatten().to_numpy().copy()
        x[5] += 1.0
        arr = pa.FixedSizeListArray.from_arrays(pa.array(x), video.type.list_size)
        return table.set_column(table.schema.get_field_index("video"), "video", arr)

    rewrite_samples(store, bump)
    refused(capsys, train(store, tmp_path / "run"), "content hash", "re-create the store",
            out=tmp_path / "run")


def test_edited_manifest_dim_is_caught_not_reshaped(store, tmp_path, capsys):
    edit_manifest(store, lambda m: m["modalities"]["audio"][0].update(dim=512))
    refused(capsys, train(store, tmp_path / "run"),
            "the manifest says audio has 512 values per sample, but the data holds 1024",
            out=tmp_path / "run")


def test_nan_features_are_refused_before_training(store, tmp_path, capsys):
    # a writer that bypassed write_store's own check: NaN in the data and a manifest
    # hash that matches it
    st = read_store(store)
    text = st.feature("text").copy()
    text[7, 3] = np.nan

    def put(table):
        arr = pa.FixedSizeListArray.from_arrays(pa.array(text.reshape(-1)), text.shape[1])
        return table.set_column(table.schema.get_field_index("text"), "text", arr)

    rewrite_samples(store, put)
    cols = {"audio": st.feature("audio"), "text": text, "video": st.feature("video")}
    edit_manifest(store, lambda m: m.update(content_hash=content_hash(
        st.names, st.split, st.emotion, st.valence, cols)))
    refused(capsys, train(store, tmp_path / "run"), f"sample {st.names[7]}", "NaN or Inf",
            out=tmp_path / "run")
    with pytest.raises(InputError, match="NaN or Inf"):
        write_store(tmp_path / "direct", st.names, st.split, st.emotion, st.valence,
                    cols, {"audio": "a", "text": "t", "video": "v"})
    assert not (tmp_path / "direct").exists()


def test_five_class_names_against_six_class_labels(store, tmp_path, capsys):
    edit_manifest(store, lambda m: m["dataset"].update(classes=m["dataset"]["classes"][:5]))
    refused(capsys, train(store, tmp_path / "run"), "emotion index 5", out=tmp_path / "run")


# ---- plain mistakes: exit 2, never a traceback ----------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--set", "lr=inf"], "lr='inf': expected a learning rate in [0, 10]"),
    (["--set", "fold_seed=-1"], "fold_seed='-1'"),
    (["--set", "n_folds=100"], "n_folds=100: class 'surprise' has 7 training sample(s)"),
    (["--set", "hidden_dim=65536"], "needs about"),
    (["--set", "dropout=nan"], "dropout='nan'"),
    (["--seeds", "-3"], "--seeds -3"),
    (["--set", "audio_feature=wav2vec"], "no such audio feature"),
])
def test_bad_recipe_values_are_refused(good_store, tmp_path, capsys, args, needle):
    refused(capsys, train(good_store, tmp_path / "run", *args), needle, out=tmp_path / "run")


def test_bad_tune_grid_values_are_refused(good_store, tmp_path, capsys):
    out = tmp_path / "run"
    refused(capsys, train(good_store, out, "--warmup", "-5", command="tune"), "warmup", out=out)
    refused(capsys, train(good_store, out, "--grid", "lr=0.1,inf", command="tune"), "lr='inf'",
            out=out)


def test_bad_output_locations(good_store, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    refused(capsys, train(good_store, a_file), "is a file")
    refused(capsys, train(good_store, a_file / "run"), "is a file, so nothing can be created")
    refused(capsys, train(good_store, "foo://bucket/run"), "not a usable location")
    refused(capsys, train(good_store, good_store), "feature store's folder")
    refused(capsys, train(good_store, good_store / "run"), "feature store's folder")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_text("x")
    refused(capsys, train(good_store, other), "holiday.jpg", "not a mer-ray run", "--overwrite")
    assert (other / "holiday.jpg").exists()


def test_train_split_smaller_than_the_folds(tmp_path, capsys):
    rng = np.random.default_rng(0)
    names = [f"s{i}" for i in range(8)]
    split = ["train"] * 6 + ["test1"] * 2
    emotion = [0, 1, 2, 3, 4, 5, 0, 1]
    store = write_store(tmp_path / "small", names, split, emotion, rng.normal(size=8),
                        {m: rng.normal(size=(8, 4)).astype(np.float32)
                         for m in ("audio", "text", "video")},
                        {"audio": "a", "text": "t", "video": "v"})
    refused(capsys, train(store, tmp_path / "run"), "class 'neutral' has 1 training sample",
            out=tmp_path / "run")


def test_a_store_missing_a_modality_column(store, tmp_path, capsys):
    rewrite_samples(store, lambda t: t.drop(["video"]))
    refused(capsys, train(store, tmp_path / "run"), "column 'video' named by the manifest is "
            "missing", out=tmp_path / "run")


# ---- what is fine trains ---------------------------------------------------------------

def test_duplicate_seeds_train_once_with_a_note(good_store, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(good_store, out, "--seeds", "0", "0") == 0
    assert "seed 0 given twice; it is trained once" in capsys.readouterr().out
    assert len(existing_member_ids(out)) == 5


def test_warmup_past_the_last_epoch_is_a_warning(good_store, tmp_path, capsys):
    assert train(good_store, tmp_path / "run", "--set", "warmup=5") == 0
    assert "warmup 5 >= epochs 1" in capsys.readouterr().out


def test_a_store_with_train_and_test1_only_trains_and_scores(good_store, tmp_path, capsys):
    st = read_store(good_store)
    keep = np.isin(st.split, ["train", "test1"])
    path = write_store(tmp_path / "two", st.names[keep], st.split[keep], st.emotion[keep],
                       st.valence[keep], {m: st.feature(m)[keep] for m in st.modalities},
                       {m: st.feature_names(m)[0] for m in st.modalities})
    out = tmp_path / "run"
    assert train(path, out) == 0
    text = capsys.readouterr().out
    assert "test1" in text and "test2" not in text
    assert main(["ensemble", "score", str(out)]) == 0
    assert (out / "ensemble" / "submission_test1.csv").exists()


def test_resume_into_a_run_of_another_store_is_refused(good_store, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(good_store, out) == 0
    other = synthesize_store(tmp_path / "other", seed=1, scale=0.05)
    capsys.readouterr()
    refused(capsys, train(other, out), "another store")


def test_through_ray_a_bad_store_is_the_drivers_exit_2_before_ray_starts(store, tmp_path,
                                                                        capsys):
    import ray

    edit_manifest(store, lambda m: m["modalities"]["audio"][0].update(dim=512))
    rc = main(["tune", "--store", str(store), "--out", str(tmp_path / "run"), *FAST])
    refused(capsys, rc, "values per sample", out=tmp_path / "run")
    assert not ray.is_initialized()  # refused on the driver: no Ray, no worker traceback


def test_run_options_are_checked_by_the_library_naming_them_as_called(good_store, tmp_path):
    """One rule per run option (runs.preflight.check_options): the Python API names the
    parameter, the CLI its flag (`--pack-size 0` through `mer-ray`: test_package); nothing
    is written either way."""
    from mer_ray.runs.preflight import check_options, preflight
    from mer_ray.train.presets import get_preset

    with pytest.raises(InputError, match=r"^pack_size 0: must be at least 1"):
        preflight(str(good_store), [get_preset("baseline")], [0], str(tmp_path / "run"),
                  pack_size=0)
    assert not (tmp_path / "run").exists()
    with pytest.raises(InputError, match=r"^workers 0: must be at least 1") as caught:
        check_options(workers=0)
    assert caught.value.named({"workers": "--workers"}) == "--workers 0: must be at least 1"
    with pytest.raises(InputError, match=r"^gpus_per_worker 65.0: must be in \[0, 64\]"):
        check_options(gpus_per_worker=65.0)
    check_options(pack_size=1, workers=None, gpus_per_worker=0.5, log_every=1, wait_s=1.0)
