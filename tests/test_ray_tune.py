"""Ray Train + Tune on a real local Ray instance (2 CPUs, no GPU), no mocks."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray

from mer_ray.runs.members import existing_member_ids
from mer_ray.train.result import member_id
from mer_ray.train.presets import get_preset
from mer_ray.distributed.cluster import PREEMPTION_WATCHER_ENV, STATE_TRACKING_ENV
from mer_ray.distributed.plan import plan_workers
from mer_ray.distributed.train import train_with_ray
from mer_ray.distributed.tune import tune_grid
from mer_ray.runs.run import setting_label
from mer_ray.runs.run import all_specs
from raytools import assert_curves, fast_config, tiny_store


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # never a running Ray
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("st") / "store")


def expected_ids(config, seeds):
    return {member_id(config.to_dict(), f, s) for f, s in all_specs(config, seeds)}


def test_three_trial_tune_on_two_cpus_finishes(cluster, store, tmp_path, capfd):
    """3 trials on 2 CPUs: no deadlock, every member of every trial saved, scores reported;
    the TensorBoard hint names the run's curves, not Tune's folder in Ray's temp."""
    run = str(tmp_path / "run")
    base = fast_config()
    settings = [{"warmup": 0}, {"warmup": 1}, {"warmup": 2}]
    plan = plan_workers(None, 0, len(settings))
    assert plan.concurrency * plan.workers * plan.resources["CPU"] <= 2
    lines = []
    grid = tune_grid(store, base, settings, [0], run, pack_size=5, log=lines.append,
                     verbose=1)
    assert f"members' curves: tensorboard --logdir {run}/tensorboard" in lines
    assert "To visualize your results with TensorBoard" not in capfd.readouterr().out
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ  # put back
    want = set().union(*(expected_ids(base.replace(**s), [0]) for s in settings))
    assert existing_member_ids(run) == want  # 15 members, each once
    assert len(grid) == 3
    for r in grid:
        assert r.error is None
        assert r.metrics["members"] == 5 and r.metrics["seeds"] == 1
        assert 0 <= r.metrics["test2_f1"] <= 1 and "cv_combined" in r.metrics
    # Named after their settings, never a timestamp: the same command finds them again.
    ray_dir = Path(run) / "ray"
    assert (ray_dir / "tune-robust_v3-warmup=0,1,2").is_dir()
    for r in grid:
        trial = Path(r.path).name
        assert trial.startswith(f"robust_v3-warmup={r.config['setting']['warmup']}-"), trial
        assert (ray_dir / f"train-{trial}").is_dir()  # its TorchTrainer run
        assert (Path(r.path) / "progress.csv").is_file()  # Tune's own logs are kept


