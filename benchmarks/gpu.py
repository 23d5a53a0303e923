"""The GPU benchmark: every figure of the GPU path in one call, under 8 minutes on one
H100 / H200.

    python3 benchmarks/gpu.py --out DIR                  # the GPU node (CUDA, full scale)
    python3 benchmarks/gpu.py --out DIR --ray            # + the grid through Ray Tune + Train
    .venv/bin/python benchmarks/gpu.py --cpu --tiny --out DIR   # seconds, anywhere (a test)

Needs torch, numpy, pyarrow, scikit-learn and safetensors, which the bare GPU node has;
Ray only for `--ray` (from the bundle of docs/gpu.md; without it the figure is a line
saying so). Synthetic MER2023 at full scale is generated in-process into a temporary
folder. Figures, in the order they run (`--figures` picks some):

  pytest     `pytest --device cuda` on tests/test_cuda.py and the device-aware tests, as
             a subprocess: correct first
  pack       one 25-member pack vs one member alone, seconds per member-epoch (median
             of the epochs after the first; robust_v3, early stopping off, modality
             dropout from epoch 1, so the epochs compare)
  reference  mer_ray.train.reference.train_member (one member in plain PyTorch), per epoch,
             beside train_pack with K=1
  precision  fp32 / tf32 / bf16 on the same 25 members: seconds per member-epoch and the
             test1 logits' distance to fp32's
  memory     peak GPU memory (torch.cuda.max_memory_allocated) of a 25- and a 75-member
             pack (one config, seeds 0-14), above what the features take, per member
  grid       the warmup grid: robust_v3, warmups 30/40/50 x 5 folds x 5 seeds = 75
             members, 100 epochs with the recipe's early stopping, as 3 packs of 25 one
             after the other (one config per pack), end to end on one GPU, no Ray
  ray        (--ray) the same grid through mer_ray.distributed.tune.tune_grid with 1/3 GPU
             per Train worker (the 3 trials share the GPU), Ray's start inside the
             timing, against the same grid without Ray writing the same member files

Writes DIR/gpu-bench.json (every figure, its details, the machine) and DIR/gpu-bench.md
(the table, also printed last), both rewritten after every figure, so a run stopped at
its time limit still returns what it measured; figures not started within 450 s are
skipped with a line. A figure that raises is a FAILED line with its traceback in the
JSON, and the others still run. Targets are judged at full scale on CUDA only; `--tiny`
(scale 0.05, 5-member packs, 2-3 epochs) checks that the script runs.

The machinery is mer_ray.bench's: the profiles (profiles.GPU_PROFILES), rows, timed
train_pack runs, the bench state, the machine, the run and its report
(report.run_gpu_bench); here are the GPU figures, their targets and the command line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the GPU node runs the working tree, not an install

import numpy as np  # noqa: E402
import torch  # noqa: E402

# imported before torch's threads exist (torch.set_num_threads in main): the trainer
# flushes denormals on import, and threads only inherit that when created after it
import mer_ray.train.trainer  # noqa: E402, F401
from mer_ray.bench.profiles import GPU_PROFILES  # noqa: E402
from mer_ray.bench.reference import time_reference  # noqa: E402
from mer_ray.bench.report import run_gpu_bench  # noqa: E402
from mer_ray.bench.rows import Row, ms, ratio, steady, sync  # noqa: E402
from mer_ray.bench.runs import Bench, fold_specs, pythonpath_with_tree  # noqa: E402
from mer_ray.train.presets import get_preset  # noqa: E402

GB = 1e9
# judged at full scale on CUDA
TARGETS = {"grid_s": "<= 20", "ray_ratio": "<= 1.15", "pack_speedup": ">= 25",
           "memory75_gb": "<= 10"}


def row(bench: Bench, key: str, label: str, value, unit: str = "", note: str = "") -> Row:
    """A figure with its target from TARGETS, judged only where the targets are meant:
    the full profile on CUDA."""
    return Row(key, label, value, unit, note, TARGETS.get(key, ""),
               judged=bench.cuda and bench.profile.name == "full")


def relative_distance(a, b) -> float:
    """|a - b| / |b| (Frobenius norms)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ---------------------------------------------------------------- figures
