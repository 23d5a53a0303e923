"""How many Train workers a run gets and how many trials run at once, from each node's
CPUs and GPUs: every running trial's workers fit at once, so trials and their workers
never wait on each other."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mer_ray.distributed.cluster import cluster_nodes
from mer_ray.errors import InputError


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


def worker_slots(nodes: list[dict], per: dict) -> int:
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
    what = resources_text(need)
    for unit in need:
        if have[unit] <= 0:
            raise InputError(f"the Ray cluster has no {unit} for a Train worker ({what} "
                             "each); add resources or lower --gpus-per-worker")
    slots = worker_slots(nodes, need)  # whole workers that fit, node by node
    if workers:
        if slots < workers:
            short = ", ".join(f"{have[u]:g} {u}" for u in need)
            raise InputError(f"{workers} needs {workers} x ({what}), each on one "
                             f"node, but the cluster's {len(nodes)} node(s) hold {slots} "
                             f"({short} in all); lower --workers"
                             + (" or --gpus-per-worker" if gpu else ""), param="workers")
        return Plan(workers, max(1, min(n_trials, slots // workers)), need)
    workers = max(1, slots // n_trials)
    requests = n_trials * workers
    shares = {u: _share(nodes, u, requests, v) for u, v in need.items()}
    for _ in range(60):  # units shared apart may not fit together on one node
        if worker_slots(nodes, shares) >= requests and all(shares.values()):
            return Plan(workers, n_trials, shares)
        shares = {u: math.floor(v * 0.9 * 1e4) / 1e4 for u, v in shares.items()}
    raise InputError(f"no node of the Ray cluster holds a Train worker's {what} together "
                     "(or a share of them); add a node with both, or lower "
                     "--gpus-per-worker")


def plan_lines(plan: Plan, n_trials: int, nodes: list[dict] | None = None) -> list[str]:
    """What runs at once, what waits, and why: the first lines of a Ray run."""
    per = resources_text(plan.resources)
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


def resources_text(resources: dict) -> str:
    return " + ".join(f"{v:g} {u}" for u, v in resources.items())
