"""Fault tolerance on real Ray processes: a node lost mid-run, a driver killed mid-run."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from mer_ray.runs.members import existing_member_ids
from mer_ray.train.result import member_id
from mer_ray.distributed.plan import Plan
from mer_ray.distributed.train import train_with_ray
from mer_ray.runs.run import all_specs
from raytools import fast_config, set_args, tiny_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("st") / "store")


def expected_ids(config, seeds):
    return {member_id(config.to_dict(), f, s) for f, s in all_specs(config, seeds)}


def wait_for_members(run, n, timeout=240, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if len(existing_member_ids(run)) >= n:
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stdout.read()}")
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} members after {timeout} s")


def settled_count(run, quiet_s=10, timeout=120):
    """Member count once no file has appeared for quiet_s (an orphaned Ray worker of a
    killed driver may still finish the member it holds)."""
    end = time.time() + timeout
    count, since = len(existing_member_ids(run)), time.time()
    while time.time() < end and time.time() - since < quiet_s:
        time.sleep(0.5)
        now = len(existing_member_ids(run))
        if now != count:
            count, since = now, time.time()
    return count


@pytest.mark.slow
def test_worker_node_removed_mid_run(store, tmp_path):
    """Two nodes; the one holding a worker goes away mid-run. Ray Train restarts the
    worker group on the node left; every member ends up saved exactly once."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    node = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address)
    try:
        run = str(tmp_path / "run")
        config = fast_config(epochs=25)
        result = {}

        def go():
            try:
                result["trained"] = train_with_ray(store, config, [0, 1], run,
                                                   Plan(2, 1, {"CPU": 1}), pack_size=1,
                                                   log=lambda *a: None)
            except BaseException as e:  # noqa: BLE001 - surfaced by the assert below
                result["error"] = e

        t = threading.Thread(target=go)
        t.start()
        wait_for_members(run, 1)
        cluster.remove_node(node)
        t.join(timeout=400)
        assert not t.is_alive(), "run did not finish after the node was removed"
        assert "error" not in result, result.get("error")
        assert existing_member_ids(run) == expected_ids(config, [0, 1])
        files = os.listdir(os.path.join(run, "members"))
        # each member once: its weights and its predictions, nothing temporary left
        assert sorted(f.rsplit(".", 1)[1] for f in files) == ["parquet"] * 10 + ["safetensors"] * 10
        assert not [f for f in files if f.startswith(".tmp")]
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_killed_driver_resumes_with_only_missing_members(store, tmp_path):
    run = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "mer_ray.cli", "train", "--store", store, "--out", run,
           "--seeds", "0", "1", "--pack-size", "1", "--workers", "1",
           *set_args(), "--set", "epochs=25"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        wait_for_members(run, 2, proc=first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started
        first.wait()
    saved = settled_count(run)
    assert 2 <= saved < 10, saved
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{saved} already saved" in second.stdout and f"{10 - saved} to train" in second.stdout
    out = second.stdout + second.stderr
    assert "Ray dashboard: http://127.0.0.1:" in out  # the embedded dashboard stays local
    assert out.count("saved robust_v3-") == 10 - saved  # only the missing ones trained
    assert len(existing_member_ids(run)) == 10