def measure_pack(bench: Bench) -> list[Row]:
    """one K-member pack vs one member alone, per member-epoch"""
    k = 5 * bench.profile.seeds
    cfg = bench.config(bench.profile.timing_epochs)
    pack = bench.train_fresh(fold_specs(k), cfg)
    one = bench.train_fresh([(0, 0)], cfg)
    per_member = pack.steady_epoch_s / k
    bench.details["pack"] = {"k": k, "pack_epoch_s": pack.epoch_s, "single_epoch_s": one.epoch_s}
    return [
        row(bench, "pack_member_epoch_ms", f"{k}-pack, per member-epoch", ms(per_member), "ms",
            f"median of epochs 2-{len(pack.epoch_s)} of one {k}-member train_pack / {k}"),
        row(bench, "single_member_epoch_ms", "one member alone, per epoch",
            ms(one.steady_epoch_s), "ms", "train_pack with K=1, same epochs"),
        row(bench, "pack_speedup", f"{k}-pack vs one at a time, per member-epoch",
            ratio(one.steady_epoch_s, per_member), "x"),
    ]


def measure_reference(bench: Bench) -> list[Row]:
    """the reference loop (plain PyTorch) vs train_pack K=1, per epoch"""
    cfg = bench.config(bench.profile.timing_epochs)
    reference_s, _ = time_reference(bench, cfg, [(0, 0)])  # the epochs after the first
    pack1 = bench.train_fresh([(0, 0)], cfg)
    reference_epoch_s = float(np.median(reference_s))
    bench.details["reference"] = {"reference_epoch_s": reference_s, "pack1_epoch_s": pack1.epoch_s}
    return [
        row(bench, "reference_epoch_ms", "reference loop (plain PyTorch), per epoch",
            ms(reference_epoch_s), "ms", "mer_ray.train.reference.train_member, member (0, 0)"),
        row(bench, "reference_vs_pack1", "reference loop / train_pack K=1, per epoch",
            ratio(reference_epoch_s, pack1.steady_epoch_s), "x", "same member, same epochs"),
    ]


def measure_precision(bench: Bench) -> list[Row]:
    """fp32 / tf32 / bf16 on the same pack"""
    k, epochs = 5 * bench.profile.seeds, bench.profile.timing_epochs
    runs = {precision: bench.train_fresh(fold_specs(k), bench.config(epochs).replace(
        precision=precision)) for precision in ("fp32", "tf32", "bf16")}
    fp32_logits = [r.predictions["test1"].logits for r in runs["fp32"].results]
    out, rows = {}, []
    for precision, run in runs.items():
        o = out[precision] = {
            "epoch_s": run.epoch_s,
            "member_epoch_ms": ms(run.steady_epoch_s / k),
            "test1_f1_mean": float(np.mean([r.metrics["test1"]["f1"] for r in run.results])),
            "peak_gb": None if run.gpu_peak_bytes is None else run.gpu_peak_bytes / GB,
            "test1_logits_rel_to_fp32": float(np.mean([
                relative_distance(r.predictions["test1"].logits, fp32)
                for r, fp32 in zip(run.results, fp32_logits)])),
        }
        note = (f"{k}-pack, {epochs} epochs; test1 logits "
                f"{o['test1_logits_rel_to_fp32']:.1e} from fp32 (relative norm), mean "
                f"test1 F1 {o['test1_f1_mean']:.4f}")
        if not bench.cuda and precision == "tf32":
            note += "; on a CPU tf32 is fp32"
        rows.append(row(bench, f"{precision}_member_epoch_ms", f"{precision}, per member-epoch",
                        o["member_epoch_ms"], "ms", note))
    bench.details["precision"] = out
    return rows


