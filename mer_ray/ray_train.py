"""Ray Train and Ray Tune around the member trainer (which itself never imports Ray).

- `run_train`: one recipe's fold x seed members as a Ray Train (V2) TorchTrainer whose
  workers split the members that are not saved yet and train their share in packs.
- `run_tune`: Ray Tune over a grid of recipe settings (the warmup grid 30/40/50); each
  trial is a function that launches the `run_train` TorchTrainer and reports its
  per-seed fold-averaged scores. FIFO: an early-stopping scheduler would kill ensemble
  members and compare folds of different difficulty.

Resources (`plan_workers`), so trials and their workers can never deadlock: a trial's own
function holds no CPU and only waits; the trials that run at once always have room for
all their Train workers together.
"""

from __future__ import annotations

import math
import os
import sys
import time
import dataclasses
from dataclasses import dataclass

from mer_ray.errors import InputError
from mer_ray.run import (absolute, missing, pending_specs, record_run, train_members,
                         trial_summary)

DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 8265
# A Tune trial function only waits on its TorchTrainer: it holds no CPU (Tune refuses an
# empty request, so it holds 1 MiB of Ray's memory resource instead).
TRIAL_RESOURCES = {"CPU": 0, "memory": 2**20}
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def connect(address: str | None = None, log=print, num_cpus: int | None = None,
            log_to_driver: bool = True) -> bool:
    """Join the cluster at `address` / RAY_ADDRESS, or start an embedded local Ray with
    the dashboard on 127.0.0.1:8265 (token authentication stays as Ray sets it).
    Returns True where this call connected (the caller shuts down), False if already."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, log_to_driver=log_to_driver)
        log(f"joined the Ray cluster at {address}")
    else:
        # address="local": always a fresh instance, never a `ray start` cluster that
        # happens to run on this machine.
        # Train V2 gives every run a preemption-watcher actor (one more process that
        # imports Ray Train); an embedded single-machine Ray has no node to preempt, and
        # on 2 cores each such process delays the first epoch. Set before ray.init so the
        # raylet (and every actor it starts) inherits it; a user's own setting wins.
        os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
        port = _free_port(DASHBOARD_PORT)
        if port != DASHBOARD_PORT:
            log(f"port {DASHBOARD_PORT} is in use; the dashboard takes port {port}")
        ctx = ray.init(address="local", include_dashboard=True, dashboard_host=DASHBOARD_HOST,
                       dashboard_port=port, num_cpus=num_cpus, log_to_driver=log_to_driver)
        log("started an embedded local Ray instance")
    if ctx.dashboard_url:
        log(f"Ray dashboard: http://{ctx.dashboard_url}")
    return True


def _free_port(preferred: int) -> int:
    import socket

    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind((DASHBOARD_HOST, port))
                return sock.getsockname()[1]
            except OSError:
                continue
    return preferred


@dataclass(frozen=True)
class Plan:
    """How a grid maps onto the cluster: every running trial's workers fit at once, so
    trials and their Train workers can never wait on each other (no deadlock)."""

    workers: int  # Train workers per trial
    concurrency: int  # trials running at once
    resources: dict  # per Train worker, e.g. {"CPU": 1} or {"CPU": 0.6666}


def plan_workers(workers: int | None, gpus_per_worker: float, n_trials: int = 1,
                 available: dict | None = None) -> Plan:
    """Fit `n_trials` runs of `workers` Train workers onto the cluster's resources.

    --workers given: each worker takes one CPU (or `gpus_per_worker` GPUs); as many trials
    run at once as fit. Default: the slots are shared out between the trials and every
    trial runs at once; where there are fewer slots than trials, each trial's single
    worker takes an equal fraction of them (3 trials on 2 CPUs: 0.6666 CPU each), so no
    core idles while the last trial of an odd grid runs alone."""
    if available is None:
        import ray

        available = ray.cluster_resources()
    unit, per = ("GPU", float(gpus_per_worker)) if gpus_per_worker > 0 else ("CPU", 1.0)
    have = available.get(unit, 0.0)
    what = f"{per:g} {unit}"
    if have <= 0:
        raise InputError(f"the Ray cluster has no {unit} for a Train worker ({what} each); "
                         "add resources or lower --gpus-per-worker")
    extra = {"CPU": 1.0} if unit == "GPU" else {}
    if workers:
        per_trial = workers * per
        if per_trial > have:
            raise InputError(f"--workers {workers} needs {workers} x {what}, but the cluster "
                             f"has {have:g} {unit}; lower --workers")
        return Plan(workers, max(1, min(n_trials, int(have // per_trial))), {unit: per, **extra})
    workers = max(1, int(have // per) // n_trials)
    share = min(per, math.floor(have / (n_trials * workers) * 1e4) / 1e4)
    return Plan(workers, n_trials, {unit: share, **extra})


def _worker_loop(cfg: dict) -> None:
    """Runs on each Ray Train worker: train this worker's share of the missing members."""
    import ray.train

    from mer_ray.data.store import read_store
    from mer_ray.presets import TrainConfig

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
                      log=_stdout, tag=f"[{config.preset} w{config.warmup} worker {rank}] ")
    ray.train.report({"members_trained": len(mine)})


