"""plan_workers on made-up clusters (a pure function given `available`), and the
TorchTrainer's process-group backend; no Ray instance is started."""

import itertools

import pytest

from mer_ray.errors import InputError
from mer_ray.distributed.plan import Plan, plan_workers
from raytools import capture_torch_trainer


def node(gpus=0, cpus=16):
    return {"CPU": float(cpus), "GPU": float(gpus)} if gpus else {"CPU": float(cpus)}


def totals(plan: Plan) -> dict:
    """What the trials that run at once hold together."""
    running = plan.concurrency * plan.workers
    return {unit: running * v for unit, v in plan.resources.items()}


def test_fractional_gpus_count_every_slot():
    # 1 // 0.2 == 4.0 in floats: 0.2 must still give 5 workers on one GPU
    assert plan_workers(None, 0.2, 1, node(1)).workers == 5
    assert plan_workers(None, 0.16, 1, node(8, 64)).workers == 50
    assert plan_workers(None, 1 / 3, 1, node(1)).workers == 3
    assert plan_workers(None, 0.25, 1, node(1)).workers == 4
    assert plan_workers(2, 0.2, 5, node(2)).concurrency == 5


def test_gpu_workers_are_bounded_by_cpus():
    # 0.1 GPU each on 8 GPUs would be 80 workers; 16 CPUs run 16 of them
    plan = plan_workers(None, 0.1, 3, node(8, 16))
    assert plan.workers == 5 and plan.concurrency == 3
    assert plan.resources == {"GPU": 0.1, "CPU": 1.0}
    assert totals(plan)["CPU"] <= 16
    # fewer CPUs than trials: the trials' single workers share the CPUs
    plan = plan_workers(None, 0.25, 3, node(1, 2))
    assert plan.workers == 1 and plan.concurrency == 3
    assert plan.resources == {"GPU": 0.25, "CPU": 0.6666}
    # --workers: as many trials at once as CPUs and GPUs allow
    assert plan_workers(4, 0.1, 3, node(8, 10)).concurrency == 2
    with pytest.raises(InputError, match="^workers 4 needs 4 x \\(0.1 GPU \\+ 1 CPU\\)"):
        plan_workers(4, 0.1, 3, node(8, 3))
    with pytest.raises(InputError, match="no CPU"):
        plan_workers(None, 0.5, 1, {"GPU": 1.0})
    with pytest.raises(InputError, match="no GPU"):
        plan_workers(None, 0.5, 1, node(0))


def test_the_warmup_grid_on_one_gpu_node():
    """docs/gpu.md's placement table, 16 CPUs per node."""
    table = {  # GPUs: (workers per trial, CPUs taken)
        1: (1, 3), 4: (4, 12), 8: (5, 15)}
    for gpus, (workers, cpus) in table.items():
        plan = plan_workers(None, 0.33, 3, node(gpus, 16))
        assert (plan.workers, plan.concurrency) == (workers, 3), (gpus, plan)
        assert totals(plan)["CPU"] == cpus
        assert plan.resources["GPU"] == 0.33
    plan = plan_workers(None, 0.33, 3, node(8, 32))  # enough CPUs: 3 per GPU
    assert plan.workers == 8 and totals(plan)["CPU"] == 24
    # whole GPUs, one trial each: one 25-member pack per GPU
    plan = plan_workers(1, 1, 3, node(8, 16))
    assert (plan.workers, plan.concurrency) == (1, 3)
    # fewer GPUs than trials x G: each trial's worker gets an equal share
    plan = plan_workers(None, 0.5, 3, node(1))
    assert plan.workers == 1 and plan.resources["GPU"] == 0.3333


