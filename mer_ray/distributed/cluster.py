"""Joining a Ray cluster or starting an embedded local one (its dashboard, token and
console filters), and what its live nodes hold."""

from __future__ import annotations

import os

DASHBOARD_HOST = "127.0.0.1"


DASHBOARD_PORT = 8265


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
        set_env(PREEMPTION_WATCHER_ENV, "0", keep_users=True)
        set_env(STATE_TRACKING_ENV, "1", keep_users=True)
        _console_filters()
        port = _free_port(DASHBOARD_PORT)
        if port != DASHBOARD_PORT:
            log(f"port {DASHBOARD_PORT} is in use; the dashboard takes port {port}")
        # Train's own actors ask Ray's state API whether their controller lives; given no
        # address they look for "the" Ray on this machine and can reach another one (a
        # `ray start` head, a second embedded Ray). Point them at this one's dashboard.
        set_env("RAY_API_SERVER_ADDRESS", f"http://{DASHBOARD_HOST}:{port}")
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


def set_env(name: str, value: str, keep_users: bool = False) -> None:
    if keep_users and name in os.environ:
        return  # a user's own setting wins
    _SAVED_ENV.setdefault(name, os.environ.get(name))
    os.environ[name] = value


AUTO_LOGGERS_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


def restore_env(name: str) -> None:
    """Put back what set_env changed for `name` (nothing if it kept the user's)."""
    if name in _SAVED_ENV:
        value = _SAVED_ENV.pop(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def disconnect() -> None:
    """Shut down the Ray that connect() started, and undo its environment changes."""
    import ray

    ray.shutdown()
    for name in list(_SAVED_ENV):
        restore_env(name)


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


def cluster_nodes() -> list[dict]:
    """The live nodes' CPU and GPU totals, with their addresses (`ray.nodes()`)."""
    import ray

    return [{"CPU": float(n["Resources"].get("CPU", 0.0)),
             "GPU": float(n["Resources"].get("GPU", 0.0)),
             "address": n.get("NodeManagerAddress", "?"), "id": n.get("NodeID", "")}
            for n in ray.nodes() if n.get("Alive")]
