"""One recipe's fold x seed members as a Ray Train (V2) TorchTrainer: its workers split the
members that are not saved yet and train their share in packs (mer_ray.runs.run, which
never imports Ray). Bounded retries when a node is lost, then a re-plan onto the nodes
left or a stop that names what is still to train (`train_with_ray`).
"""

from __future__ import annotations

import math
import os
import sys

from mer_ray.data.store import read_store
from mer_ray.distributed.cluster import cluster_nodes
from mer_ray.distributed.plan import Plan, plan_lines, plan_workers, resources_text, worker_slots
from mer_ray.errors import RunStopped
from mer_ray.runs.driver import DriverState
from mer_ray.runs.run import absolute, missing, pending_specs, setting_label, train_members
from mer_ray.storage import join
from mer_ray.train.presets import TrainConfig


def _worker_loop(cfg: dict) -> None:
    """Runs on each Ray Train worker: train this worker's share of the missing members."""
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    config = TrainConfig(**cfg["config"])
    # Recomputed on every (re)start: members saved before a crash are never retrained.
    todo = pending_specs(cfg["run"], config, [tuple(s) for s in cfg["specs"]])
    mine = todo[rank::world]
    device = "cpu"
    if cfg["use_gpu"]:
        import ray.train.torch

        device = str(ray.train.torch.get_device())
    if mine:
        store = read_store(cfg["store"])
        train_members(store, config, mine, cfg["run"], cfg["pack_size"], device,
                      log=_stdout, tag=f"[{config.preset} w{config.warmup} worker {rank}] ",
                      log_every=cfg.get("log_every", 10),
                      tensorboard=cfg.get("tensorboard", True))
    ray.train.report({"members_trained": len(mine)})


def _stdout(msg: str) -> None:
    # Straight to the worker's stdout, which Ray streams to the driver once; Train V2's
    # patched print() would also copy each line through its logger (shown twice).
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


# How long a Train run may wait for capacity it lost (its workers cannot be placed)
# before it stops: Train V2 retries a worker group that cannot start every
# RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s by default), forever unless told.
WAIT_FOR_CAPACITY_S = 300.0
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
MAX_REPLANS = 3  # re-plans of one run on the nodes left, each after a lost node


def failure_config(max_failures: int, wait_s: float):
    """Bounded retries: worker failures, preemptions and worker groups that cannot start
    (no capacity) are each retried a bounded number of times, never forever."""
    from ray.train import FailureConfig

    start_timeout = float(os.environ.get(START_TIMEOUT_ENV, 60.0))
    return FailureConfig(max_failures=max_failures, max_preemption_failures=max_failures,
                         controller_failure_limit=max(1, math.ceil(wait_s / start_timeout)))


