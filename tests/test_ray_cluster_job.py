"""A real three-node Ray cluster on 127.0.0.1, started as cluster/README.md says for a
dry run (each node `ray start` with its own temp folder and ports, token auth on), the
store and run on a local S3-compatible server whose credentials are in the nodes'
environment (never in the job's runtime env), `mer-ray train` submitted with `ray job
submit`: a node drained mid-run (SIGTERM) and the job still succeeds, every member once;
then the last node with CPUs killed (SIGKILL) and the job fails within its bounded wait
naming what is left, `mer-ray status` says why, and the same job on a new node trains
exactly the rest."""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import ray
import yaml

from mer_ray.cli.main import main
from mer_ray.runs.members import existing_member_ids
from raytools import set_args, tiny_store, wait_until
from servers import BIN, RayNode, api, moto_s3

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "mer-cluster"


@pytest.fixture()
def cluster(tmp_path, monkeypatch):
    """Head (no CPUs: the drivers only) and two 1-CPU nodes; yields what the test needs."""
    with moto_s3(BUCKET) as s3_env:
        for k, v in s3_env.items():
            monkeypatch.setenv(k, v)  # this process reads the run on S3 too
        token = uuid.uuid4().hex
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, **s3_env}
        env.pop("RAY_ADDRESS", None)
        head = RayNode(env, tmp_path / "head.log", cpus=0)
        url = f"http://127.0.0.1:{head.dashboard}"
        nodes = []
        try:
            wait_until(lambda: answers(url, token), 180, "the head's dashboard")
            nodes = [RayNode(env, tmp_path / f"node{i}.log", cpus=1, head_port=head.port)
                     for i in (1, 2)]
            wait_until(lambda: alive_cpus(url, token) == 2, 180, "two 1-CPU nodes")
            yield {"url": url, "token": token, "env": env, "head": head, "nodes": nodes,
                   "tmp": tmp_path}
        finally:
            for n in reversed(nodes):
                n.stop(signal.SIGKILL)
            head.stop()


def answers(url, token) -> bool:
    try:
        return api(url, token, "/api/version")["ray_version"] == ray.__version__
    except OSError:
        return False


def alive_cpus(url, token) -> float:
    nodes = api(url, token, "/nodes?view=summary")["data"]["summary"]
    return sum(n["raylet"].get("resourcesTotal", {}).get("CPU", 0.0) for n in nodes
               if n["raylet"].get("state") == "ALIVE")


