"""Ray Train and Ray Tune around the member trainer (which itself never imports Ray).

- `train_with_ray`: one recipe's fold x seed members as a Ray Train (V2) TorchTrainer whose
  workers split the members that are not saved yet and train their share in packs.
- `tune_grid`: Ray Tune over a grid of recipe settings (the warmup grid 30/40/50); each
  trial is a function that launches the `train_with_ray` TorchTrainer and reports its
  per-seed fold-averaged scores. FIFO: an early-stopping scheduler would kill ensemble
  members and compare folds of different difficulty.

Resources (`plan_workers`), so trials and their workers can never deadlock: a trial's own
function holds no CPU and only waits; the trials that run at once always have room for
all their Train workers together.

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

import math
import os
import sys
import dataclasses
from dataclasses import dataclass

from mer_ray.errors import InputError, RunStopped
from mer_ray.runs.run import (absolute, missing, pending_specs, read_config_members, record_run,
                         setting_label, train_members, value_text)

DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 8265
# A Tune trial function only waits on its TorchTrainer: it holds no CPU (Tune refuses an
# empty request, so it holds 1 MiB of Ray's memory resource instead).
TRIAL_RESOURCES = {"CPU": 0, "memory": 2**20}
# How often a trial looks at its run's files for a live report (it reports on change).
REPORT_EVERY_S = 5.0
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# Ray 2.60's Train API (/api/train/v2/runs/v1) lists runs only where Train tracks them.
STATE_TRACKING_ENV = "RAY_TRAIN_ENABLE_STATE_TRACKING"
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"
# Ray folds lines of different processes that differ only in words with digits into one
# "[repeated 2x across cluster]" line, and every member's progress line is such a line.
# The embedded Ray folds nothing (allow: every line) except Ray's own noise, which it
# drops (skip; it stays in Ray's log files): the raylet's warning about many worker
# processes started at once (trials hold no CPU on purpose) and the two-line deprecation
# warning that Train's state tracking prints in every run. Ray tries the allow pattern
# before the skip pattern. A job gets the same two from cluster/runtime_env.yaml.
_RAY_NOISE = "|".join((r"WARNING: \d+ PYTHON worker processes have been started",
                       r"\S*execution_options\.py:\d+: RayDeprecationWarning",
                       r"\s+self\.exclude_resources = exclude_resources$"))
CONSOLE_ENV = {"RAY_DEDUP_LOGS_ALLOW_REGEX": rf"^(?!{_RAY_NOISE})",
               "RAY_DEDUP_LOGS_SKIP_REGEX": rf"^(?:{_RAY_NOISE})"}


def connect(address: str | None = None, log=print, num_cpus: int | None = None,
            log_to_driver: bool = True) -> bool:
    """Join the cluster at `address` / RAY_ADDRESS, or start an embedded local Ray with
    the dashboard on 127.0.0.1:8265 (or a free port). Token authentication stays as Ray
    sets it, so the dashboard's URL is printed with where its login token is.
    Returns True where this call connected (the caller shuts down), False if already."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, log_to_driver=log_to_driver)
        log(f"joined the Ray cluster at {address}")
        secrets = secret_names(ray.get_runtime_context().runtime_env.get("env_vars") or {})
        if secrets:
            log(f"warning: this job's runtime env carries {', '.join(secrets)}: Ray writes "
                "a runtime env in plain text into its logs on every node; give the nodes "
                "storage credentials through their own environment, an instance profile or "
                "a credentials file (cluster/README.md, \"Storage credentials\")")
    else:
        # address="local": always a fresh instance, never a `ray start` cluster that
        # happens to run on this machine.
        # Train V2 gives every run a preemption-watcher actor (one more process that
        # imports Ray Train); an embedded single-machine Ray has no node to preempt, and
        # on 2 cores each such process delays the first epoch. Set before ray.init so the
        # raylet (and every actor it starts) inherits it; a user's own setting wins.
        _set_env(PREEMPTION_WATCHER_ENV, "0", keep_users=True)
        _set_env(STATE_TRACKING_ENV, "1", keep_users=True)
        _console_filters()
        port = _free_port(DASHBOARD_PORT)
        if port != DASHBOARD_PORT:
            log(f"port {DASHBOARD_PORT} is in use; the dashboard takes port {port}")
        # Train's own actors ask Ray's state API whether their controller lives; given no
        # address they look for "the" Ray on this machine and can reach another one (a
        # `ray start` head, a second embedded Ray). Point them at this one's dashboard.
        _set_env("RAY_API_SERVER_ADDRESS", f"http://{DASHBOARD_HOST}:{port}")
        token_file = os.path.expanduser(DEFAULT_TOKEN_FILE)
        had_token = os.path.exists(token_file)
        ctx = ray.init(address="local", include_dashboard=True, dashboard_host=DASHBOARD_HOST,
                       dashboard_port=port, num_cpus=num_cpus, log_to_driver=log_to_driver)
        if not had_token and os.path.exists(token_file):
            os.chmod(token_file, 0o600)  # Ray wrote it with the umask: readable by all
        log("started an embedded local Ray instance")
    if ctx.dashboard_url:
        log(f"Ray dashboard: http://{ctx.dashboard_url}")
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            log(f"  it asks for the token {_token_source()} "
                "(`ray get-auth-token` prints it)")
    return True