def _csv_rows(path: Path) -> list[dict]:
    import csv

    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def test_tune_trial_reports_while_it_runs(cluster, store, tmp_path, monkeypatch):
    """A trial's progress.csv gains rows while it trains (members saved, the running
    pack's epoch, best held-out F1 so far): a curve, read here mid-run. Its last report is
    exactly the trial summary, which progress.csv keeps too; every member has TensorBoard
    curves, one point per epoch."""
    # Tune writes result files in its staging folder and copies them to RUN/ray with its
    # experiment state, every 10 s or more; every second here, for a short trial.
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    import json
    import math
    import threading
    import time

    from ensembles.groups import trial_summary, trial_summary_keys
    from mer_ray.data.store import read_store
    from mer_ray.runs.members import list_member_files, read_member

    run = tmp_path / "run"
    config = fast_config(epochs=60)
    box = {}

    def tune():
        try:
            box["grid"] = tune_grid(store, config, [{"warmup": 1}], [0], str(run), pack_size=5,
                                    log=lambda *a: None, report_every=0.5)
        except BaseException as e:  # noqa: BLE001 - shown by the assertion below
            box["error"] = e

    thread = threading.Thread(target=tune, daemon=True)
    thread.start()
    seen, deadline = [], time.time() + 500
    while thread.is_alive() and time.time() < deadline and not seen:
        for path in run.glob("ray/tune-*/*/progress.csv"):
            rows = _csv_rows(path)
            epochs = {_number(r.get("epoch")) for r in rows} - {0.0}
            summary = any(math.isfinite(_number(r.get("cv_f1"))) for r in rows)
            if len({e for e in epochs if math.isfinite(e)}) >= 2 and not summary:
                seen = rows  # two epochs of the running pack, the trial not done
        time.sleep(0.2)
    thread.join(timeout=600)
    assert "error" not in box, box.get("error")
    assert seen, "progress.csv never showed a curve while the trial ran"
    assert all(int(_number(r["members_total"])) == 5 for r in seen)
    assert all(_number(r["members_saved"]) < 5 for r in seen)
    (result,) = box["grid"]
    members = [read_member(f) for f in list_member_files(run)]
    want = trial_summary(members)
    # the last report is the summary, nothing else of ours
    assert {k: result.metrics[k] for k in want} == pytest.approx(want)
    assert "members_saved" not in result.metrics
    (path,) = run.glob("ray/tune-*/*/progress.csv")
    rows = _csv_rows(path)
    dataset = read_store(store).dataset
    assert set(trial_summary_keys(dataset)) == set(want) <= set(rows[0])
    assert _number(rows[-1]["cv_f1"]) == pytest.approx(want["cv_f1"])
    assert int(_number(rows[-2]["members_saved"])) == 5  # the curve ends with all saved
    assert _number(rows[-2]["progress"]) == pytest.approx(1.0)
    # "epoch" is the least advanced running pack's: it rises, except that it steps back
    # when a worker's pack starts after another's has begun; from the row on where every
    # pack runs, it only rises
    running = [(_number(r["epoch"]), _number(r["packs_running"])) for r in rows[:-1]
               if _number(r["members_training"]) > 0]
    everyone = next(i for i, (_, n) in enumerate(running) if n == max(n for _, n in running))
    epochs = [e for e, _ in running[everyone:]]
    assert len(set(epochs) - {0.0}) >= 2 and epochs == sorted(epochs)  # epochs rise
    lines = (path.parent / "result.json").read_text().splitlines()
    assert len(lines) == len(rows) and json.loads(lines[-1])["cv_f1"] == pytest.approx(
        want["cv_f1"])
    assert_curves(run, members)
    assert all(m.epochs_run == 60 for m in members)
    assert not list((run / "progress").glob("*.json"))  # packs done, their files gone


def test_setting_label_names_the_setting():
    v3 = get_preset("robust_v3")
    assert setting_label(v3.replace(warmup=40)) == "robust_v3 warmup=40"
    assert (setting_label(v3.replace(dropout=0.4, early_stop_patience=None))
            == "robust_v3 warmup=30 dropout=0.4 early_stop_patience=none")


def test_train_splits_members_between_workers_and_resumes(cluster, store, tmp_path):
    run = str(tmp_path / "run")
    config = fast_config()
    plan = plan_workers(2, 0, 1)
    lines = []
    assert train_with_ray(store, config, [0, 1], run, plan, pack_size=2, log=lines.append,
                          tensorboard=False) == 10
    assert existing_member_ids(run) == expected_ids(config, [0, 1])
    assert not (Path(run) / "tensorboard").exists()  # --no-tensorboard on the workers too
    # a member's result does not depend on which worker trained it, nor on Ray
    from mer_ray.data.store import read_store
    from mer_ray.runs.members import list_member_files, read_member
    from mer_ray.train.trainer import train_pack

    here = train_pack(read_store(store), config, [(3, 1)])[0]
    there = read_member(next(p for p in list_member_files(run) if here.member_id in p))
    for split in ("oof", "test2"):
        np.testing.assert_allclose(there.predictions[split].logits,
                                   here.predictions[split].logits, atol=1e-5)
    # the same command again trains nothing, and says so
    lines.clear()
    assert train_with_ray(store, config, [0, 1], run, plan, pack_size=2, log=lines.append) == 0
    assert "10 already saved" in lines[0] and "0 to train" in lines[0]


