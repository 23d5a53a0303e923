"""Real servers on 127.0.0.1 for the tests: a free port, moto's S3-compatible server,
a Ray node started with `ray start --block` (its own temp folder, ports and token)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
S3_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
               "AWS_ENDPOINT_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(bucket: str):
    """moto's standalone server with `bucket` made; yields the credentials' environment
    (what a node's environment, never a job's runtime env, should carry)."""
    import pytest

    server = BIN / "moto_server"
    if not server.exists():
        pytest.skip("moto's standalone server is not installed (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    try:
        import boto3

        for _ in range(100):
            try:
                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                             aws_access_key_id="testing",
                             aws_secret_access_key="testing").create_bucket(Bucket=bucket)
                break
            except Exception:
                time.sleep(0.1)
        else:
            pytest.fail("moto server did not come up")
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class RayNode:
    """`ray start [--head] --block` as its own process group, with its own temp folder
    and ports, so several nodes share one machine (two nodes sharing a temp folder delete
    each other's runtime environments; each needs its own dashboard-agent port)."""

    def __init__(self, env: dict, log: Path, cpus: int, head_port: int | None = None):
        self.temp = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))  # short socket paths
        self.port, self.dashboard = free_port(), free_port()
        self.log = log
        cmd = [str(BIN / "ray"), "start", "--block", "--num-cpus", str(cpus),
               "--temp-dir", str(self.temp), "--disable-usage-stats",
               "--dashboard-agent-listen-port", str(free_port()),
               "--dashboard-agent-grpc-port", str(free_port()),
               "--runtime-env-agent-port", str(free_port()),
               "--metrics-export-port", str(free_port())]
        if head_port is None:
            cmd += ["--head", "--port", str(self.port), "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(self.dashboard)]
        else:
            cmd += ["--address", f"127.0.0.1:{head_port}"]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def stop(self, sig=signal.SIGTERM, timeout: float = 120) -> None:
        """SIGTERM drains this node and stops its processes alone (`ray stop` would end
        every Ray on the machine); SIGKILL of the group is a node that vanishes."""
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


def api(url: str, token: str, path: str):
    """GET a dashboard API path with the cluster token."""
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())