SECRET_WORDS = ("SECRET", "PASSWORD", "PASSWD", "TOKEN", "PRIVATE", "API_KEY",
                "CREDENTIAL")


def secret_names(env_vars: dict) -> list[str]:
    """The names among `env_vars` that look like they hold a secret."""
    return sorted(n for n in env_vars if any(w in n.upper() for w in SECRET_WORDS))


# What connect() changed in this process's environment, to put back on disconnect():
# RAY_API_SERVER_ADDRESS names this embedded Ray's dashboard, and left behind it would
# send a later `ray job submit` (or another Ray) to a dashboard that is gone.
_SAVED_ENV: dict[str, str | None] = {}


def _set_env(name: str, value: str, keep_users: bool = False) -> None:
    if keep_users and name in os.environ:
        return  # a user's own setting wins
    _SAVED_ENV.setdefault(name, os.environ.get(name))
    os.environ[name] = value


AUTO_LOGGERS_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


def _restore_env(name: str) -> None:
    """Put back what _set_env changed for `name` (nothing if it kept the user's)."""
    if name in _SAVED_ENV:
        value = _SAVED_ENV.pop(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _tensorboard_dir(run: str) -> str:
    from mer_ray.runs.progress import TENSORBOARD_DIR
    from mer_ray.storage import join

    return join(run, TENSORBOARD_DIR)


def disconnect() -> None:
    """Shut down the Ray that connect() started, and undo its environment changes."""
    import ray

    ray.shutdown()
    for name in list(_SAVED_ENV):
        _restore_env(name)


def _token_source() -> str:
    """Where Ray reads the token, first match wins: RAY_AUTH_TOKEN, the file that
    RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token (a local ray.init() writes one there
    if none is found)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "in $RAY_AUTH_TOKEN"
    return "in " + os.path.expanduser(os.environ.get("RAY_AUTH_TOKEN_PATH")
                                      or DEFAULT_TOKEN_FILE)


def _console_filters() -> None:
    """Set CONSOLE_ENV (a user's own setting wins). Ray reads these when a process
    imports it, so the line filters this process already made are given them too."""
    import re

    from ray._private import ray_logging

    for name, value in CONSOLE_ENV.items():
        os.environ.setdefault(name, value)
    allow, skip = (os.environ[name] or None for name in CONSOLE_ENV)
    for dedup in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
        dedup.allow_re = allow and re.compile(allow)
        dedup.skip_re = skip and re.compile(skip)


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


def _fits(have: float, per: float) -> int:
    """How many requests of `per` fit in `have`. Float floor division undercounts:
    1 // 0.2 == 4.0 and 8 // 0.16 == 49.0, since 0.2 and 0.16 are stored a little
    above their decimal value; Ray itself counts in units of 1e-4."""
    return int(math.floor(have / per + 1e-9))


def _slots(nodes: list[dict], per: dict) -> int:
    """Workers of `per` that fit the nodes, each worker on one node."""
    return sum(min(_fits(float(n.get(u, 0.0)), v) for u, v in per.items() if v > 0)
               for n in nodes)


def _share(nodes: list[dict], unit: str, requests: int, most: float) -> float:
    """The largest share of `unit` (at most `most`, in Ray's 1e-4 units) of which
    `requests` fit on the nodes, each on one node."""
    best = 0.0
    for n in nodes:
        have = float(n.get(unit, 0.0))
        for k in range(1, requests + 1):
            share = math.floor(min(most, have / k) * 1e4) / 1e4
            if share > best and sum(_fits(float(m.get(unit, 0.0)), share)
                                    for m in nodes) >= requests:
                best = share
    return best


def cluster_nodes() -> list[dict]:
    """The live nodes' CPU and GPU totals, with their addresses (`ray.nodes()`)."""
    import ray

    return [{"CPU": float(n["Resources"].get("CPU", 0.0)),
             "GPU": float(n["Resources"].get("GPU", 0.0)),
             "address": n.get("NodeManagerAddress", "?"), "id": n.get("NodeID", "")}
            for n in ray.nodes() if n.get("Alive")]


def plan_workers(workers: int | None, gpus_per_worker: float, n_trials: int = 1,
                 available=None) -> Plan:
    """Fit `n_trials` runs of `workers` Train workers onto the cluster's nodes.

    A worker takes one CPU, or `gpus_per_worker` GPUs and one CPU to drive them, on one
    node, so GPU workers are bounded by GPUs and by CPUs alike (0.1 GPU each on 8 GPUs
    and 16 CPUs is 16 workers, not 80 that wait for CPUs forever), and what fits is
    counted node by node, never from the cluster's totals (two 1-CPU nodes hold two
    1-CPU workers, or three of 0.5 CPU, not three of 0.6666).
    --workers given: as many trials run at once as fit. Default: the worker slots are
    shared out between the trials and every trial runs at once; where there are fewer
    slots than trials, each trial's single worker takes an equal fraction of what there
    is (3 trials on 2 CPUs: 0.6666 CPU each; on 1 GPU with 0.5 each: 0.3333 GPU each),
    so no core or GPU idles while the last trial of an odd grid runs alone.
    `available`: one node's resources (a dict), a list of nodes, or None for the live
    cluster's nodes."""
    if available is None:
        available = cluster_nodes()
    nodes = [available] if isinstance(available, dict) else list(available)
    gpu = gpus_per_worker > 0
    need = {"GPU": float(gpus_per_worker), "CPU": 1.0} if gpu else {"CPU": 1.0}
    have = {unit: sum(float(n.get(unit, 0.0)) for n in nodes) for unit in need}
    what = _resources_text(need)
    for unit in need:
        if have[unit] <= 0:
            raise InputError(f"the Ray cluster has no {unit} for a Train worker ({what} "
                             "each); add resources or lower --gpus-per-worker")
    slots = _slots(nodes, need)  # whole workers that fit, node by node
    if workers:
        if slots < workers:
            short = ", ".join(f"{have[u]:g} {u}" for u in need)
            raise InputError(f"--workers {workers} needs {workers} x ({what}), each on one "
                             f"node, but the cluster's {len(nodes)} node(s) hold {slots} "
                             f"({short} in all); lower --workers"
                             + (" or --gpus-per-worker" if gpu else ""))
        return Plan(workers, max(1, min(n_trials, slots // workers)), need)
    workers = max(1, slots // n_trials)
    requests = n_trials * workers
    shares = {u: _share(nodes, u, requests, v) for u, v in need.items()}
    for _ in range(60):  # units shared apart may not fit together on one node
        if _slots(nodes, shares) >= requests and all(shares.values()):
            return Plan(workers, n_trials, shares)
        shares = {u: math.floor(v * 0.9 * 1e4) / 1e4 for u, v in shares.items()}
    raise InputError(f"no node of the Ray cluster holds a Train worker's {what} together "
                     "(or a share of them); add a node with both, or lower "
                     "--gpus-per-worker")


def plan_lines(plan: Plan, n_trials: int, nodes: list[dict] | None = None) -> list[str]:
    """What runs at once, what waits, and why: the first lines of a Ray run."""
    per = _resources_text(plan.resources)
    where = ""
    if nodes:
        def node_text(n):
            return f"{n.get('address', '?')}: {n.get('CPU', 0):g} CPU" + (
                f", {n['GPU']:g} GPU" if n.get("GPU") else "")
        where = f" on {len(nodes)} node(s) ({'; '.join(node_text(n) for n in nodes)})"
    if n_trials == 1:
        return [f"one Train run of {plan.workers} worker(s), each with {per}{where}"]
    lines = [f"{n_trials} trial(s), {plan.workers} Train worker(s) each with {per}{where}"]
    if plan.concurrency >= n_trials:
        lines.append(f"all {n_trials} at once: every trial's workers fit together")
    else:
        lines.append(f"{plan.concurrency} at once (FIFO): {n_trials - plan.concurrency} "
                     f"trial(s) wait, quietly, for a running one to finish, since only "
                     f"{plan.concurrency} x {plan.workers} worker(s) fit the nodes together")
    return lines


def _worker_loop(cfg: dict) -> None:
    """Runs on each Ray Train worker: train this worker's share of the missing members."""
    import ray.train

    from mer_ray.data.store import read_store
    from mer_ray.train.presets import TrainConfig

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
                name="train-" + _path_name(label), storage_path=_storage(run),
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
            slots = _slots(nodes_now, plan.resources)
            if not lost and slots >= workers:
                # no capacity lost: the workers themselves failed, and their error (raised
                # as it is) says why; re-planning would only fail again
                if state is not None:
                    state.set(label, "stopped", f"{label}: its workers failed "
                                                f"({_first_line(e)})")
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
                      f"({_resources_text(plan.resources)} each) within {wait_s:.0f} s; "
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
    from mer_ray.runs.progress import DriverState

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


def _resources_text(resources: dict) -> str:
    return " + ".join(f"{v:g} {u}" for u, v in resources.items())


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _path_name(label: str) -> str:
    """A label as one safe path component, short enough for Tune's nested paths."""
    import hashlib
    import re

    name = re.sub(r"[^A-Za-z0-9_.=,+-]+", "-", label).strip("-")
    if len(name) > 100:
        name = f"{name[:88]}-{hashlib.sha1(label.encode()).hexdigest()[:10]}"
    return name


def _storage(run: str) -> str:
    """Ray Train / Tune bookkeeping beside the members (Ray needs an absolute path; a
    URI keeps its scheme and query)."""
    from mer_ray.storage import join

    return join(absolute(run), "ray")


def _trial(cfg: dict) -> None:
    """A Tune trial: train one grid setting through Ray Train, reporting its progress
    while it runs and its scores at the end (module docstring: live progress)."""
    import json
    import threading

    import ray.tune

    from ensembles.groups import trial_summary, trial_summary_keys
    from mer_ray.data.store import read_manifest
    from mer_ray.data.dataset import Dataset
    from mer_ray.train.presets import TrainConfig
    from mer_ray.runs.status import TrialWatch

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
    from mer_ray.train.presets import TrainConfig

    return TrainConfig(**trial.config["config"]).replace(**trial.config["setting"])


def _trial_name(trial) -> str:
    return setting_label(_trial_config(trial))


def _trial_dirname(trial) -> str:
    return _path_name(setting_label(_trial_config(trial)))


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
    return "tune-" + _path_name(" ".join(words))


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

    from mer_ray.runs.progress import DriverState

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
            storage_path=_storage(run),
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
    _set_env(AUTO_LOGGERS_ENV, "1", keep_users=True)
    try:
        grid = tuner.fit()
    except BaseException:
        state.close(keep=True)
        raise
    finally:
        _restore_env(AUTO_LOGGERS_ENV)
    stopped = [r.metrics.get("stopped") for r in grid if r.metrics and r.metrics.get("stopped")]
    errors = [r.error for r in grid if r.error]
    state.close(keep=bool(stopped or errors))
    if stopped or errors:
        lines = stopped + [f"a trial failed: {_first_line(e)}" for e in errors]
        raise RunStopped(f"{len(lines)} of {len(settings)} trial(s) stopped: "
                         + " | ".join(lines) + " (every saved member is kept; `mer-ray "
                         f"status {run}` shows what is left)")
    return grid
