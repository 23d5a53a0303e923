"""`mer-ray tune` / `train --no-ray`: the in-process path end to end, tables and resume."""

from mer_ray.cli.main import main
from mer_ray.runs.members import existing_member_ids
from raytools import set_args, tiny_store


def test_no_ray_tune_then_train_reuses_members(tmp_path, capsys):
    store = tiny_store(tmp_path / "store")
    run = str(tmp_path / "run")
    common = ["--store", store, "--out", run, "--no-ray", "--pack-size", "5", *set_args()]
    assert main(["tune", "--warmup", "1", "2", *common]) == 0
    out = capsys.readouterr().out
    assert "warmup=1" in out and "warmup=2" in out and "test2 f1" in out
    assert len(existing_member_ids(run)) == 10
    # train of the warmup-1 recipe: every member already saved, nothing retrained
    assert main(["train", *common, "--set", "warmup=1"]) == 0
    out = capsys.readouterr().out
    assert "5 already saved" in out and "0 to train" in out and "saved robust_v3-" not in out
    assert "robust_v3 warmup=1 seed=0: 5 fold member(s)" in out and "test3" in out
    assert len(existing_member_ids(run)) == 10


def test_an_empty_out_is_refused_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    """`--out "$RUN"` with RUN unset: exit 2 naming the flag, never a run in the current
    folder."""
    import pytest

    monkeypatch.chdir(tmp_path)
    for argv in (["train", "--store", "s", "--out", "", "--no-ray"],
                 ["tune", "--store", "", "--out", "run", "--no-ray"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert "empty (an unset shell variable?)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