def _stdout(msg: str) -> None:
    # Straight to the worker's stdout, which Ray streams to the driver once; Train V2's
    # patched print() would also copy each line through its logger (shown twice).
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def train_with_ray(store_path: str, config, seeds, run: str, plan: Plan,
                   pack_size: int = 10, max_failures: int = 2, log=print) -> int:
    """One recipe through a TorchTrainer. Returns the number of members it trained."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    specs, todo = missing(run, config, seeds, log)
    if not todo:
        return 0
    workers = min(plan.workers, len(todo))
    use_gpu = plan.resources.get("GPU", 0) > 0
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config.to_dict(), "specs": specs, "run": str(run),
                           "store": str(store_path), "pack_size": pack_size,
                           "use_gpu": use_gpu},
        # SPREAD: a run survives losing one node with the fewest members lost, and CPU
        # workers do not crowd one node.
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker=plan.resources,
                                     placement_strategy="SPREAD"),
        run_config=RunConfig(
            name=f"train-{config.preset}-w{config.warmup}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=_storage(run),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    trainer.fit()
    return len(todo)


def _storage(run: str) -> str:
    """Ray Train / Tune bookkeeping beside the members (Ray needs an absolute path)."""
    return f"{absolute(run).rstrip('/')}/ray"


def _trial(cfg: dict) -> None:
    """A Tune trial: train one grid setting through Ray Train, then report its scores."""
    import ray.tune

    from mer_ray.presets import TrainConfig

    config = TrainConfig(**cfg["config"]).replace(**cfg["setting"])
    train_with_ray(cfg["store"], config, cfg["seeds"], cfg["run"], Plan(**cfg["plan"]),
                   cfg["pack_size"])
    ray.tune.report(trial_summary(cfg["run"], config, cfg["seeds"]))


def tune_grid(store_path: str, config, settings: list[dict], seeds, run: str,
              workers: int | None = None, gpus_per_worker: float = 0, pack_size: int = 10,
              log=print):
    """Ray Tune over `settings` (e.g. [{"warmup": 30}, {"warmup": 40}, ...]).
    Returns the ResultGrid."""
    from ray import tune

    plan = plan_workers(workers, gpus_per_worker, len(settings))
    log(f"{len(settings)} trial(s), {plan.workers} Train worker(s) each with {plan.resources}, "
        f"{plan.concurrency} at once (FIFO)")
    record_run(run, store_path, [config.replace(**s) for s in settings])
    trainable = tune.with_resources(_trial, TRIAL_RESOURCES)
    tuner = tune.Tuner(
        trainable,
        param_space={"setting": tune.grid_search(settings), "config": config.to_dict(),
                     "seeds": [int(s) for s in seeds], "run": str(run),
                     "store": str(store_path), "plan": dataclasses.asdict(plan),
                     "pack_size": pack_size},
        tune_config=tune.TuneConfig(max_concurrent_trials=plan.concurrency),
        run_config=tune.RunConfig(
            name=f"tune-{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=_storage(run),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) failed; first: {errors[0]}")
    return grid