def test_embedded_ray_runs_without_train_preemption_watchers():
    """An embedded single-machine Ray has no node to preempt: its actors (Train
    controllers among them) see the preemption watcher turned off, unless the user set it."""
    import os
    import subprocess
    import sys

    code = ("import os, ray\n"
            "from mer_ray.distributed.cluster import connect, PREEMPTION_WATCHER_ENV as E\n"
            "connect(log=lambda m: None, num_cpus=1)\n"
            "print('seen', ray.get(ray.remote(lambda: os.environ.get(E)).remote()))\n"
            "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", PREEMPTION_WATCHER_ENV)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "seen 0" in out.stdout
    env[PREEMPTION_WATCHER_ENV] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=180)
    assert "seen 1" in out.stdout, out.stderr


def test_embedded_ray_console_shows_every_line_and_where_the_token_is(tmp_path):
    """Lines of different workers that differ only in their numbers all reach the console
    (Ray would fold them into one "[repeated 3x across cluster]"), the raylet's warning
    about many workers started at once does not (it stays in Ray's log); the login hint
    names the token file Ray wrote (made private); Train state tracking and this Ray's
    own state API reach the workers."""
    code = ("import os, time, ray\n"
            "from ray.util.state import list_actors\n"
            "from mer_ray.distributed.cluster import connect, STATE_TRACKING_ENV as E\n"
            "connect(num_cpus=1)\n"
            "@ray.remote(num_cpus=0)\n"
            "class Worker:\n"
            "    def epoch(self, i):\n"
            "        print(f'[robust_v3 w{i} worker 0] epoch {i}: val combined -0.{i}')\n"
            "        mine = list_actors(filters=[('class_name', '=', 'Worker')])\n"
            "        return os.environ.get(E), len(mine)\n"
            "workers = [Worker.remote() for _ in range(4)]\n"
            "print('seen', set(ray.get([w.epoch.remote(i) for i, w in enumerate(workers)])))\n"
            # what the driver prints of a batch of raylet lines (on 2 cores the warning
            # needs a dozen idle workers to appear for real)
            "from ray._private.ray_logging import stdout_deduplicator as lines\n"
            "warning = 'WARNING: 12 PYTHON worker processes have been started on node: n1'\n"
            "print('kept', lines.deduplicate({'ip': 'x', 'pid': 'raylet',\n"
            "                                 'lines': [warning, 'node n1 is fine']}))\n"
            "time.sleep(6)  # the workers' lines reach the driver's console\n"
            "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_DEDUP", "RAY_API_SERVER",
                                STATE_TRACKING_ENV))}
    env["HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=240)
    console = out.stdout + out.stderr
    assert out.returncode == 0, console
    assert "seen {('1', 4)}" in console
    for i in range(4):
        assert f"epoch {i}: val combined -0.{i}" in console, console
    assert "across cluster" not in console
    assert "kept [{'ip': 'x', 'pid': 'raylet', 'lines': ['node n1 is fine']}]" in console
    assert f"asks for the token in {tmp_path / '.ray' / 'auth_token'}" in console
    token = tmp_path / ".ray" / "auth_token"
    assert token.read_text().strip() and token.stat().st_mode & 0o077 == 0  # yours only


def test_disconnect_puts_the_environment_back():
    """connect() points Train's helpers at its own dashboard through the environment;
    once that Ray is gone the variable must go too, or a later `ray job submit` in the
    same process tree is sent to a dashboard that no longer exists."""
    import os
    import subprocess
    import sys

    code = ("import os, ray\n"
            "from mer_ray.distributed.cluster import connect, disconnect\n"
            "connect(log=lambda m: None, num_cpus=1)\n"
            "print('during', os.environ.get('RAY_API_SERVER_ADDRESS'))\n"
            "disconnect()\n"
            "print('after', os.environ.get('RAY_API_SERVER_ADDRESS'), ray.is_initialized())\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "during http://127.0.0.1:" in out.stdout and "after None False" in out.stdout