def submit(c, job_id, store, run, seeds, command=("train",), epochs=400):
    """`ray job submit` of `mer-ray train` (or `command`) as the README says, with a
    runtime env that adds only Train's start timeout (5 s, so the test's bounded wait of
    10 s is two tries) and a harmless secret-looking variable."""
    runtime = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    runtime["env_vars"]["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "5"
    runtime["env_vars"]["MY_API_TOKEN"] = "not-a-secret"  # the warning, seen in the logs
    path = c["tmp"] / "runtime_env.yaml"
    path.write_text(yaml.safe_dump(runtime))
    sub = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", c["url"], "--no-wait",
         "--submission-id", job_id, "--working-dir", str(ROOT), "--runtime-env", str(path),
         "--", sys.executable, "-m", "mer_ray.cli", *command, "--store", store, "--out", run,
         "--seeds", *map(str, seeds), *set_args(), "--set", f"epochs={epochs}",
         "--pack-size", "5", "--wait-for-capacity", "10"],
        env=c["env"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert sub.returncode == 0, sub.stdout + sub.stderr


def job_logs(c, job_id) -> str:
    return api(c["url"], c["token"], f"/api/jobs/{job_id}/logs")["logs"]


def finished(c, job_id, timeout=400) -> tuple[str, str, float]:
    """(status, logs, when it ended) once the job ends."""
    end = time.time() + timeout
    while time.time() < end:
        status = api(c["url"], c["token"], f"/api/jobs/{job_id}")["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            logs = job_logs(c, job_id)
            (c["tmp"] / f"job-{job_id}.log").write_text(logs)  # kept by pytest to read
            return status, logs, time.time()
        time.sleep(1)
    raise AssertionError(f"job {job_id} still running after {timeout} s: it hangs")


@pytest.mark.slow
def test_node_loss_on_a_real_cluster_job(cluster, tmp_path, capsys):
    import pyarrow.fs as pafs

    c, started = cluster, time.time()
    local = tiny_store(tmp_path / "store")
    pafs.copy_files(local, f"s3://{BUCKET}/store")
    store, run = f"s3://{BUCKET}/store", f"s3://{BUCKET}/runs/v3"

    # 0. a grid of three trials on two 1-CPU nodes: two at once, the third waits quietly
    # and `mer-ray status` says so
    grid = f"s3://{BUCKET}/runs/grid"
    submit(c, "grid", store, grid, [0], ("tune", "--warmup", "1", "2", "3", "--workers", "1"),
           epochs=150)
    seen = []

    def third_waits():
        main(["status", grid])  # exit 2 until the driver has written run.json
        seen.append(capsys.readouterr().out)
        return "waiting for resources (a running trial must finish first)" in seen[-1]

    wait_until(third_waits, 300, "a trial waiting for resources in mer-ray status",
               lambda: seen[-1] + job_logs(c, "grid")[-2000:])
    status, logs, _ = finished(c, "grid")
    assert status == "SUCCEEDED", logs[-4000:]
    assert "2 at once (FIFO): 1 trial(s) wait, quietly" in logs
    assert "WorkerGroupStartupTimeoutError" not in logs  # waiting is not retrying
    assert len(existing_member_ids(grid)) == 15

    # 1. a node drained mid-run: the members go on, on the node left
    submit(c, "drain", store, run, [0, 1])
    # both workers' packs (5 members x 400 epochs each) are under way, far from the end
    wait_until(lambda: all(re.search(rf"worker {rank}\] pack 1/\d+ epoch \d+/400",
                                     job_logs(c, "drain")) for rank in (0, 1)), 300,
               "both workers' packs training", lambda: job_logs(c, "drain")[-3000:])
    lost_at = time.time()
    c["nodes"][1].stop(signal.SIGTERM)
    status, logs, ended = finished(c, "drain")
    assert status == "SUCCEEDED", logs[-4000:]
    assert "left the cluster" in logs and "go to 1 worker(s) on the nodes left" in logs
    assert len(existing_member_ids(run)) == 10
    assert logs.count("saved robust_v3-") == 10  # each member once
    assert "warning: this job's runtime env carries MY_API_TOKEN" in logs
    drained_s = ended - lost_at

    # 2. the last node with CPUs killed: a bounded wait, then one line and exit 1
    submit(c, "kill", store, run, [2, 3])
    # one worker now: its first pack saved, its second under way
    wait_until(lambda: len(existing_member_ids(run)) >= 15, 300, "a pack of seeds 2 3")
    lost_at = time.time()
    c["nodes"][0].stop(signal.SIGKILL)
    status, logs, ended = finished(c, "kill")
    assert status == "FAILED", logs[-4000:]
    saved = len(existing_member_ids(run)) - 10
    assert saved == 5
    last = [line for line in logs.splitlines() if line.startswith("mer-ray: error:")]
    assert last and "left the cluster" in last[-1], logs[-4000:]
    assert f"{10 - saved} still to train" in last[-1]
    assert "Traceback" not in logs.split("mer-ray: error:")[-1]
    killed_s = ended - lost_at
    capsys.readouterr()
    assert main(["status", run]) == 0
    shown = capsys.readouterr().out
    assert "stopped: " in shown and "left the cluster" in shown, shown

    # 3. a new node, the same job again: exactly the rest
    c["nodes"].append(RayNode(c["env"], tmp_path / "node3.log", cpus=1,
                              head_port=c["head"].port))
    wait_until(lambda: alive_cpus(c["url"], c["token"]) == 1, 180, "the new node")
    submit(c, "resume", store, run, [2, 3])
    status, logs, _ = finished(c, "resume")
    assert status == "SUCCEEDED", logs[-4000:]
    assert f"{saved} already saved" in logs and logs.count("saved robust_v3-") == 10 - saved
    assert len(existing_member_ids(run)) == 20
    print(f"node drained -> job succeeded {drained_s:.0f} s; node killed -> job failed "
          f"{killed_s:.0f} s; whole test {time.time() - started:.0f} s")
