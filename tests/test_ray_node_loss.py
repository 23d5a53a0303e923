"""A node lost for good, on a real multi-node Ray cluster on 127.0.0.1 (one raylet per
node): the run goes on with the workers the nodes left can hold, or stops within its
bounded wait with one line saying what is left, never hangs; the same command resumes.

Train V2 retries a worker group that cannot be placed every
RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s by default); the tests set 5 s before the
cluster starts (its controllers read it) so a bounded wait of 10 s is two tries."""

import threading
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from mer_ray.errors import RunStopped
from mer_ray.runs.members import existing_member_ids
from mer_ray.train.result import member_id
from mer_ray.distributed.cluster import cluster_nodes
from mer_ray.distributed.plan import plan_workers
from mer_ray.distributed.train import START_TIMEOUT_ENV, train_alone
from mer_ray.runs.run import all_specs, record_run
from mer_ray.runs.status import format_status, run_status
from raytools import fast_config, tiny_store, wait_until

START_TIMEOUT_S = "5"
WAIT_S = 10.0


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("st") / "store")


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setenv(START_TIMEOUT_ENV, START_TIMEOUT_S)
    made = []

    def start(head_cpus: int) -> Cluster:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus})
        made.append(c)
        return c

    yield start
    ray.shutdown()
    for c in made:
        c.shutdown()


def expected_ids(config, seeds):
    return {member_id(config.to_dict(), f, s) for f, s in all_specs(config, seeds)}


def train_then_lose(c, node, store, config, run, lines) -> dict:
    """train_alone in a thread; once a member is saved, `node` leaves the cluster for
    good. Returns the thread's outcome ("value" or "error", "ended") and "lost_at"."""
    out = {}

    def go():
        try:
            out["value"] = train_alone(store, config, [0, 1], run, pack_size=1,
                                       log=lines.append, wait_s=WAIT_S, tensorboard=False)
        except BaseException as e:  # noqa: BLE001 - checked by the test
            out["error"] = e
        out["ended"] = time.time()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    wait_until(lambda: len(existing_member_ids(run)) >= 1, 240, "a first member")
    out["lost_at"] = time.time()
    c.remove_node(node)
    thread.join(timeout=400)
    assert not thread.is_alive(), "the run hung after the node was lost"
    return out


@pytest.mark.slow
def test_members_of_a_lost_node_go_to_the_worker_left(cluster, store, tmp_path):
    """Two 1-CPU nodes, a worker on each; one node goes for good. Train cannot place two
    workers on the one CPU left: after the bounded wait the members not saved go to one
    worker on the node left, and every member is saved exactly once."""
    c = cluster(head_cpus=1)
    node = c.add_node(num_cpus=1)
    ray.init(address=c.address)
    nodes = cluster_nodes()
    assert len(nodes) == 2
    plan = plan_workers(None, 0, 1, nodes)
    assert plan.workers == 2 and plan.resources == {"CPU": 1.0}
    run, config, lines = str(tmp_path / "run"), fast_config(epochs=25), []
    job = train_then_lose(c, node, store, config, run, lines)
    assert "error" not in job, job.get("error")
    assert existing_member_ids(run) == expected_ids(config, [0, 1])
    replan = [line for line in lines if "left the cluster" in line]
    assert replan and "go to 1 worker(s) on the nodes left" in replan[0], lines
    assert node.node_ip_address in replan[0]
    print(f"node lost -> run finished: {job['ended'] - job['lost_at']:.0f} s")


@pytest.mark.slow
def test_no_capacity_left_stops_the_run_with_what_is_left_and_resumes(cluster, store,
                                                                       tmp_path):
    """The only node with CPUs goes: within the bounded wait the run stops with one line
    naming the lost node and the members still to train, `mer-ray status` says why, and
    once a node is back the same call trains exactly those members."""
    c = cluster(head_cpus=0)
    node = c.add_node(num_cpus=1)
    ray.init(address=c.address)
    run, config, lines = str(tmp_path / "run"), fast_config(epochs=25), []
    record_run(run, store, [config], seeds=[0, 1])  # as `mer-ray train` does first
    job = train_then_lose(c, node, store, config, run, lines)
    stop = job.get("error")
    assert isinstance(stop, RunStopped), job
    saved = len(existing_member_ids(run))
    assert 1 <= saved < 10
    text = str(stop)
    assert node.node_ip_address in text and "left the cluster" in text
    assert f"{saved} of 10 member(s) saved" in text and f"{10 - saved} still to train" in text
    # the bound: two start timeouts and a re-plan, not an open-ended wait
    print(f"node lost -> run stopped: {job['ended'] - job['lost_at']:.0f} s")
    assert job["ended"] - job["lost_at"] < 120
    shown = format_status(run_status(run))
    assert "stopped: " in shown and "left the cluster" in shown, shown
    assert f"{10 - saved} member(s)" in shown or "trains exactly" in shown, shown

    c.add_node(num_cpus=2)
    wait_until(lambda: sum(n["CPU"] for n in cluster_nodes()) >= 2, 60, "the new node")
    lines.clear()
    assert train_alone(store, config, [0, 1], run, pack_size=1, log=lines.append,
                       wait_s=WAIT_S, tensorboard=False) == 10 - saved
    assert existing_member_ids(run) == expected_ids(config, [0, 1])
    assert "stopped: " not in format_status(run_status(run))
