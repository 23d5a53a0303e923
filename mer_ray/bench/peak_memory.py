"""Figure: the peak memory of a 25-member pack, in a fresh subprocess so that the
high-water mark is the pack's own and not this process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mer_ray.bench.rows import Row, progress
from mer_ray.bench.runs import fold_specs, pythonpath_with_tree, timed_train


def rss_bytes() -> tuple[int | None, int | None]:
    """(current RSS, peak RSS) of this process in bytes, from /proc/self/status (Linux).

    Not ru_maxrss: a child started by fork/vfork + exec inherits its parent's high-water
    mark in ru_maxrss (Linux folds the old address space's peak into it at exec), so a
    subprocess of a 2 GB bench process reports >= 2 GB before it has done anything.
    VmHWM belongs to the process's own address space."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        kib = {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}
        return kib["VmRSS"], kib["VmHWM"]
    except (OSError, KeyError, ValueError):
        return None, None


def peak_worker(arg: str) -> None:
    """Subprocess body of measure_peak_memory: read the store, note the RSS, train the
    pack, note the peak; one JSON line on stdout."""
    import resource

    from mer_ray.data.store import read_store
    from mer_ray.train.presets import TrainConfig

    a = json.loads(arg)
    store = read_store(a["store"])
    base, _ = rss_bytes()
    run = timed_train(store, TrainConfig(**a["config"]), fold_specs(a["members"]), a["device"])
    _, peak = rss_bytes()
    out = {"baseline_rss": base, "peak_rss": peak, "wall_s": run.wall_s,
           # Linux: KiB, and inherited from the parent (see rss_bytes); kept for reference
           "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "cuda_peak": run.gpu_peak_bytes}
    print(json.dumps(out), flush=True)


def measure_peak_memory(bench) -> list[Row]:
    """peak memory of a 25-member pack (fresh subprocess)"""
    p = bench.profile
    k = p.peak_members
    arg = json.dumps({"store": str(bench.store_path(p.train_scale)), "members": k,
                      "device": bench.device, "config": bench.config(p.peak_epochs).to_dict()})
    progress(f"subprocess: {k}-member pack, {p.peak_epochs} epoch(s), for its peak RSS")
    env = {**os.environ, "PYTHONPATH": pythonpath_with_tree()}
    code = ("import sys; from mer_ray.bench.peak_memory import peak_worker; "
            "peak_worker(sys.argv[1])")
    proc = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True,
                          env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess failed:\n{proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    mb = 1e6
    if r["peak_rss"] is None:  # no /proc: ru_maxrss, an upper bound (inherits the parent's)
        r["peak_rss"], how = r["ru_maxrss"], "ru_maxrss (may include the parent's peak)"
    else:
        how = "VmHWM"
    rows = [
        Row(f"peak{k}_rss_mb", f"{k}-pack peak RSS", r["peak_rss"] / mb, "MB",
            f"{how} of a fresh process: torch + store + {p.peak_epochs}-epoch pack "
            f"(scale {p.train_scale:g}, {r['wall_s']:.1f} s)", target="< 3000"),
        Row(f"peak{k}_baseline_rss_mb", f"{k}-pack baseline RSS",
            None if r["baseline_rss"] is None else r["baseline_rss"] / mb, "MB",
            "same process after imports + read_store, before train_pack (VmRSS)"),
        Row(f"peak{k}_pack_mb", f"{k}-pack own share",
            None if r["baseline_rss"] is None else (r["peak_rss"] - r["baseline_rss"]) / mb,
            "MB", "peak - baseline: weights, Adam state, grads, activations, best weights, "
            "feature copy"),
    ]
    if r["cuda_peak"] is not None:
        rows.append(Row(f"peak{k}_cuda_mb", f"{k}-pack peak GPU memory", r["cuda_peak"] / mb,
                        "MB", "torch.cuda.max_memory_allocated"))
    return rows
