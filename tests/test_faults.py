"""Faults on real files and processes: a kill while a pack is saving, two trainings into
one run, a disk that fills up or is read-only, a member that diverges. Afterwards every
member present is complete and readable, nothing temporary passes for a member, the
same command resumes with exactly what is missing, and the user reads one line."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mer_ray.cli.main import main
from mer_ray.runs.members import existing_member_ids, list_member_files, read_member
from raytools import set_args, tiny_store

ROOT = Path(__file__).resolve().parents[1]
FAST = set_args() + ["--set", "epochs=1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("st") / "store")


def train_cmd(store, out, *extra):
    return ["train", "--store", str(store), "--out", str(out), "--no-ray", "--pack-size", "5",
            *FAST, *extra]


def cli_process(args, env=None, driver=None):
    """`mer-ray ARGS` in a fresh process (optionally through a driver script)."""
    cmd = [sys.executable, str(driver)] if driver else [sys.executable, "-m", "mer_ray.cli"]
    return subprocess.Popen(cmd + [str(a) for a in args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


SLOW_SAVE = textwrap.dedent("""
    # Make the n-th member Parquet write (the "done" marker, written after the member's
    # weights) hang, so a test can kill the process between a member's two files.
    import os, sys, time
    import mer_ray.runs.members as members
    real, count = members.write_bytes, [0]
    def slow(location, data):
        count[0] += 1
        if count[0] == int(os.environ["HANG_AT"]):
            open(os.environ["FLAG"], "w").write(str(location))
            time.sleep(600)
        return real(location, data)
    members.write_bytes = slow
    from mer_ray.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_while_saving_then_resume_trains_exactly_the_incomplete(store, tmp_path, capsys):
    run, flag, driver = tmp_path / "run", tmp_path / "flag", tmp_path / "driver.py"
    driver.write_text(SLOW_SAVE)
    # 10 members in two packs of 5; hang on the 8th member's Parquet file: pack 1 saved,
    # pack 2 has two members saved, the third has its weights only
    proc = cli_process(train_cmd(store, run, "--seeds", "0", "1"), driver=driver,
                       env={"HANG_AT": "8", "FLAG": str(flag)})
    deadline = time.time() + 240
    while not flag.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = existing_member_ids(run)
    assert len(done) == 7
    half = Path(flag.read_text()).name[: -len(".parquet")]
    assert half not in done and (run / "members" / f"{half}.safetensors").exists()
    for f in list_member_files(run):  # every file a reader sees is a whole member
        read_member(f)
    # the same command resumes: exactly the 3 incomplete members
    assert main(train_cmd(store, run, "--seeds", "0", "1")) == 0
    out = capsys.readouterr().out
    assert "7 already saved" in out and "3 to train" in out
    assert len(existing_member_ids(run)) == 10
    # a resumed member equals the same member trained in an uninterrupted run
    fresh = tmp_path / "fresh"
    assert main(train_cmd(store, fresh, "--seeds", "0", "1")) == 0
    a = read_member(str(run / "members" / f"{half}.parquet"))
    b = read_member(str(fresh / "members" / f"{half}.parquet"))
    np.testing.assert_allclose(a.predictions["test2"].logits, b.predictions["test2"].logits,
                               atol=1e-5)


def test_two_trainings_into_one_run_both_complete(store, tmp_path):
    run = tmp_path / "run"
    procs = [cli_process(train_cmd(store, run, "--seeds", "0", "1")) for _ in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    assert len(existing_member_ids(run)) == 10
    assert not [p for p in (run / "members").iterdir() if p.name.startswith(".tmp-")]
    for f in list_member_files(run):
        read_member(f)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs; needs root), grown later to let a run finish."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_full_disk_is_one_line_and_the_same_command_resumes(store, small_disk, capsys):
    run = small_disk / "run"
    assert main(train_cmd(store, run)) == 1
    err = capsys.readouterr().err
    assert "no space left writing" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    saved = existing_member_ids(run)
    assert len(saved) < 5
    for f in list_member_files(run):
        read_member(f)
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert main(train_cmd(store, run)) == 0
    out = capsys.readouterr().out
    assert f"{len(saved)} already saved" in out and f"{5 - len(saved)} to train" in out
    # scoring and the report onto a full disk: one line, exit 1, nothing half-written
    filler = small_disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    for cmd, folder in ((["ensemble", "score"], "ensemble"), (["report"], "report")):
        assert main(cmd + [str(run)]) == 1
        err = capsys.readouterr().err
        assert "no space left" in err and "Traceback" not in err, err
        assert not (run / folder).exists()
        assert not [p for p in run.iterdir() if ".tmp-" in p.name]


def test_read_only_disk_is_refused_before_training(store, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        assert main(train_cmd(store, mnt / "run")) == 2
        err = capsys.readouterr().err
        assert "is not writable" in err and "Traceback" not in err
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_a_diverging_member_is_saved_as_failed_and_the_pack_finishes(store, tmp_path,
                                                                    monkeypatch, capsys):
    """One member's loss turns NaN; it stops and is saved as failed, its pack-mates train
    on, and scoring leaves it out with a warning naming it."""
    import mer_ray.train.trainer as T

    real_forward = T.pack.forward

    def poisoned(params, xs, modality_mask=None, dropout_masks=None):
        out = real_forward(params, xs, modality_mask, dropout_masks)
        if dropout_masks is not None and out.logits.shape[0] == 5:
            # training, before anyone left the pack: the member in slot 1 (fold 1) diverges
            logits = out.logits.clone()
            logits[1] = float("nan")
            out = out._replace(logits=logits)
        return out

    monkeypatch.setattr(T.pack, "forward", poisoned)
    run = tmp_path / "run"
    assert main(train_cmd(store, run, "--set", "epochs=3")) == 0
    out = capsys.readouterr().out
    assert "as FAILED: non-finite training loss" in out
    members = [read_member(f) for f in list_member_files(run)]
    failed = [m for m in members if m.status == "failed"]
    assert len(failed) == 1 and failed[0].fold == 1 and failed[0].epochs_run == 1
    assert all(m.epochs_run == 3 for m in members if m.status == "ok")
    assert len(existing_member_ids(run)) == 5  # resume does not retrain a failed member
    monkeypatch.setattr(T.pack, "forward", real_forward)
    assert main(["ensemble", "score", str(run)]) == 0
    text = capsys.readouterr().out
    assert f"{failed[0].path}: member failed in training" in text
    assert "4 member(s)" in text
