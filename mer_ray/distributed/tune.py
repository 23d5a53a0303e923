"""Ray Tune over a grid of recipe settings (the warmup grid 30/40/50): each trial is a
function that launches the `train_with_ray` TorchTrainer and reports its per-seed
fold-averaged scores. FIFO: an early-stopping scheduler would kill ensemble members and
compare folds of different difficulty. A trial's own function holds no CPU and only
waits; the trials that run at once always have room for all their Train workers together
(mer_ray.distributed.plan), so trials and workers can never deadlock.

Live progress (`_trial`). A Tune trial reports while it runs, so the ResultGrid, Tune's
status table and the trial's progress.csv / result.json under RUN/ray/ hold a curve:
members saved of members_total, the least advanced running pack's epoch, best_f1 so far
(held-out F1 at the best epoch), progress (member-epochs done), members_training,
packs_running, best_combined. The trial function runs the TorchTrainer's fit() in a
thread and itself calls ray.tune.report at once, then every REPORT_EVERY_S seconds
where the numbers changed, from the run's own files (mer_ray.runs.status.TrialWatch): the
member files saved so far and the progress file each pack rewrites after every epoch
(mer_ray.runs.progress). Its last report is exactly trial_summary(...) of the saved members,
so `r.metrics` is the summary `mer-ray tune` tabulates; every report carries the
summary's keys (empty until then), since progress.csv keeps the first report's columns.
Why not `ray.train.report` from the workers: it is a barrier (every worker must call it
as often as the others) and only rank 0's metrics reach Tune, while workers here train
different numbers of members and finish at different times; a fast worker must never
wait for a slow one. Why files and not an actor the workers push to: the progress files
exist anyway, for `mer-ray status` (which reads a run with no Ray, after a crash too);
one reader, one truth; no extra process per trial (on 2 cores every Ray process delays
the first epoch), nothing lost or stale when a worker restarts. The workers write one
small file per pack per epoch (object storage: at most every 10 s) and nothing per step.
On a cluster RUN is shared storage already (cluster/README.md), so a trial reads what
workers on other nodes write.
"""

from __future__ import annotations

import dataclasses

from ensembles.groups import trial_summary, trial_summary_keys
from mer_ray.data.dataset import Dataset
from mer_ray.data.manifest import read_manifest
from mer_ray.distributed.cluster import AUTO_LOGGERS_ENV, cluster_nodes, restore_env, set_env
from mer_ray.distributed.plan import Plan, plan_lines, plan_workers
from mer_ray.distributed.train import (
    WAIT_FOR_CAPACITY_S,
    first_line,
    path_name,
    ray_storage,
    train_with_ray,
)
from mer_ray.errors import RunStopped
from mer_ray.runs.curves import TENSORBOARD_DIR
from mer_ray.runs.driver import DriverState
from mer_ray.runs.run import read_config_members, record_run, setting_label, value_text
from mer_ray.runs.status import TrialWatch
from mer_ray.storage import join
from mer_ray.train.presets import TrainConfig

# A Tune trial function only waits on its TorchTrainer: it holds no CPU (Tune refuses an
# empty request, so it holds 1 MiB of Ray's memory resource instead).
TRIAL_RESOURCES = {"CPU": 0, "memory": 2**20}


# How often a trial looks at its run's files for a live report (it reports on change).
REPORT_EVERY_S = 5.0


def _tensorboard_dir(run: str) -> str:
    return join(run, TENSORBOARD_DIR)


def _trial(cfg: dict) -> None:
    """A Tune trial: train one grid setting through Ray Train, reporting its progress
    while it runs and its scores at the end (module docstring: live progress)."""
    import json
    import threading

    import ray.tune

    config = TrainConfig(**cfg["config"]).replace(**cfg["setting"])
    run, seeds = cfg["run"], cfg["seeds"]
    watch = TrialWatch(run, config, seeds)
    dataset = Dataset.from_dict(read_manifest(cfg["store"])["dataset"])
    summary_keys = dict.fromkeys(trial_summary_keys(dataset), float("nan"))
    failure: list[BaseException] = []

    # every report carries `stopped` (empty until then): progress.csv keeps the first
    # report's columns, and a trial that stopped says why in its last report
    summary_keys["stopped"] = ""

    def fit():
        try:
            train_with_ray(cfg["store"], config, seeds, run, Plan(**cfg["plan"]),
                           cfg["pack_size"], log_every=cfg.get("log_every", 10),
                           tensorboard=cfg.get("tensorboard", True),
                           wait_s=cfg.get("wait_s", WAIT_FOR_CAPACITY_S))
        except BaseException as e:  # re-raised in the trial's own thread below
            failure.append(e)

    fitting = threading.Thread(target=fit, name="mer-ray-fit", daemon=True)
    fitting.start()
    last = None
    while True:
        try:
            snapshot = watch.snapshot()
        except Exception as e:  # noqa: BLE001 - a live report is never worth the trial
            print(f"note: no live report this time ({type(e).__name__}: {e})")
            snapshot = None
        if snapshot is not None and json.dumps(snapshot) != last:  # NaN-safe comparison
            ray.tune.report({**snapshot, **summary_keys})
            last = json.dumps(snapshot)
        if not fitting.is_alive():
            break
        fitting.join(cfg.get("report_every", REPORT_EVERY_S))
    if failure and isinstance(failure[0], RunStopped):
        # a clear stop, not a crash: the driver turns it into one line and exit 1
        ray.tune.report({**trial_summary(read_config_members(run, config, seeds)),
                         "stopped": str(failure[0])})
        return
    if failure:
        raise failure[0]
    ray.tune.report(trial_summary(read_config_members(run, config, seeds)))


