"""How big each measurement of `mer-ray bench` is: the profiles (`--quick`, `--full`, and
`micro` for tests). Printed with the results, so a figure is never read without the
epochs and scale it was taken at."""

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
