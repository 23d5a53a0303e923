"""Running the figures and reporting them, with the machine they were taken on:
`mer-ray bench` (MEASUREMENTS in order; a text table on stdout, a JSON copy) and
benchmarks/gpu.py (its figures within a time budget; gpu-bench.json and a markdown
table, rewritten after each figure)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from mer_ray.bench.gemm import measure_gemm
from mer_ray.bench.grid_rate import measure_grid_rate
from mer_ray.bench.member_floor import measure_member_floor
from mer_ray.bench.packs import measure_packs
from mer_ray.bench.peak_memory import measure_peak_memory
from mer_ray.bench.profiles import Profile
from mer_ray.bench.ray_overhead import measure_ray_overhead
from mer_ray.bench.reference import measure_reference
from mer_ray.bench.rows import MET_MARKS, Row, elapsed, progress, reset_clock
from mer_ray.bench.runs import Bench
from mer_ray.bench.store_read import measure_store_read

# Each figure is one function returning Rows; later ones read earlier figures and reuse
# their timed runs (bench.value, bench.train), so the order matters.
MEASUREMENTS = [
    measure_store_read,
    measure_gemm,
    measure_member_floor,
    measure_packs,
    measure_reference,
    measure_peak_memory,
    measure_ray_overhead,
    measure_grid_rate,
]


def machine_info(device: str) -> dict:
    from importlib import metadata

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_memory_gb=props.total_memory / 1e9,
                    capability=f"{props.major}.{props.minor}")
    try:  # the installed version, without importing Ray (seconds)
        info["ray"] = metadata.version("ray")
    except metadata.PackageNotFoundError:
        info["ray"] = None
    return info


def fmt(v, missing: str = "n/a") -> str:
    if v is None:
        return missing
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def format_report(info: dict, profile: Profile, rows: list[Row], total_s: float,
                  phases: list[dict]) -> str:
    p = profile
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    load, load_end = info.get("load_avg_start"), info.get("load_avg_end")
    machine = (f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} "
               f"usable){gpu}; torch {info['torch']}, {info['torch_threads']} threads; "
               f"python {info['python']}")
    loads = None
    if load and load_end:
        loads = (f"load average at start {load[0]:.2f}, at end {load_end[0]:.2f} (other load "
                 "slows every timing; compare only figures from one run)")
    sizes = (f"profile: store read scale {p.read_scale:g} (median of {p.read_repeats}); "
             f"training scale {p.train_scale:g}; member {p.member_epochs} epochs; packs "
             f"{p.pack_epochs} epochs, K = {', '.join(map(str, p.pack_sizes))}; reference "
             f"loop {p.reference_members} member(s) vs K = "
             f"{', '.join(map(str, p.reference_sizes))}; peak {p.peak_members} members x "
             f"{p.peak_epochs} epoch; robust_v3, early stopping off, modality dropout from "
             "epoch 1" + (f"; hidden {p.hidden_dim}" if p.hidden_dim else ""))
    lines = [f"mer-ray bench, profile {p.name}, device {info['device']}, {info['date']}",
             machine, loads, sizes, ""]
    w = max(len(r.name) for r in rows)
    lines.append(f"{'figure':<{w}}  {'value':>9}  {'unit':<11}  {'target':<12}  note")
    lines.append("-" * (w + 50))
    for r in rows:
        tgt = ""
        if r.target:
            tgt = f"{r.target} " + MET_MARKS[r.met]
        lines.append(f"{r.name:<{w}}  {fmt(r.value):>9}  {r.unit:<11}  {tgt:<12}  {r.note}")
    lines.append("")
    # CPU far below wall time means this process waited for the cores: the figures of
    # that measurement are slowed by other load.
    lines.append("wall / cpu seconds per measurement (cpu of this process, up to "
                 f"{info['torch_threads']} threads): " + "; ".join(
                     f"{ph['measurement']} {ph['wall_s']:.0f} / {ph['cpu_s']:.0f}"
                     for ph in phases))
    lines.append(f"total {total_s:.0f} s")
    return "\n".join(line for line in lines if line is not None)


def report_json(info: dict, profile: Profile, rows: list[Row], total_s: float,
                failures: list[str], phases: list[dict]) -> dict:
    return {
        "machine": info,
        "profile": asdict(profile),
        "total_s": total_s,
        "measurements": phases,
        "figures": {r.key: {"name": r.name.strip(), "value": r.value, "unit": r.unit,
                            "note": r.note, "target": r.target or None, "met": r.met}
                    for r in rows},
        "failures": failures,
    }


def measure(bench, fn, step: str = "") -> tuple[dict, str | None]:
    """Run one measurement, its Rows into bench.figures (later ones read earlier ones).
    One that raises becomes a FAILED row, its traceback in bench.details["errors"], so
    the others still run. Returns (its wall and CPU seconds, the failure or None)."""
    name = fn.__name__.removeprefix("measure_")
    title = fn.__doc__.strip().splitlines()[0]
    progress(f"{step}{title}")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    failure = None
    try:
        for row in fn(bench):
            bench.figures[row.key] = row
    except Exception as e:  # noqa: BLE001  (one broken figure must not hide the rest)
        failure = f"{fn.__name__}: {type(e).__name__}: {e}"
        progress(f"FAILED {failure}")
        bench.figures[fn.__name__] = Row(fn.__name__, title, None, "",
                                         f"FAILED: {type(e).__name__}: {e}")
        bench.details.setdefault("errors", {})[name] = traceback.format_exc()
    phase = {"measurement": name, "wall_s": time.perf_counter() - wall0,
             "cpu_s": time.process_time() - cpu0}
    return phase, failure


def run_bench(profile: Profile, device: str = "cpu", json_path=None, workdir=None,
              out=None, measurements=None) -> dict:
    """Run every measurement (or the given ones), print the table to `out` (stdout),
    optionally write JSON. A measurement that fails is reported (row value n/a,
    `failures` in the JSON) and the others still run."""
    # before any torch thread exists: the trainer flushes denormals, and threads only
    # inherit that when created after it (see mer_ray.train.numerics.flush_denormals)
    import mer_ray.train.trainer  # noqa: F401

    out = out or sys.stdout
    reset_clock()
    info = machine_info(device)
    failures, phases = [], []
    measurements = MEASUREMENTS if measurements is None else measurements
    with tempfile.TemporaryDirectory(prefix="mer-ray-bench-", dir=workdir) as tmp:
        bench = Bench(profile, device, Path(tmp))
        for i, fn in enumerate(measurements, 1):
            phase, failure = measure(bench, fn, f"({i}/{len(measurements)}) ")
            phases.append(phase)
            failures += [failure] if failure else []
    total = elapsed()
    info["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    rows = [r for k, r in bench.figures.items() if not k.startswith("_")]
    print(format_report(info, profile, rows, total, phases), file=out, flush=True)
    result = report_json(info, profile, rows, total, failures, phases)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        progress(f"wrote {json_path}")
    return result


# ---------------------------------------------------------------- benchmarks/gpu.py
GPU_SCHEMA = "mer-ray gpu-bench 1"


def gpu_markdown(bench, info: dict, total_s: float) -> str:
    """benchmarks/gpu.py's table: a markdown header line on the machine, then one row per
    figure."""
    where = info.get("gpu") or f"CPU ({info['cores']} cores)"
    lines = [f"# mer-ray GPU benchmark ({bench.profile.name}, {info['device']})", "",
             f"{info['date']}; {where}; torch {info['torch']} (CUDA {info['cuda_build']}); "
             f"Python {info['python']}; Ray {info['ray'] or 'absent'}; total "
             f"{total_s:.0f} s.", "",
             "| figure | value | unit | target | met | note |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.name} | {fmt(r.value, missing='-')} | {r.unit} | {r.target} | "
              f"{MET_MARKS[r.met]} | {r.note} |" for r in bench.figures.values()]
    if bench.profile.name != "full" or not bench.cuda:
        lines += ["", "Targets are judged at full scale on CUDA only."]
    return "\n".join(lines) + "\n"


def write_gpu_report(out: Path, bench, info: dict, total_s: float, targets: dict) -> str:
    """DIR/gpu-bench.json and DIR/gpu-bench.md, rewritten after every figure so a run
    stopped at a time limit still leaves what it measured. Returns the table."""
    rows = [{"key": r.key, "label": r.name, "value": r.value, "unit": r.unit, "note": r.note,
             "target": r.target, "met": r.met} for r in bench.figures.values()]
    report = {"schema": GPU_SCHEMA, "profile": asdict(bench.profile), "machine": info,
              "total_s": total_s, "targets": targets, "rows": rows, "details": bench.details}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-bench.json").write_text(json.dumps(report, indent=1, default=str))
    table = gpu_markdown(bench, info, total_s)
    (out / "gpu-bench.md").write_text(table)
    return table


def run_gpu_bench(profile, device: str, out: Path, measurements, targets: dict) -> None:
    """benchmarks/gpu.py's run: the measurements in order on one bench (its store and
    TrainData made first), the report rewritten after each, the table printed last. One
    not started within the profile's budget_s is a skipped row: a run on a lent GPU must
    end, and report, inside the call's time limit."""
    reset_clock()
    info = machine_info(device)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        bench = Bench(profile, device, Path(tmp))
        write_gpu_report(out, bench, info, 0.0, targets)
        bench.train_data(profile.train_scale)  # the store, and its features on the device
        info["setup_s"] = elapsed()
        for fn in measurements:
            name, spent = fn.__name__.removeprefix("measure_"), elapsed()
            if spent > profile.budget_s:
                bench.figures[name] = Row(name, name, None, "", f"skipped: {spent:.0f} s "
                                          f"spent, over the budget of {profile.budget_s:.0f} s")
                continue
            phase, _ = measure(bench, fn)
            bench.details.setdefault("figure_s", {})[name] = phase["wall_s"]
            write_gpu_report(out, bench, info, elapsed(), targets)
    print(write_gpu_report(out, bench, info, elapsed(), targets), flush=True)