def _trial_config(trial):
    return TrainConfig(**trial.config["config"]).replace(**trial.config["setting"])


def _trial_name(trial) -> str:
    return setting_label(_trial_config(trial))


def _trial_dirname(trial) -> str:
    return path_name(setting_label(_trial_config(trial)))


def _named_trial():
    """`_trial` as the trainable Tune would make of it, except that its actors show their
    trial's name (`robust_v3 warmup=40`) in the dashboard's Repr column and in front of
    their log lines, where every trial would show `ImplicitFunc` / `_trial`."""
    from ray import tune
    from ray.tune.trainable import wrap_function

    class TuneTrial(wrap_function(tune.with_resources(_trial, TRIAL_RESOURCES))):
        def __repr__(self):
            return self.trial_name

    TuneTrial.__qualname__ = "TuneTrial"  # the dashboard's Class column
    return TuneTrial


def _grid_name(config, settings: list[dict]) -> str:
    """`tune-robust_v3-warmup=30,40,50`: stable per grid, so the same command with the
    same --out finds its Tune folder again (Tune adds a new experiment state there and
    rewrites each trial's folder; the members themselves decide what is left to train)."""
    values: dict[str, list[str]] = {}
    for setting in settings:
        for field, value in setting.items():
            if value_text(value) not in values.setdefault(field, []):
                values[field].append(value_text(value))
    words = [config.preset] + [f"{k}={','.join(v)}" for k, v in values.items()]
    return "tune-" + path_name(" ".join(words))


def _state_callback(state):
    """Tune's view of each trial, into the driver state file (mer_ray.runs.progress)."""
    from ray import tune

    class TrialStates(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            state.set(_trial_name(trial), "starting")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("stopped"):
                state.set(_trial_name(trial), "stopped", result["stopped"])
            elif result.get("packs_running"):
                state.set(_trial_name(trial), "training")

        def on_trial_complete(self, iteration, trials, trial, **info):
            if state.state["settings"].get(_trial_name(trial), {}).get("state") != "stopped":
                state.set(_trial_name(trial), "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            state.set(_trial_name(trial), "stopped", "the trial failed (see the log)")

    return TrialStates()


def tune_grid(store_path: str, config, settings: list[dict], seeds, run: str,
              workers: int | None = None, gpus_per_worker: float = 0, pack_size: int = 10,
              log=print, log_every: int = 10, tensorboard: bool = True,
              report_every: float = REPORT_EVERY_S, verbose: int = 0,
              wait_s: float = WAIT_FOR_CAPACITY_S):
    """Ray Tune over `settings` (e.g. [{"warmup": 30}, {"warmup": 40}, ...]).
    Each trial reports its progress every `report_every` seconds where it changed, and
    its trial_summary at the end (module docstring); `verbose` is Tune's (1: its status
    table every 30 s). Returns the ResultGrid."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    nodes = cluster_nodes()
    plan = plan_workers(workers, gpus_per_worker, len(settings), nodes)
    lines = plan_lines(plan, len(settings), nodes)
    for line in lines:
        log(line)
    configs = [config.replace(**s) for s in settings]
    record_run(run, store_path, configs, seeds=seeds)
    # every setting starts as waiting; Tune's callback moves each on as its trial starts
    state = DriverState(run, [setting_label(c) for c in configs], log, note=lines[-1])
    tuner = tune.Tuner(
        _named_trial(),
        param_space={"setting": tune.grid_search(settings), "config": config.to_dict(),
                     "seeds": [int(s) for s in seeds], "run": str(run),
                     "store": str(store_path), "plan": dataclasses.asdict(plan),
                     "pack_size": pack_size, "log_every": log_every,
                     "tensorboard": tensorboard, "report_every": report_every,
                     "wait_s": wait_s},
        tune_config=tune.TuneConfig(max_concurrent_trials=plan.concurrency,
                                    trial_name_creator=_trial_name,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=_grid_name(config, settings),
            storage_path=ray_storage(run),
            failure_config=tune.FailureConfig(max_failures=1),
            # Tune's CSV and JSON loggers (progress.csv, result.json under RUN/ray/) but
            # not its TensorBoard one: that holds the trials' reports, in Ray's temp
            # folder on the head, and its hint would point there; the members' curves
            # are in RUN/tensorboard.
            verbose=verbose, callbacks=[_state_callback(state), CSVLoggerCallback(),
                                        JsonLoggerCallback()],
        ),
    )
    if tensorboard:
        log(f"members' curves: tensorboard --logdir {_tensorboard_dir(run)}")
    set_env(AUTO_LOGGERS_ENV, "1", keep_users=True)
    try:
        grid = tuner.fit()
    except BaseException:
        state.close(keep=True)
        raise
    finally:
        restore_env(AUTO_LOGGERS_ENV)
    stopped = [r.metrics.get("stopped") for r in grid if r.metrics and r.metrics.get("stopped")]
    errors = [r.error for r in grid if r.error]
    state.close(keep=bool(stopped or errors))
    if stopped or errors:
        lines = stopped + [f"a trial failed: {first_line(e)}" for e in errors]
        raise RunStopped(f"{len(lines)} of {len(settings)} trial(s) stopped: "
                         + " | ".join(lines) + " (every saved member is kept; `mer-ray "
                         f"status {run}` shows what is left)")
    return grid