def test_every_plan_fits_its_cluster():
    for g, gpus, cpus, trials, workers in itertools.product(
            (0, 0.1, 0.16, 0.2, 0.25, 1 / 3, 0.33, 0.5, 1, 2), (1, 2, 4, 8), (1, 2, 8, 16, 64),
            (1, 3), (None, 1, 2)):
        try:
            plan = plan_workers(workers, g, trials, node(gpus, cpus))
        except InputError:
            assert workers is not None
            continue
        held = totals(plan)
        assert held["CPU"] <= cpus + 1e-9, (g, gpus, cpus, trials, workers, plan)
        if g:
            assert held["GPU"] <= gpus + 1e-9, (g, gpus, cpus, trials, workers, plan)
        if workers is None:  # every trial at once, and no whole free slot left over
            assert plan.concurrency == trials
            slots = min(cpus, int(gpus / g + 1e-9)) if g else cpus
            assert plan.workers == max(1, slots // trials)


def test_train_with_ray_uses_gloo(monkeypatch, tmp_path):
    """Workers never use the process group; NCCL (Train's default with GPUs) does not
    support several ranks on one GPU, so the TorchTrainer always asks for gloo."""
    from mer_ray.distributed.train import train_with_ray
    from mer_ray.train.presets import get_preset
    seen = capture_torch_trainer(monkeypatch)
    config = get_preset("robust_v3").replace(epochs=1)
    plan = plan_workers(None, 1 / 3, 3, node(1))
    assert train_with_ray("store", config, [0], str(tmp_path / "run"), plan,
                          log=lambda *a: None) == 5
    assert seen["torch_config"].backend == "gloo"
    assert seen["scaling_config"].use_gpu
    assert seen["scaling_config"].resources_per_worker == {"GPU": 0.3333, "CPU": 1.0}


def test_plans_count_what_fits_node_by_node():
    """Two 1-CPU nodes hold two 1-CPU workers or three 0.5-CPU ones, never three of
    0.6666 (what the cluster's 2-CPU total suggests, and the third never starts)."""
    two = [node(0, 1), node(0, 1)]
    plan = plan_workers(None, 0, 3, two)
    assert (plan.workers, plan.concurrency, plan.resources) == (1, 3, {"CPU": 0.5})
    assert plan_workers(2, 0, 3, two).concurrency == 1
    with pytest.raises(InputError, match="each on one node, but the cluster's 2 node"):
        plan_workers(3, 0, 1, two)
    gpus = [node(1, 4), node(1, 4)]
    plan = plan_workers(None, 1, 3, gpus)
    assert plan.resources == {"GPU": 0.5, "CPU": 1.0} and plan.concurrency == 3
    with pytest.raises(InputError, match="no node of the Ray cluster holds"):
        plan_workers(None, 1, 1, [{"GPU": 2.0, "CPU": 0.0}, node(0, 8)])


def test_plan_lines_say_what_runs_and_what_waits():
    from mer_ray.distributed.plan import plan_lines

    two = [dict(node(0, 1), address="10.0.0.1"), dict(node(0, 1), address="10.0.0.2")]
    lines = plan_lines(plan_workers(2, 0, 3, two), 3, two)
    assert "on 2 node(s) (10.0.0.1: 1 CPU; 10.0.0.2: 1 CPU)" in lines[0]
    assert lines[1].startswith("1 at once (FIFO): 2 trial(s) wait")
    assert plan_lines(plan_workers(None, 0, 3, two), 3)[1].startswith("all 3 at once")


def failing_trainer(monkeypatch, nodes_seen: list[list[dict]]):
    """A TorchTrainer whose fit() fails as Train's does, on a made-up cluster whose nodes
    are `nodes_seen` in turn (before the fit, after it)."""
    import ray
    import ray.train.torch
    from ray.train import TrainingFailedError

    from mer_ray.distributed import train as distributed_train

    class Failing:
        def __init__(self, *args, **kw):
            pass

        def fit(self):
            raise TrainingFailedError("Training failed due to worker errors: boom")

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", Failing)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    views = iter(nodes_seen)
    monkeypatch.setattr(distributed_train, "cluster_nodes", lambda: next(views))


def test_a_crash_on_a_whole_cluster_is_raised_as_it_is(monkeypatch, tmp_path):
    """No node lost and room for every worker: the workers' own error, not a capacity
    stop and not a re-plan that would only fail again."""
    from ray.train import TrainingFailedError

    from mer_ray.distributed.train import train_with_ray
    from mer_ray.train.presets import get_preset

    here = [{"CPU": 2.0, "GPU": 0.0, "address": "10.0.0.1", "id": "a" * 16}]
    failing_trainer(monkeypatch, [here, here])
    with pytest.raises(TrainingFailedError, match="boom"):
        train_with_ray("store", get_preset("robust_v3"), [0], str(tmp_path / "run"),
                       Plan(2, 1, {"CPU": 1.0}), log=lambda *a: None)


def test_a_lost_node_and_no_room_left_is_one_clear_stop(monkeypatch, tmp_path):
    from mer_ray.distributed.train import train_with_ray
    from mer_ray.errors import RunStopped
    from mer_ray.train.presets import get_preset

    head = {"CPU": 0.0, "GPU": 0.0, "address": "10.0.0.1", "id": "h" * 16}
    gone = {"CPU": 1.0, "GPU": 0.0, "address": "10.0.0.7", "id": "c8c8dce1" + "0" * 8}
    failing_trainer(monkeypatch, [[head, gone], [head]])
    with pytest.raises(RunStopped) as e:
        train_with_ray("store", get_preset("robust_v3"), [0], str(tmp_path / "run"),
                       Plan(1, 1, {"CPU": 1.0}), log=lambda *a: None, wait_s=30)
    text = str(e.value)
    assert "node(s) 10.0.0.7 (c8c8dce1) left the cluster" in text
    assert "(1 CPU each) within 30 s" in text
    assert "0 of 5 member(s) saved and kept, 5 still to train (f0s0 f1s0 f2s0 f3s0 f4s0)" in text
