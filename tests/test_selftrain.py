"""`mer-ray selftrain` on real files: a toy4 tree with an unlabelled pool, imported
through the MERTools importer, two self-training rounds in this process (and one
through Ray, in test_selftrain_ray.py). What a user would notice: where each student's
pseudo-labels came from (its own fold's teachers only), that no pseudo-labelled sample
is ever held out or scored, that rounds resume like any run, and that every bad input
stops before anything trains."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from mer_ray.cli.main import main
from mer_ray.data.store import read_store
from mer_ray.data.synth_files import read_truth, synthesize, synthesize_store
from mer_ray.runs.members import list_member_files, read_member, weights_path
from mer_ray.train.result import member_id
from mer_ray.train.presets import get_preset
from mer_ray.runs.pseudo_labels import labels_file, labels_meta

TOY = ["--audio", "toy-audio", "--text", "toy-text", "--video", "toy-video",
       "--classes", "calm,joy,anger,fear"]
RECIPE = ["--set", "epochs=30", "--set", "hidden_dim=32", "--set", "warmup=1",
          "--set", "early_stop_patience=none", "--set", "lr=0.003"]
ROUNDS = ["--rounds", "2", "--threshold", "0.7", "--all-rounds"]
SEEDS = ["--seeds", "0", "1"]


def recipe():
    return get_preset("robust_v3").replace(epochs=30, hidden_dim=32, warmup=1,
                                           early_stop_patience=None, lr=0.003)


def selftrain_args(store, run, *extra):
    return ["selftrain", "--store", str(store), "--out", str(run), *SEEDS, *RECIPE,
            "--no-ray", "--no-tensorboard", "--pack-size", "10", *map(str, extra)]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """toy4 with a pool of 300, imported; two rounds of self-training."""
    root = tmp_path_factory.mktemp("selftrain")
    tree = synthesize(root / "tree", scale=0.5, dataset="toy4", pool=300, progress=False)
    store = root / "store"
    assert main(["data", "import", "--features", str(tree / "features"), "--labels",
                 str(tree / "labels.csv"), "--candidates", str(tree / "candidates.csv"),
                 "--unlabelled-split", "final", "--pool-split", "pool", *TOY,
                 "--out", str(store), "--quiet"]) == 0
    run = root / "run"
    assert main(selftrain_args(store, run, *ROUNDS)) == 0
    members = [read_member(f) for f in list_member_files(run)]
    return tree, store, run, members


def by_round(members, r):
    return [m for m in members if m.config.get("pseudo_round", 0) == r]


def test_round_zero_is_the_plain_recipe(toy, capsys):
    _, store, run, members = toy
    zero = by_round(members, 0)
    cfg = recipe().to_dict()
    assert {m.member_id for m in zero} == {member_id(cfg, f, s) for f in range(5)
                                          for s in (0, 1)}
    assert all(m.pseudo is None for m in zero)
    # so `train` with the same recipe into the run finds every member saved
    assert main(["train", "--store", str(store), "--out", str(run), *SEEDS, *RECIPE,
                 "--no-ray", "--no-tensorboard"]) == 0
    assert "0 to train" in capsys.readouterr().out


def test_each_student_learns_only_from_its_own_folds_teachers(toy):
    _, store, run, members = toy
    st = read_store(store)
    pool = set(st.names[st.rows("pool")])
    ids = {m.member_id: m for m in members}
    students = [m for m in members if m.config.get("pseudo_round", 0) >= 1]
    assert len(students) == 20  # rounds 1 and 2, 5 folds x 2 seeds
    for s in students:
        src = s.pseudo
        assert src["round"] == s.config["pseudo_round"] and src["teacher_fold"] == s.fold
        table = labels_file(run, get_preset("robust_v3").replace(
            **{k: v for k, v in s.config.items() if k != "preset"}))
        assert src["file"] == table
        assert hashlib.sha256(open(table, "rb").read()).hexdigest() == src["sha256"]
        teachers = [ids[t] for t in src["teachers"]]
        assert len(teachers) == 2  # every seed of the fold
        for t in teachers:
            assert t.config.get("pseudo_round", 0) == s.config["pseudo_round"] - 1
            assert t.fold == s.fold
            # the teacher held out exactly the student's rows: it never trained on them
            assert sorted(t.predictions["oof"].names) == sorted(s.predictions["oof"].names)
    for m in members:  # no pseudo-labelled sample is ever held out or scored
        assert not pool & set(m.predictions["oof"].names)
        assert np.all(m.predictions["oof"].label >= 0)
        assert "pool" not in m.predictions


def test_the_tables_say_what_was_selected_and_students_used_it(toy):
    tree, store, run, members = toy
    truth = read_truth(tree / "truth.csv")
    for r in (1, 2):
        students = by_round(members, r)
        meta = labels_meta(students[0].pseudo["file"])
        assert meta["round"] == r and meta["splits"] == ["pool"]
        assert set(meta["teachers"]) == {str(f) for f in range(5)}
        import pyarrow.parquet as pq

        table = pq.read_table(students[0].pseudo["file"])
        assert set(table["split"].to_pylist()) <= {"pool"}
        assert (table["confidence"].to_numpy() >= 0.7).all()
        assert len(table) > 0
        for f, counts in meta["counts"].items():
            assert sum(counts) == sum(np.array(table["teacher_fold"]) == int(f))
        # the teachers were better than chance on what they labelled
        names = table["name"].to_pylist()
        classes = ["calm", "joy", "anger", "fear"]
        right = np.mean([classes[c] == truth[n] for n, c in
                         zip(names, table["class"].to_pylist())])
        assert right > 0.5, right
    # a student with pseudo-labels learnt something else than its teacher
    r0 = {(m.fold, m.seed): m for m in by_round(members, 0)}
    for s in by_round(members, 1):
        if s.pseudo["rows"]:
            assert not np.array_equal(s.predictions["final"].logits,
                                      r0[(s.fold, s.seed)].predictions["final"].logits)


def test_selftrain_json_status_score_report_and_predict(toy, tmp_path, capsys):
    _, store, run, members = toy
    info = json.loads((run / "selftrain.json").read_text())
    assert [h["round"] for h in info["rounds"]][:2] == [0, 1]
    chosen = info["chosen"][0]["round"]
    best = max(info["rounds"], key=lambda h: h["scores"]["cv_f1"])
    assert chosen == best["round"]  # chosen on out-of-fold scores
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "pseudo_round=1" in out and "pseudo_round=2" in out
    where = "pseudo_round == 1"
    assert main(["ensemble", "score", str(run), "--where", where, "--out",
                 str(tmp_path / "ens")]) == 0
    out = capsys.readouterr().out
    assert "class prior of final" in out and "moved" in out
    assert main(["report", str(run), "--where", where, "--out", str(tmp_path / "rep")]) == 0
    assert "Class prior" in (tmp_path / "rep" / "report.html").read_text()
    assert main(["predict", str(run), "--where", where, "--store", str(store), "--split",
                 "final", "--out", str(tmp_path / "pred"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "estimate" in out and "train" in out
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["members"] == 10 and abs(sum(summary["class_prior"]["estimate"]) - 1) < 1e-6


def test_a_killed_round_resumes_exactly(toy, tmp_path, capsys):
    """A round-1 member lost (as if killed before it was saved): the same command trains
    that member alone, from the same pseudo-labels, into the same member."""
    _, store, _, members = toy
    run = tmp_path / "run"
    shutil.copytree(toy[2], run)
    victim = sorted(by_round(members, 1), key=lambda m: m.member_id)[3]
    table = victim.pseudo["file"].replace(str(toy[2]), str(run))
    before = open(table, "rb").read()
    for path in (run / "members" / f"{victim.member_id}.parquet",
                 run / "members" / f"{victim.member_id}.safetensors"):
        path.unlink()
    capsys.readouterr()
    assert main(selftrain_args(store, run, *ROUNDS)) == 0
    out = capsys.readouterr().out
    assert "9 already saved" in out and "1 to train" in out
    assert open(table, "rb").read() == before  # the labels its siblings learnt from
    again = read_member(str(run / "members" / f"{victim.member_id}.parquet"))
    for split in ("oof", "test", "final"):
        np.testing.assert_array_equal(again.predictions[split].logits,
                                      victim.predictions[split].logits)


def test_whole_ensemble_teachers_are_a_flag_and_say_so(toy, tmp_path):
    _, store, _, _ = toy
    run = tmp_path / "run"
    shutil.copytree(toy[2], run, ignore=shutil.ignore_patterns("rounds", "selftrain.json"))
    assert main(selftrain_args(store, run, "--rounds", "1", "--threshold", "0.7",
                               "--teachers", "all", "--soft")) == 0
    students = [read_member(f) for f in list_member_files(run)]
    students = [m for m in students if m.config.get("pseudo_teachers") == "all"]
    assert len(students) == 10
    for s in students:
        assert s.pseudo["teacher_fold"] == -1 and len(s.pseudo["teachers"]) == 10
        assert s.config["pseudo_targets"] == "soft"


# ---------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def no_pool_store(tmp_path_factory):
    return synthesize_store(tmp_path_factory.mktemp("np") / "store", scale=0.05)


@pytest.mark.parametrize("extra, message", [
    (["--threshold", "0"], "--threshold: pseudo_threshold=0.0"),
    (["--threshold", "1.5"], "--threshold: pseudo_threshold=1.5"),
    (["--rounds", "0"], "--rounds 0"),
    (["--cap", "0.5"], "--cap: pseudo_cap=0.5"),
    (["--cap", "many"], "--cap 'many'"),
    (["--top-k", "0"], "--top-k: pseudo_top_k=0"),
    (["--agreement", "2"], "--agreement: pseudo_agreement=2.0"),
    (["--pseudo-weight", "0"], "--pseudo-weight: pseudo_weight=0.0"),
])
def test_bad_flags_exit_2_before_anything(toy, tmp_path, capsys, extra, message):
    run = tmp_path / "run"
    assert main(selftrain_args(toy[1], run, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not run.exists()


def test_a_store_without_a_pool_is_refused_naming_its_splits(no_pool_store, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(selftrain_args(no_pool_store, run, "--set", "n_folds=2")) == 2
    err = capsys.readouterr().err
    assert "needs a pool split" in err and "test1 (test)" in err and "--pool-split" in err
    assert not (run / "members").exists()


def test_a_run_of_another_store_is_refused(toy, tmp_path, capsys):
    other = synthesize_store(tmp_path / "other", scale=0.5, dataset="toy4", pool=50, seed=3)
    assert main(selftrain_args(other, toy[2])) == 2
    assert "another store" in capsys.readouterr().err


def test_prior_shift_refusals(toy, tmp_path, capsys, monkeypatch):
    run = toy[2]
    assert main(["ensemble", "score", str(run), "--where", "pseudo_round == 0",
                 "--prior-split", "pool", "--out", str(tmp_path / "a")]) == 2
    assert "--prior-split pool: not in the run's predictions" in capsys.readouterr().err
    # too few samples for the estimate, when named: refused, nothing written
    small = tmp_path / "small"
    shutil.copytree(run, small)
    assert main(["ensemble", "score", str(small), "--where", "pseudo_round == 0",
                 "--prior-shift", "em", "--prior-split", "test", "--out",
                 str(tmp_path / "b")]) == 0  # 130 samples: enough
    from ensembles import prior

    monkeypatch.setattr(prior, "MIN_SAMPLES", 1000)
    assert main(["ensemble", "score", str(small), "--where", "pseudo_round == 0",
                 "--prior-shift", "em", "--prior-split", "test", "--out",
                 str(tmp_path / "c")]) == 2
    assert "needs at least 1000" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
