"""A real Ray head on 127.0.0.1 (token auth on), `ray job submit` of a small tune through
the CLI, the job followed to SUCCEEDED through the dashboard's job API, the head stopped."""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import ray

from mer_ray.runs.members import existing_member_ids
from raytools import set_args, tiny_store
from servers import BIN, RayNode, api

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def head(tmp_path):
    """A Ray head with its own token (never the user's ~/.ray), stopped alone at the end."""
    token = uuid.uuid4().hex
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env.pop("RAY_ADDRESS", None)
    node = RayNode(env, tmp_path / "head.log", cpus=2)
    head = {"env": env, "token": token, "url": f"http://127.0.0.1:{node.dashboard}"}
    try:
        deadline = time.time() + 180
        while not answers(head):
            assert node.proc.poll() is None and time.time() < deadline, node.log.read_text()
            time.sleep(1)
        yield head
    finally:
        node.stop()


def answers(head) -> bool:
    try:
        return job_api(head, "/api/version")["ray_version"] == ray.__version__
    except OSError:  # not listening yet (URLError is an OSError)
        return False


def job_api(head, path):
    return api(head["url"], head["token"], path)


def test_job_submit_tune_succeeds(head, tmp_path):
    store = tiny_store(tmp_path / "store")
    run = tmp_path / "run"
    # the dashboard refuses a request without the token
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(head["url"] + "/api/jobs/", timeout=10)
    assert e.value.code in (401, 403)
    job_id = f"mer-ray-test-{uuid.uuid4().hex[:8]}"
    sub = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", head["url"], "--no-wait",
         "--submission-id", job_id,
         "--working-dir", str(ROOT), "--runtime-env", str(ROOT / "cluster" / "runtime_env.yaml"),
         "--", sys.executable, "-m", "mer_ray.cli", "tune", "--store", store, "--out", str(run),
         "--warmup", "0", "1", "--seeds", "0", *set_args(), "--pack-size", "5"],
        env=head["env"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    deadline, status = time.time() + 400, None
    while time.time() < deadline:
        status = job_api(head, f"/api/jobs/{job_id}")["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    logs = job_api(head, f"/api/jobs/{job_id}/logs")["logs"]
    assert status == "SUCCEEDED", logs[-3000:]
    assert len(existing_member_ids(run)) == 10  # 2 warmups x 5 folds
    assert "joined the Ray cluster" in logs and "warmup=1" in logs
    # runtime_env.yaml: every line as printed, and the Train runs tracked by name
    assert "across cluster" not in logs
    assert "PYTHON worker processes have been started" not in logs
    assert "RayDeprecationWarning" not in logs
    runs = job_api(head, "/api/train/v2/runs/v1")["train_runs"]
    assert sorted(r["name"].split("-")[2] for r in runs) == ["warmup=0", "warmup=1"], runs
