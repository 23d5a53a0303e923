"""`mer-ray selftrain` through Ray on a real local Ray instance (2 CPUs): round 0 and a
self-training round as Ray Train runs, then a grid of two settings as Tune trials; the
members are those the in-process path trains (a member depends only on its config,
fold, seed and data)."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from mer_ray.cli.main import main
from mer_ray.data.synth_files import synthesize_store
from mer_ray.runs.members import list_member_files, read_member

RECIPE = ["--set", "epochs=3", "--set", "hidden_dim=16", "--set", "warmup=1",
          "--set", "early_stop_patience=none", "--set", "n_folds=2"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # never a running Ray
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthesize_store(tmp_path_factory.mktemp("st") / "store", scale=0.3,
                            dataset="toy4", pool=100)


def members_of(run):
    return {m.member_id: m for m in map(read_member, list_member_files(run))}


@pytest.mark.slow
def test_selftrain_through_ray_trains_the_same_members(cluster, store, tmp_path):
    args = ["selftrain", "--store", str(store), "--seeds", "0", *RECIPE, "--rounds", "1",
            "--top-k", "10", "--cap", "none", "--all-rounds", "--no-tensorboard",
            "--pack-size", "2"]
    assert main([*args, "--out", str(tmp_path / "ray")]) == 0
    assert main([*args, "--out", str(tmp_path / "here"), "--no-ray"]) == 0
    through_ray, here = members_of(tmp_path / "ray"), members_of(tmp_path / "here")
    assert set(through_ray) == set(here) and len(here) == 4  # 2 folds x rounds 0 and 1
    for mid, m in here.items():
        np.testing.assert_array_equal(through_ray[mid].predictions["oof"].logits,
                                      m.predictions["oof"].logits)
    assert (tmp_path / "ray" / "ray").is_dir()  # Ray Train's bookkeeping: it went through Ray
    # a grid: each round's settings as Tune trials
    assert main([*args, "--out", str(tmp_path / "grid"), "--grid", "warmup=0,1"]) == 0
    grid = members_of(tmp_path / "grid")
    assert len(grid) == 8
    assert {m.config["warmup"] for m in grid.values()} == {0, 1}
    assert {m.config.get("pseudo_round", 0) for m in grid.values()} == {0, 1}
