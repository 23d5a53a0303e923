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
  ray        (--ray) the same grid through mer_ray.distributed.ray_train.tune_grid with 1/3 GPU per
             Train worker (the 3 trials share the GPU), Ray's start inside the timing,
             against the same grid without Ray writing the same member files

Writes DIR/gpu-bench.json (every figure, its details, the machine) and DIR/gpu-bench.md
(the table, also printed last), both rewritten after every figure, so a run stopped at
its time limit still returns what it measured; figures not started within 450 s are
skipped with a line. A figure that raises is a FAILED line with its traceback in the
JSON, and the others still run. Targets are judged at full scale on CUDA only; `--tiny`
(scale 0.05, 5-member packs, 2-3 epochs) checks that the script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the GPU node runs the working tree, not an install

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mer_ray.data.store import read_store  # noqa: E402
from mer_ray.data.synth import synthesize_store  # noqa: E402
from mer_ray.train.presets import get_preset  # noqa: E402
from mer_ray.train.trainer import TrainData, train_pack  # noqa: E402

SCHEMA = "mer-ray gpu-bench 1"
FIGURES = ("pytest", "pack", "reference", "precision", "memory", "grid", "ray")  # run order
# the CUDA tests and the files whose tests take the `device` fixture (those present)
PYTEST_FILES = ("tests/test_cuda.py", "tests/test_trainer.py", "tests/test_reference.py")
GB = 1e9


@dataclass(frozen=True)
class Profile:
    name: str
    scale: float  # of synthetic MER2023
    seeds: int  # grid seeds: members per pack = 5 x seeds
    warmups: tuple  # the grid's settings
    grid_changes: dict  # to robust_v3 for the grid (none: the recipe)
    timing_epochs: int  # per run of the pack / reference / precision figures
    memory_seeds: int  # the big pack of the memory figure: 5 x this
    pytest_files: tuple
    budget_s: float  # figures not started by then are skipped
    model_changes: dict = field(default_factory=dict)  # to every config (tiny: a small model)


FULL = Profile("full", 1.0, 5, (30, 40, 50), {}, 4, 15, PYTEST_FILES, 450)
TINY = Profile("tiny", 0.05, 1, (0, 1, 2), {"epochs": 3, "early_stop_patience": None}, 3, 2,
               ("tests/test_cuda.py",), float("inf"), {"hidden_dim": 16})
# judged at full scale on CUDA
TARGETS = {"grid_s": ("<=", 20.0), "ray_ratio": ("<=", 1.15), "pack_speedup": (">=", 25.0),
           "memory75_gb": ("<=", 10.0)}


@dataclass
class Row:
    key: str
    label: str
    value: float | str | None
    unit: str = ""
    note: str = ""
    target: str = ""
    met: bool | None = None


@dataclass
class Bench:
    profile: Profile
    device: str
    store: object
    store_path: str
    data: object  # TrainData, shared by every pack
    tmp: Path
    rows: list = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def config(self, **changes):
        """robust_v3 as the timing figures run it: fixed epochs, modality dropout (and
        so every part of a step) from epoch 1."""
        base = dict(epochs=self.profile.timing_epochs, warmup=1, early_stop_patience=None,
                    **self.profile.model_changes)
        return get_preset("robust_v3").replace(**{**base, **changes})

    def specs(self, seeds: int):
        return [(fold, seed) for seed in range(seeds) for fold in range(5)]


