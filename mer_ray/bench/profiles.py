"""How big each measurement is: the profiles of `mer-ray bench` (`--quick`, `--full`, and
`micro` for tests) and of benchmarks/gpu.py (full, and `--tiny`). Printed with the
results, so a figure is never read without the epochs and scale it was taken at."""

from __future__ import annotations

from dataclasses import dataclass

from mer_ray.demo import DEMO_SEEDS


@dataclass(frozen=True)
class Profile:
    name: str
    read_scale: float  # synthetic MER2023 fraction for the store-read comparison
    read_repeats: int
    train_scale: float  # store the member / pack / reference / memory figures train on
    member_epochs: int  # the single member of the FLOP-floor figure
    pack_epochs: int  # pack vs sequential, and pack vs the reference loop
    pack_sizes: tuple[int, ...]
    peak_members: int
    peak_epochs: int
    gemm_min_s: float  # time each GEMM shape for at least this long per round
    gemm_rounds: int  # best of this many rounds over all shapes
    grid_seeds: int  # warmup grid: 3 warmups x grid_seeds x 5 folds
    grid_run_epochs: int | None  # None: extrapolate the grid rate; else measure a grid run
    ray_scale: float = 0.2  # Ray overhead: the demo grid's store
    ray_epochs: int | None = 10  # None: the full recipe (exactly the demo's members)
    ray_seeds: tuple[int, ...] = (0,)  # the full profile: the demo's seeds
    hidden_dim: int | None = None  # None: the preset's (micro shrinks the model)
    reference_sizes: tuple[int, ...] = (1, 5, 25)  # packs set against the reference loop
    reference_members: int = 3  # members trained one at a time by the reference loop


PROFILES = {
    # Under 5 minutes on the 2-core development VM when it is otherwise idle.
    "quick": Profile("quick", read_scale=1.0, read_repeats=3, train_scale=1.0,
                     member_epochs=3, pack_epochs=2, pack_sizes=(5, 25), peak_members=25,
                     peak_epochs=1, gemm_min_s=0.01, gemm_rounds=5, grid_seeds=5,
                     grid_run_epochs=None),
    "full": Profile("full", read_scale=1.0, read_repeats=7, train_scale=1.0,
                    member_epochs=10, pack_epochs=5, pack_sizes=(5, 25), peak_members=25,
                    peak_epochs=1, gemm_min_s=0.05, gemm_rounds=10, grid_seeds=5,
                    grid_run_epochs=10, ray_epochs=None, ray_seeds=DEMO_SEEDS,
                    reference_members=5),
    # Seconds, for tests: tiny data and model; the figures mean nothing.
    "micro": Profile("micro", read_scale=0.05, read_repeats=1, train_scale=0.05,
                     member_epochs=2, pack_epochs=1, pack_sizes=(2, 3), peak_members=3,
                     peak_epochs=1, gemm_min_s=0.0002, gemm_rounds=1, grid_seeds=1,
                     grid_run_epochs=None, ray_scale=0.05, ray_epochs=2, hidden_dim=8,
                     reference_sizes=(1, 3), reference_members=1),
}


@dataclass(frozen=True)
class GpuProfile:
    """How big benchmarks/gpu.py's figures are."""

    name: str
    train_scale: float  # of synthetic MER2023
    seeds: int  # grid seeds: members per pack = 5 x seeds
    warmups: tuple[int, ...]  # the grid's settings
    grid_changes: dict  # to robust_v3 for the grid (none: the recipe)
    timing_epochs: int  # per run of the pack / reference / precision figures
    memory_seeds: int  # the big pack of the memory figure: 5 x this
    pytest_files: tuple[str, ...]  # pytest --device runs those of them present
    budget_s: float  # figures not started by then are skipped
    hidden_dim: int | None = None  # None: the preset's (tiny shrinks the model)


# the CUDA tests and the files whose tests take the `device` fixture
GPU_PYTEST_FILES = ("tests/test_cuda.py", "tests/test_trainer.py", "tests/test_reference.py")

GPU_PROFILES = {
    # What the targets are judged at. A figure not started within 450 s is skipped, so a
    # run on a lent GPU (10 minutes a call) ends, and reports, inside its time limit.
    "full": GpuProfile("full", train_scale=1.0, seeds=5, warmups=(30, 40, 50), grid_changes={},
                       timing_epochs=4, memory_seeds=15, pytest_files=GPU_PYTEST_FILES,
                       budget_s=450),
    # Seconds on a CPU, to check that the script runs; the figures mean nothing.
    "tiny": GpuProfile("tiny", train_scale=0.05, seeds=1, warmups=(0, 1, 2),
                       grid_changes={"epochs": 3, "early_stop_patience": None},
                       timing_epochs=3, memory_seeds=2, pytest_files=("tests/test_cuda.py",),
                       budget_s=float("inf"), hidden_dim=16),
}
