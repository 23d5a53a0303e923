"""Watching a run without Ray: `mer-ray status` on a run that is going, then killed
(SIGKILL, as tests/test_faults.py does), then resumed; TensorBoard curves of every member
(one point per epoch run) and --no-tensorboard; the console bar and lines."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mer_ray.cli.main import main
from mer_ray.runs.members import existing_member_ids, list_member_files, read_member
from raytools import assert_curves, capture_torch_trainer, set_args, tiny_store

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 8
HOLD = textwrap.dedent("""
    # Hold the second pack after its third epoch until the process is killed, so that a
    # test sees it in flight however fast the machine trains.
    import os, sys, time
    import mer_ray.train.trainer as T
    real, packs = T.train_pack, [0]
    def train_pack(*args, on_epoch=None, **kwargs):
        packs[0] += 1
        def hold(p):
            on_epoch(p)
            if packs[0] == 2 and p.epoch == 2:
                open(os.environ["FLAG"], "w").close()
                time.sleep(600)
        return real(*args, on_epoch=hold, **kwargs)
    T.train_pack = train_pack
    from mer_ray.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("st") / "store")


def train_cmd(store, out, *extra):
    return ["train", "--store", str(store), "--out", str(out), "--no-ray", "--pack-size", "5",
            *set_args(), *extra]