def log(msg: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def judge(key: str, value, bench: Bench) -> tuple[str, bool | None]:
    if key not in TARGETS:
        return "", None
    op, limit = TARGETS[key]
    text = f"{op} {limit:g}"
    if value is None or not bench.cuda or bench.profile is not FULL:
        return text, None
    return text, bool(value <= limit if op == "<=" else value >= limit)


def add(bench: Bench, key, label, value, unit="", note=""):
    target, met = judge(key, value, bench)
    bench.rows.append(Row(key, label, value, unit, note, target, met))


def epoch_seconds(bench: Bench, config, specs, data=None):
    """train_pack, returning (results, seconds of each epoch). Each epoch ends with the
    held-out evaluation copying predictions to the host, so its time is the GPU's too."""
    seconds = []
    bench.sync()
    results = train_pack(bench.store, config, specs, device=bench.device,
                         data=data or bench.data, on_epoch=lambda p: seconds.append(p.seconds))
    bench.sync()
    return results, seconds


def steady(seconds) -> float:
    """Median epoch time after the first (which pays for warm-up)."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ---------------------------------------------------------------- figures
def fig_pack(bench: Bench):
    k = 5 * bench.profile.seeds
    cfg = bench.config()
    _, pack_s = epoch_seconds(bench, cfg, bench.specs(bench.profile.seeds))
    _, one_s = epoch_seconds(bench, cfg, [(0, 0)])
    per_member = steady(pack_s) / k
    speedup = steady(one_s) / per_member
    bench.details["pack"] = {"k": k, "pack_epoch_s": pack_s, "single_epoch_s": one_s}
    add(bench, "pack_member_epoch_ms", f"{k}-pack, per member-epoch", per_member * 1e3, "ms",
        f"median of epochs 2-{len(pack_s)} of one {k}-member train_pack / {k}")
    add(bench, "single_member_epoch_ms", "one member alone, per epoch", steady(one_s) * 1e3,
        "ms", "train_pack with K=1, same epochs")
    add(bench, "pack_speedup", f"{k}-pack vs one at a time, per member-epoch", speedup, "x")


def fig_reference(bench: Bench):
    from mer_ray.train import reference

    cfg = bench.config()
    if not hasattr(reference, "train_member"):
        add(bench, "reference_epoch_ms", "reference loop (plain PyTorch), per epoch", None,
            "ms", "mer_ray.train.reference has no train_member here: see single_member_epoch_ms "
            "(train_pack with K=1) instead")
        return
    stamps = []

    def on_epoch(*_):
        bench.sync()
        stamps.append(time.perf_counter())

    bench.sync()
    start = time.perf_counter()
    reference.train_member(bench.store, cfg, 0, 0, device=bench.device, data=bench.data,
                           on_epoch=on_epoch)
    seconds = np.diff([start] + stamps).tolist()
    _, pack1 = epoch_seconds(bench, cfg, [(0, 0)])
    bench.details["reference"] = {"reference_epoch_s": seconds, "pack1_epoch_s": pack1}
    add(bench, "reference_epoch_ms", "reference loop (plain PyTorch), per epoch",
        steady(seconds) * 1e3, "ms", "mer_ray.train.reference.train_member, member (0, 0)")
    add(bench, "reference_vs_pack1", "reference loop / train_pack K=1, per epoch",
        steady(seconds) / steady(pack1), "x", "same member, same epochs")


def fig_precision(bench: Bench):
    k = 5 * bench.profile.seeds
    specs = bench.specs(bench.profile.seeds)
    out = {}
    for precision in ("fp32", "tf32", "bf16"):
        if bench.cuda:
            torch.cuda.reset_peak_memory_stats()
        results, seconds = epoch_seconds(bench, bench.config(precision=precision), specs)
        out[precision] = {
            "epoch_s": seconds,
            "member_epoch_ms": steady(seconds) / k * 1e3,
            "test1_f1_mean": float(np.mean([r.metrics["test1"]["f1"] for r in results])),
            "test1_logits": [r.predictions["test1"].logits for r in results],
            "peak_gb": torch.cuda.max_memory_allocated() / GB if bench.cuda else None,
        }
    fp32 = out["fp32"]["test1_logits"]
    for precision, o in out.items():
        o["test1_logits_rel_to_fp32"] = float(np.mean(
            [rel(a, b) for a, b in zip(o.pop("test1_logits"), fp32)]))
        note = (f"{k}-pack, {bench.profile.timing_epochs} epochs; test1 logits "
                f"{o['test1_logits_rel_to_fp32']:.1e} from fp32 (relative norm), mean "
                f"test1 F1 {o['test1_f1_mean']:.4f}")
        if not bench.cuda and precision == "tf32":
            note += "; on a CPU tf32 is fp32"
        add(bench, f"{precision}_member_epoch_ms", f"{precision}, per member-epoch",
            o["member_epoch_ms"], "ms", note)
    bench.details["precision"] = out


def fig_memory(bench: Bench):
    if not bench.cuda:
        add(bench, "memory75_gb", "peak GPU memory", None, "GB", "CUDA only")
        return
    features = torch.cuda.memory_allocated()  # the TrainData on the GPU
    out = {"features_gb": features / GB}
    for seeds in (bench.profile.seeds, bench.profile.memory_seeds):
        k = 5 * seeds
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        _, seconds = epoch_seconds(bench, bench.config(epochs=2), bench.specs(seeds))
        peak = torch.cuda.max_memory_allocated()
        out[k] = {"peak_gb": peak / GB, "per_member_mb": (peak - features) / k / 1e6,
                  "epoch_s": seconds}
    k_small, k_big = 5 * bench.profile.seeds, 5 * bench.profile.memory_seeds
    bench.details["memory"] = out
    note = f"features {features / GB:.2f} GB of it; 2 epochs"
    add(bench, f"memory{k_small}_gb", f"{k_small}-pack peak GPU memory",
        out[k_small]["peak_gb"], "GB", f"{out[k_small]['per_member_mb']:.0f} MB per member "
        f"above the features; {note}")
    add(bench, "memory75_gb" if k_big == 75 else f"memory{k_big}_gb",
        f"{k_big}-pack peak GPU memory", out[k_big]["peak_gb"], "GB",
        f"{out[k_big]['per_member_mb']:.0f} MB per member above the features; one config, "
        f"seeds 0-{bench.profile.memory_seeds - 1}; {note}")
    add(bench, f"pack{k_big}_member_epoch_ms", f"{k_big}-pack, per member-epoch",
        steady(out[k_big]["epoch_s"]) / k_big * 1e3, "ms", "epoch 2 of the memory run")


def grid_configs(bench: Bench):
    base = get_preset("robust_v3").replace(**bench.profile.grid_changes,
                                           **bench.profile.model_changes)
    return base, [{"warmup": w} for w in bench.profile.warmups]


def fig_grid(bench: Bench):
    base, settings = grid_configs(bench)
    specs = bench.specs(bench.profile.seeds)
    packs = []
    bench.sync()
    start = time.perf_counter()
    for s in settings:
        t0 = time.perf_counter()
        results = train_pack(bench.store, base.replace(**s), specs, device=bench.device,
                             data=bench.data)
        bench.sync()
        packs.append({**s, "members": len(results), "seconds": time.perf_counter() - t0,
                      "member_epochs": sum(r.epochs_run for r in results),
                      "epochs_run": [r.epochs_run for r in results],
                      "oof_f1_mean": float(np.mean([r.metrics["oof"]["f1"] for r in results]))})
    wall = time.perf_counter() - start
    members = sum(p["members"] for p in packs)
    member_epochs = sum(p["member_epochs"] for p in packs)
    bench.details["grid"] = {"wall_s": wall, "packs": packs, "config": base.to_dict()}
    stopping = ("fixed epochs" if base.early_stop_patience is None else
                f"early stopping, patience {base.early_stop_patience}")
    add(bench, "grid_s", f"{members}-member warmup grid, no Ray", wall, "s",
        f"{len(packs)} packs of {len(specs)} one after the other; {member_epochs} "
        f"member-epochs of at most {base.epochs} ({stopping}), "
        f"{member_epochs / wall:.3g} member-epochs/s")
    add(bench, "grid_members_per_min", "grid members per minute", members / wall * 60, "")


def fig_pytest(bench: Bench):
    files = [f for f in bench.profile.pytest_files if (ROOT / f).exists()]
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
           "--device", bench.device.split(":")[0], *files]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=240)
        tail, rc = (done.stdout + done.stderr).strip().splitlines()[-40:], done.returncode
    except subprocess.TimeoutExpired as e:
        tail, rc = (str(e.stdout or "") + "\ntimed out after 240 s").splitlines()[-40:], None
    summary = next((line for line in reversed(tail) if " in " in line and (
        "passed" in line or "failed" in line or "skipped" in line or "error" in line)),
        tail[-1] if tail else "no output")
    bench.details["pytest"] = {"command": " ".join(cmd[1:]), "returncode": rc, "tail": tail,
                               "seconds": time.perf_counter() - t0}
    add(bench, "pytest", f"pytest --device {bench.device.split(':')[0]}",
        summary.strip("= "), "", f"exit {rc}; {', '.join(files)}")


def fig_ray(bench: Bench):
    try:
        import ray
        import ray.train  # noqa: F401
        import ray.tune  # noqa: F401
    except ImportError as e:
        add(bench, "ray_ratio", "grid through Ray Tune + Train / without", None, "x",
            f"skipped: Ray is not importable here ({e}); on the GPU node install the "
            "bundle first (docs/gpu.md)")
        return
    from mer_ray.distributed.ray_train import PREEMPTION_WATCHER_ENV, tune_grid
    from mer_ray.runs.run import train_grid_here

    base, settings = grid_configs(bench)
    seeds = list(range(bench.profile.seeds))
    pack = 5 * bench.profile.seeds
    quiet = lambda *a, **k: None  # noqa: E731
    bench.sync()
    t0 = time.perf_counter()
    train_grid_here(bench.store, bench.store_path, base, settings, seeds,
                    str(bench.tmp / "run-here"), pack_size=pack, device=bench.device, log=quiet)
    bench.sync()
    here = time.perf_counter() - t0
    gpus = 1 / 3 if bench.cuda else 0
    # workers import this tree (the GPU node has no install of mer-ray)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count() if bench.cuda else 0)
    try:
        started = time.perf_counter() - t0
        tune_grid(bench.store_path, base, settings, seeds, str(bench.tmp / "run-ray"),
                  gpus_per_worker=gpus, pack_size=pack, log=quiet)
    finally:
        ray.shutdown()
    wall = time.perf_counter() - t0
    from mer_ray.runs.members import existing_member_ids

    same = existing_member_ids(str(bench.tmp / "run-ray")) == existing_member_ids(
        str(bench.tmp / "run-here"))
    bench.details["ray"] = {"here_s": here, "ray_s": wall, "ray_start_s": started,
                            "gpus_per_worker": gpus, "same_members": same}
    add(bench, "grid_files_s", "grid without Ray, member files written", here, "s",
        "mer_ray.runs.run.train_grid_here: the work each Ray worker does")
    add(bench, "ray_s", "grid through Ray Tune + Train", wall, "s",
        f"ray.init inside ({started:.1f} s); {gpus:.3g} GPU per worker; same members "
        f"saved: {same}")
    add(bench, "ray_ratio", "grid through Ray Tune + Train / without", wall / here, "x",
        "against the no-Ray grid writing the same member files")


RUNNERS = {"pack": fig_pack, "reference": fig_reference, "precision": fig_precision,
           "memory": fig_memory, "grid": fig_grid, "pytest": fig_pytest, "ray": fig_ray}


# ---------------------------------------------------------------- report
def machine(device: str) -> dict:
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
            "torch": torch.__version__, "cuda_build": torch.version.cuda,
            "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gb=props.total_memory / GB,
                    capability=f"{props.major}.{props.minor}")
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        info["ray"] = None
    return info


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown(info: dict, profile: Profile, rows: list[Row], total_s: float) -> str:
    where = info.get("gpu") or f"CPU ({info['cpus']} cores)"
    lines = [f"# mer-ray GPU benchmark ({profile.name}, {info['device']})", "",
             f"{info['date']}; {where}; torch {info['torch']} (CUDA {info['cuda_build']}); "
             f"Python {info['python']}; Ray {info['ray'] or 'absent'}; total "
             f"{total_s:.0f} s.", "",
             "| figure | value | unit | target | met | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        met = {True: "ok", False: "MISS", None: "-"}[r.met]
        lines.append(f"| {r.label} | {fmt(r.value)} | {r.unit} | {r.target} | {met} | "
                     f"{r.note} |")
    if profile is not FULL or not info["device"].startswith("cuda"):
        lines += ["", "Targets are judged at full scale on CUDA only."]
    return "\n".join(lines) + "\n"


def write_report(out: Path, profile: Profile, info: dict, bench, total: float) -> str:
    """DIR/gpu-bench.json and DIR/gpu-bench.md, rewritten after every figure so a run
    stopped at a time limit still leaves what it measured. Returns the table."""
    rows = bench.rows if bench else []
    report = {"schema": SCHEMA, "profile": asdict(profile), "machine": info, "total_s": total,
              "targets": {k: f"{op} {v:g}" for k, (op, v) in TARGETS.items()},
              "rows": [asdict(r) for r in rows], "details": bench.details if bench else {}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-bench.json").write_text(json.dumps(report, indent=1, default=str))
    table = markdown(info, profile, rows, total)
    (out / "gpu-bench.md").write_text(table)
    return table


def run(profile: Profile, device: str, out: Path, figures) -> dict:
    t_start = time.perf_counter()
    info = machine(device)
    write_report(out, profile, info, None, 0.0)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        tmp = Path(tmp)
        log(f"synthetic MER2023 at scale {profile.scale}")
        store_path = str(synthesize_store(tmp / "store", seed=0, scale=profile.scale))
        store = read_store(store_path)
        data = TrainData(store, get_preset("robust_v3").replace(**profile.model_changes),
                         device)
        bench = Bench(profile, device, store, store_path, data, tmp)
        info["setup_s"] = time.perf_counter() - t_start
        for name in figures:
            elapsed = time.perf_counter() - t_start
            if elapsed > profile.budget_s:
                add(bench, name, name, None, "", f"skipped: {elapsed:.0f} s spent, over the "
                    f"budget of {profile.budget_s:.0f} s")
                continue
            log(f"{name} ...")
            t0 = time.perf_counter()
            try:
                RUNNERS[name](bench)
            except Exception as e:  # one broken figure must not lose the others
                add(bench, name, name, None, "", f"FAILED: {type(e).__name__}: {e}")
                bench.details.setdefault("errors", {})[name] = traceback.format_exc()
                log(traceback.format_exc())
            bench.details.setdefault("figure_s", {})[name] = time.perf_counter() - t0
            write_report(out, profile, info, bench, time.perf_counter() - t_start)
    table = write_report(out, profile, info, bench, time.perf_counter() - t_start)
    print(table)
    return json.loads((out / "gpu-bench.json").read_text())


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
    run(TINY if args.tiny else FULL, device, Path(args.out), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