def measure_memory(bench: Bench) -> list[Row]:
    """peak GPU memory of a small and a big pack"""
    if not bench.cuda:
        return [row(bench, "memory75_gb", "peak GPU memory", None, "GB", "CUDA only")]
    features = torch.cuda.memory_allocated()  # the bench's TrainData on the GPU
    out = {"features_gb": features / GB}
    for seeds in (bench.profile.seeds, bench.profile.memory_seeds):
        k = 5 * seeds
        torch.cuda.empty_cache()  # the last figure's cached blocks go: each pack starts clean
        run = bench.train_fresh(fold_specs(k), bench.config(2))
        out[k] = {"peak_gb": run.gpu_peak_bytes / GB,
                  "per_member_mb": (run.gpu_peak_bytes - features) / k / 1e6,
                  "epoch_s": run.epoch_s}
    k_small, k_big = 5 * bench.profile.seeds, 5 * bench.profile.memory_seeds
    bench.details["memory"] = out
    note = f"features {features / GB:.2f} GB of it; 2 epochs"
    return [
        row(bench, f"memory{k_small}_gb", f"{k_small}-pack peak GPU memory",
            out[k_small]["peak_gb"], "GB", f"{out[k_small]['per_member_mb']:.0f} MB per "
            f"member above the features; {note}"),
        row(bench, "memory75_gb" if k_big == 75 else f"memory{k_big}_gb",
            f"{k_big}-pack peak GPU memory", out[k_big]["peak_gb"], "GB",
            f"{out[k_big]['per_member_mb']:.0f} MB per member above the features; one "
            f"config, seeds 0-{bench.profile.memory_seeds - 1}; {note}"),
        row(bench, f"pack{k_big}_member_epoch_ms", f"{k_big}-pack, per member-epoch",
            ms(steady(out[k_big]["epoch_s"]) / k_big), "ms", "epoch 2 of the memory run"),
    ]


def grid_configs(bench: Bench):
    """The warmup grid's config (the recipe, as the profile changes it) and settings."""
    p = bench.profile
    base = get_preset("robust_v3").replace(**p.grid_changes)
    if p.hidden_dim is not None:
        base = base.replace(hidden_dim=p.hidden_dim)
    return base, [{"warmup": w} for w in p.warmups]


def measure_grid(bench: Bench) -> list[Row]:
    """the warmup grid, one pack per warmup, no Ray"""
    base, settings = grid_configs(bench)
    specs = fold_specs(5 * bench.profile.seeds)
    packs = []
    sync(bench.device)
    start = time.perf_counter()
    for setting in settings:
        run = bench.train_fresh(specs, base.replace(**setting))
        packs.append({**setting, "members": len(run.results), "seconds": run.wall_s,
                      "member_epochs": sum(r.epochs_run for r in run.results),
                      "epochs_run": [r.epochs_run for r in run.results],
                      "oof_f1_mean": float(np.mean([r.metrics["oof"]["f1"]
                                                    for r in run.results]))})
    wall = time.perf_counter() - start
    members = sum(p["members"] for p in packs)
    member_epochs = sum(p["member_epochs"] for p in packs)
    bench.details["grid"] = {"wall_s": wall, "packs": packs, "config": base.to_dict()}
    stopping = ("fixed epochs" if base.early_stop_patience is None else
                f"early stopping, patience {base.early_stop_patience}")
    return [
        row(bench, "grid_s", f"{members}-member warmup grid, no Ray", wall, "s",
            f"{len(packs)} packs of {len(specs)} one after the other; {member_epochs} "
            f"member-epochs of at most {base.epochs} ({stopping}), "
            f"{member_epochs / wall:.3g} member-epochs/s"),
        row(bench, "grid_members_per_min", "grid members per minute", members / wall * 60),
    ]


def measure_pytest(bench: Bench) -> list[Row]:
    """pytest --device on the CUDA and device-aware tests (a subprocess)"""
    device = bench.device.split(":")[0]
    files = [f for f in bench.profile.pytest_files if (ROOT / f).exists()]
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
           "--device", device, *files]
    env = {**os.environ, "PYTHONPATH": pythonpath_with_tree()}
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=240)
        tail, rc = (done.stdout + done.stderr).strip().splitlines()[-40:], done.returncode
    except subprocess.TimeoutExpired as e:
        tail, rc = (str(e.stdout or "") + "\ntimed out after 240 s").splitlines()[-40:], None
    summary = next((line for line in reversed(tail) if " in " in line and any(
        word in line for word in ("passed", "failed", "skipped", "error"))),
        tail[-1] if tail else "no output")
    bench.details["pytest"] = {"command": " ".join(cmd[1:]), "returncode": rc, "tail": tail,
                               "seconds": time.perf_counter() - t0}
    return [row(bench, "pytest", f"pytest --device {device}", summary.strip("= "), "",
                f"exit {rc}; {', '.join(files)}")]