def status_json(run, capsys) -> dict:
    capsys.readouterr()
    assert main(["status", str(run), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_status_of_a_run_going_then_killed_then_resumed(store, tmp_path, capsys):
    run, flag, driver = tmp_path / "run", tmp_path / "flag", tmp_path / "driver.py"
    driver.write_text(HOLD)
    seeds = ["--seeds", "0", "1", "--set", f"epochs={EPOCHS}"]
    proc = subprocess.Popen([sys.executable, str(driver),
                             *map(str, train_cmd(store, run, *seeds))], cwd=ROOT,
                            env={**os.environ, "FLAG": str(flag)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # pack 1 (seed 0) saved, pack 2 (seed 1) held after its third epoch
        deadline = time.time() + 300
        while not flag.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "pack 2 never got going"
            time.sleep(0.05)
        going = status_json(run, capsys)
        assert main(["status", str(run)]) == 0
        going_text = capsys.readouterr().out
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert going["state"] == "running"
    (view,) = going["configs"]
    assert (view["expected"], view["saved"], view["in_flight"]) == (10, 5, 5)
    assert view["seeds"] == [0, 1] and view["seeds_recorded"]
    (pack,) = going["packs"]
    assert pack["running"] and pack["members"] == 5 and pack["training"] == 5
    assert (pack["epoch"], pack["epochs"]) == (2, EPOCHS) and pack["seconds_per_epoch"] > 0
    assert going["eta_s"] is not None and going["eta_s"] > 0
    assert "5 of 10 member(s) saved (0 failed), 5 in flight, 0 not started" in going_text
    assert f"in flight: robust_v3 warmup=1 hidden_dim=16 epochs={EPOCHS}" in going_text
    assert f"epoch 3/{EPOCHS}" in going_text and "running: ETA" in going_text
    # killed: the same files now say "stopped", and what resuming trains
    stopped = status_json(run, capsys)
    assert stopped["state"] == "stopped"
    (view,) = stopped["configs"]
    assert (view["saved"], view["in_flight"], len(view["failed"])) == (5, 0, 0)
    assert sorted(view["waiting"]) == [[f, 1] for f in range(5)]
    assert len(view["best_epochs"]) == 5 and all(0 <= e < EPOCHS for e in view["best_epochs"])
    assert 0 <= view["held_out"]["f1"]["mean"] <= view["held_out"]["f1"]["best"] <= 1
    (pack,) = stopped["packs"]
    assert not pack["running"] and pack["saved"] == 0
    (resume,) = stopped["resume"]
    assert sorted(resume["missing"]) == [[f, 1] for f in range(5)]
    assert main(["status", str(run)]) == 0
    text = capsys.readouterr().out
    assert "5 of 10 member(s) saved (0 failed), 0 in flight, 5 not started" in text
    label = f"robust_v3 warmup=1 hidden_dim=16 epochs={EPOCHS} early_stop_patience=none"
    assert f"stopped: {label}: pack of 5 member(s)" in text
    assert "trains exactly these 5 member(s):" in text
    said = text.split("trains exactly these 5 member(s):")[1].split(":")[1].split()
    # resuming trains exactly what status said
    assert main(train_cmd(store, run, *seeds)) == 0
    out = capsys.readouterr().out
    assert "5 already saved" in out and "5 to train" in out
    packs = [line for line in out.splitlines() if " member(s) [" in line]
    assert len(packs) == 1 and packs[0].split("[")[1].split("]")[0].split() == said
    done = status_json(run, capsys)
    assert done["state"] == "complete" and done["packs"] == [] and done["resume"] == []
    assert not list((run / "progress").glob("*.json"))  # the stopped pack's file is gone
    # curves: every member, one point per epoch run, the killed attempt's points gone
    members = [read_member(f) for f in list_member_files(run)]
    assert len(members) == 10
    assert_curves(run, members)
    assert json.loads((run / "run.json").read_text())["seeds"] == [[0, 1]]


def test_no_tensorboard_writes_none_and_lines_in_logs(store, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_cmd(store, run, "--no-tensorboard", "--log-every", "1")) == 0
    out = capsys.readouterr().out
    assert len(existing_member_ids(run)) == 5
    assert not (run / "tensorboard").exists()
    # not a terminal: plain lines, one per epoch with --log-every 1, no bar
    assert "pack 1/1 epoch 1/2: 5 of 5 member(s) training" in out
    assert "pack 1/1 epoch 2/2: 0 of 5 member(s) training" in out
    assert "member-epoch" not in out + capsys.readouterr().err
    # with curves (the default) every member has them
    run2 = tmp_path / "run2"
    assert main(train_cmd(store, run2)) == 0
    assert_curves(run2, [read_member(f) for f in list_member_files(run2)])


def test_bar_counts_member_epochs_and_fills_for_early_stops():
    from mer_ray.runs.progress import PackBar, use_bar
    from mer_ray.train.trainer import EpochProgress

    assert not use_bar(io.StringIO())
    sink = io.StringIO()
    bar = PackBar(3, 4, desc="pack 1/1", file=sink)
    ids = ["a", "b", "c"]
    row = {"epoch": 0, "train_loss": 1.0, "lr": 1e-3, "val_f1": 0.5}

    def epoch(e, live, finished):
        bar(EpochProgress(epoch=e, epochs=4, seconds=0.1, member_ids=live,
                          rows=[dict(row, epoch=e)] * len(live), finished=finished,
                          best=[0.1 * (e + 1)] * len(live), metric="combined", pack_size=3))

    epoch(0, ids, [])
    assert bar.bar.n == 3
    epoch(1, ids, ["a"])  # a stops early: its last 2 epochs are counted at once
    assert bar.bar.n == 8
    epoch(2, ["b", "c"], [])
    epoch(3, ["b", "c"], ["b", "c"])
    assert bar.bar.n == bar.bar.total == 12
    assert "best combined 0.4000" in str(bar.bar)
    bar.close()


def test_record_run_keeps_the_seeds_of_every_command(tmp_path):
    from mer_ray.train.presets import get_preset
    from mer_ray.runs.run import read_run, record_run

    run = tmp_path / "run"
    a, b = get_preset("robust_v3"), get_preset("robust_v3").replace(warmup=40)
    record_run(run, "store", [a], seeds=[0, 1])
    record_run(run, "store", [a, b], seeds=[2])
    info = read_run(run)
    assert info["configs"] == [a.to_dict(), b.to_dict()]
    assert info["seeds"] == [[0, 1, 2], [2]]
    # a run.json from before seeds were recorded gains them beside its configs
    old = {k: v for k, v in info.items() if k != "seeds"}
    (run / "run.json").write_text(json.dumps(old))
    record_run(run, "store", [b], seeds=[5])
    assert read_run(run)["seeds"] == [[], [5]]


def test_status_of_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    os.makedirs(tmp_path / "empty")
    assert main(["status", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no run.json here" in err and "Traceback" not in err


def test_train_with_ray_hands_log_every_and_tensorboard_to_the_workers(monkeypatch, tmp_path):
    from mer_ray.distributed.plan import Plan
    from mer_ray.distributed.train import train_with_ray
    from mer_ray.train.presets import get_preset
    seen = capture_torch_trainer(monkeypatch)
    plan = Plan(1, 1, {"CPU": 1.0})
    assert train_with_ray("store", get_preset("robust_v3"), [0], str(tmp_path / "r"),
                          plan, log=lambda *a: None, log_every=3,
                          tensorboard=False) == 5
    assert seen["train_loop_config"]["log_every"] == 3
    assert seen["train_loop_config"]["tensorboard"] is False


def test_status_tells_waiting_starting_stopped_and_done_from_the_driver(tmp_path, capsys):
    """A Tune run of three settings where only two fit at once: status says the third
    waits for resources and the others start; once the driver stopped (and is gone) it
    names the reason and what the same command trains; the run's total is shown."""
    import json

    from mer_ray.cli.main import main
    from mer_ray.runs.driver import DriverState, read_driver_states
    from mer_ray.runs.run import record_run, setting_label
    from raytools import fast_config

    run = str(tmp_path / "run")
    configs = [fast_config(warmup=w) for w in (1, 2, 3)]
    labels = [setting_label(c) for c in configs]
    record_run(run, "store", configs, seeds=[0])
    state = DriverState(run, labels, log=lambda m: None)
    try:
        state.set(labels[0], "starting")
        state.set(labels[1], "starting")  # the third stays waiting
        assert main(["status", run]) == 0
        text = capsys.readouterr().out
        assert text.count("starting (its Train workers are being placed)") == 2
        assert text.count("waiting for resources (a running trial must finish") == 1
        assert "starting: the Ray driver is up" in text
        assert "in all: 0 of 15 member(s) saved" in text
        state.set(labels[0], "training")
        state.set(labels[1], "done")
        state.set(labels[2], "stopped", "node(s) 10.0.0.7 (ab12cd34) left the cluster")
    finally:
        state.close(keep=True)
    # the driver has gone: a pid that is no process any more
    record = read_driver_states(run)[0]
    path = record.pop("location")
    with open(path) as f:
        kept = json.load(f)
    kept["pid"] = 2 ** 22 + 1
    with open(path, "w") as f:
        json.dump(kept, f)
    assert main(["status", run]) == 0
    text = capsys.readouterr().out
    assert "  stopped: node(s) 10.0.0.7 (ab12cd34) left the cluster" in text
    assert "the same command resumes and trains" in text
    # a driver that ends well leaves no file (here the same pid's: the stop is over)
    done = DriverState(run, labels, log=lambda m: None)
    done.close()
    assert read_driver_states(run) == []
    assert "stopped: node(s)" not in (main(["status", run]), capsys.readouterr().out)[1]