def train_with_ray(store_path: str, config, seeds, run: str, plan: Plan,
                   pack_size: int = 10, max_failures: int = 2, log=print,
                   log_every: int = 10, tensorboard: bool = True,
                   wait_s: float = WAIT_FOR_CAPACITY_S, state=None) -> int:
    """One recipe through a TorchTrainer. Returns the number of members it trained.
    Each worker prints its packs' progress every `log_every` epochs and writes its
    members' TensorBoard curves unless `tensorboard` is False.

    A node lost mid-run: Train restarts the worker group (bounded: `max_failures`, and
    at most `wait_s` waiting for capacity). If it still cannot, the members not saved go
    to as many workers as the nodes left can hold (up to MAX_REPLANS times, each time
    only if members were saved since); with no capacity left the run stops with
    RunStopped naming the lost node(s) and the members still to train. Nothing saved is
    lost and the same command resumes exactly the rest. `state`: a DriverState to keep
    `mer-ray status` informed."""
    from ray.train import RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    label = setting_label(config)
    specs, todo = missing(run, config, seeds, log)
    if not todo:
        if state is not None:
            state.set(label, "done")
        return 0
    total, workers, replans = len(todo), min(plan.workers, len(todo)), 0
    use_gpu = plan.resources.get("GPU", 0) > 0
    import ray

    while True:
        # what the cluster was, to name a lost node (fit() starts a local Ray if none is)
        nodes_before = {n["id"]: n for n in cluster_nodes()} if ray.is_initialized() else {}
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"config": config.to_dict(), "specs": specs, "run": str(run),
                               "store": str(store_path), "pack_size": pack_size,
                               "use_gpu": use_gpu, "log_every": log_every,
                               "tensorboard": tensorboard},
            # gloo, never NCCL (Train's default for GPU workers): the workers never use
            # the process group, and NCCL does not support two ranks on one GPU
            # ("Duplicate GPU detected"), which is what a fractional --gpus-per-worker
            # makes.
            torch_config=TorchConfig(backend="gloo"),
            # SPREAD: a run survives losing one node with the fewest members lost, and
            # CPU workers do not crowd one node.
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         resources_per_worker=plan.resources,
                                         placement_strategy="SPREAD"),
            run_config=RunConfig(
                # Named after the setting, never a timestamp: a restart finds the run.
                name="train-" + path_name(label), storage_path=ray_storage(run),
                failure_config=failure_config(max_failures, wait_s)),
        )
        if state is not None:
            state.set(label, "starting")
        try:
            trainer.fit()
            if state is not None:
                state.set(label, "done")
            return total
        except TrainingFailedError as e:
            nodes_now = cluster_nodes()
            alive = {n["id"] for n in nodes_now}
            lost = [n for i, n in nodes_before.items() if i not in alive]
            left = pending_specs(run, config, specs)
            if not left:
                return total
            slots = worker_slots(nodes_now, plan.resources)
            if not lost and slots >= workers:
                # no capacity lost: the workers themselves failed, and their error (raised
                # as it is) says why; re-planning would only fail again
                if state is not None:
                    state.set(label, "stopped", f"{label}: its workers failed "
                                                f"({first_line(e)})")
                raise
            saved_since = len(todo) - len(left)
            gone = ", ".join(f"{n['address']} ({n['id'][:8]})" for n in lost)
            why = (f"node(s) {gone} left the cluster" if lost else
                   "the cluster no longer holds its workers")
            if slots >= 1 and replans < MAX_REPLANS and (replans == 0 or saved_since):
                replans, todo = replans + 1, left
                workers = min(workers, slots, len(left))
                log(f"{label}: {why}; {len(left)} member(s) not saved go to "
                    f"{workers} worker(s) on the nodes left")
                continue
            reason = (f"{label}: {why}, and the nodes left cannot hold its workers "
                      f"({resources_text(plan.resources)} each) within {wait_s:.0f} s; "
                      f"{total - len(left)} of {total} member(s) saved and kept, "
                      f"{len(left)} still to train ({' '.join(f'f{f}s{s}' for f, s in left)}); "
                      "the same command resumes exactly these once there is capacity")
            if state is not None:
                state.set(label, "stopped", reason)
            raise RunStopped(reason) from None


def train_alone(store_path: str, config, seeds, run: str, workers: int | None = None,
                gpus_per_worker: float = 0, pack_size: int = 10, log=print, **kw) -> int:
    """`mer-ray train` through Ray: the plan printed, the driver's state kept for
    `mer-ray status`, then train_with_ray."""
    nodes = cluster_nodes()
    plan = plan_workers(workers, gpus_per_worker, 1, nodes)
    for line in plan_lines(plan, 1, nodes):
        log(line)
    state = DriverState(run, [setting_label(config)], log)
    try:
        trained = train_with_ray(store_path, config, seeds, run, plan, pack_size, log=log,
                                 state=state, **kw)
    except BaseException:
        state.close(keep=True)
        raise
    state.close()
    return trained


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def path_name(label: str) -> str:
    """A label as one safe path component, short enough for Tune's nested paths."""
    import hashlib
    import re

    name = re.sub(r"[^A-Za-z0-9_.=,+-]+", "-", label).strip("-")
    if len(name) > 100:
        name = f"{name[:88]}-{hashlib.sha1(label.encode()).hexdigest()[:10]}"
    return name


def ray_storage(run: str) -> str:
    """Ray Train / Tune bookkeeping beside the members (Ray needs an absolute path; a
    URI keeps its scheme and query)."""
    return join(absolute(run), "ray")


