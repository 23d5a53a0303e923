"""Ray Train + Tune on a real local Ray instance (2 CPUs, no GPU), no mocks."""

import numpy as np
import pytest
import ray

from mer_ray.members import existing_member_ids, member_id
from mer_ray.ray_train import PREEMPTION_WATCHER_ENV, plan_workers, train_with_ray, tune_grid
from mer_ray.run import all_specs
from raytools import fast_config, tiny_store


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("st") / "store")


def expected_ids(config, seeds):
    return {member_id(config.to_dict(), f, s) for f, s in all_specs(config, seeds)}


def test_three_trial_tune_on_two_cpus_finishes(cluster, store, tmp_path):
    """3 trials on 2 CPUs: no deadlock, every member of every trial saved, scores reported."""
    run = str(tmp_path / "run")
    base = fast_config()
    settings = [{"warmup": 0}, {"warmup": 1}, {"warmup": 2}]
    plan = plan_workers(None, 0, len(settings))
    assert plan.concurrency * plan.workers * plan.resources["CPU"] <= 2
    grid = tune_grid(store, base, settings, [0], run, pack_size=5, log=lambda *a: None)
    want = set().union(*(expected_ids(base.replace(**s), [0]) for s in settings))
    assert existing_member_ids(run) == want  # 15 members, each once
    assert len(grid) == 3
    for r in grid:
        assert r.error is None
        assert r.metrics["members"] == 5 and r.metrics["seeds"] == 1
        assert 0 <= r.metrics["test2_f1"] <= 1 and "cv_combined" in r.metrics


def test_train_splits_members_between_workers_and_resumes(cluster, store, tmp_path):
    run = str(tmp_path / "run")
    config = fast_config()
    plan = plan_workers(2, 0, 1)
    lines = []
    assert train_with_ray(store, config, [0, 1], run, plan, pack_size=2, log=lines.append) == 10
    assert existing_member_ids(run) == expected_ids(config, [0, 1])
    # a member's result does not depend on which worker trained it, nor on Ray
    from mer_ray.data.store import read_store
    from mer_ray.members import list_member_files, read_member
    from mer_ray.trainer import train_pack

    here = train_pack(read_store(store), config, [(3, 1)], log=lambda *a: None)[0]
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
            "from mer_ray.ray_train import connect, PREEMPTION_WATCHER_ENV as E\n"
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