def measure_ray(bench: Bench) -> list[Row]:
    """the warmup grid through Ray Tune + Train vs without Ray"""
    try:
        import ray
        import ray.train  # noqa: F401
        import ray.tune  # noqa: F401
    except ImportError as e:
        return [row(bench, "ray_ratio", "grid through Ray Tune + Train / without", None, "x",
                    f"skipped: Ray is not importable here ({e}); on the GPU node install the "
                    "bundle first (docs/gpu.md)")]
    from mer_ray.distributed.cluster import PREEMPTION_WATCHER_ENV
    from mer_ray.distributed.tune import tune_grid
    from mer_ray.runs.members import existing_member_ids
    from mer_ray.runs.run import train_grid_here

    base, settings = grid_configs(bench)
    seeds, pack = list(range(bench.profile.seeds)), 5 * bench.profile.seeds
    store_path = str(bench.store_path(bench.profile.train_scale))
    here_dir, ray_dir = str(bench.workdir / "run-here"), str(bench.workdir / "run-ray")
    quiet = lambda *a, **k: None  # noqa: E731
    sync(bench.device)
    t0 = time.perf_counter()
    train_grid_here(bench.store(bench.profile.train_scale), store_path, base, settings, seeds,
                    here_dir, pack_size=pack, device=bench.device, log=quiet)
    sync(bench.device)
    here = time.perf_counter() - t0
    gpus = 1 / 3 if bench.cuda else 0
    os.environ["PYTHONPATH"] = pythonpath_with_tree()  # Ray's workers import this tree
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")  # no node to preempt on one machine
    t0 = time.perf_counter()
    # ray.init here, not cluster.connect: connect's embedded Ray starts the dashboard,
    # whose packages the GPU node lacks (docs/gpu.md)
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count() if bench.cuda else 0)
    try:
        started = time.perf_counter() - t0
        tune_grid(store_path, base, settings, seeds, ray_dir, gpus_per_worker=gpus,
                  pack_size=pack, log=quiet)
    finally:
        ray.shutdown()
    wall = time.perf_counter() - t0
    same = existing_member_ids(ray_dir) == existing_member_ids(here_dir)
    bench.details["ray"] = {"here_s": here, "ray_s": wall, "ray_start_s": started,
                            "gpus_per_worker": gpus, "same_members": same}
    return [
        row(bench, "grid_files_s", "grid without Ray, member files written", here, "s",
            "mer_ray.runs.run.train_grid_here: the work each Ray worker does"),
        row(bench, "ray_s", "grid through Ray Tune + Train", wall, "s",
            f"ray.init inside ({started:.1f} s); {gpus:.3g} GPU per worker; same members "
            f"saved: {same}"),
        row(bench, "ray_ratio", "grid through Ray Tune + Train / without", wall / here, "x",
            "against the no-Ray grid writing the same member files"),
    ]


MEASUREMENTS = {"pytest": measure_pytest, "pack": measure_pack, "reference": measure_reference,
                "precision": measure_precision, "memory": measure_memory,
                "grid": measure_grid, "ray": measure_ray}  # in the order they run
FIGURES = tuple(MEASUREMENTS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu-bench.json and gpu-bench.md")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (no GPU needed)")
    ap.add_argument("--tiny", action="store_true", help="scale 0.05, 5-member packs, 2-3 "
                    "epochs: seconds, to check the script")
    ap.add_argument("--ray", action="store_true", help="add the grid through Ray Tune + Train")
    ap.add_argument("--figures", nargs="+", choices=FIGURES,
                    help=f"run only these (default: all but ray; {', '.join(FIGURES)})")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default torch's; 1 with "
                    "--cpu --tiny: on a busy shared CPU two threads spin-wait on each other "
                    "and an epoch takes 5x longer)")
    args = ap.parse_args(argv)
    threads = args.threads or (1 if args.cpu and args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the pytest subprocess, Ray workers
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print(f"benchmarks/gpu.py: CUDA is not available here (torch {torch.__version__}, "
              f"CUDA build {torch.version.cuda or 'none'}); use --cpu", file=sys.stderr)
        return 2
    figures = list(args.figures or [f for f in FIGURES if f != "ray"])
    if args.ray and "ray" not in figures:
        figures.append("ray")
    run_gpu_bench(GPU_PROFILES["tiny" if args.tiny else "full"], device, Path(args.out),
                  [MEASUREMENTS[f] for f in figures], TARGETS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
