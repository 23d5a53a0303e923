"""The end-to-end demo on synthetic data, as a user would run the real thing:

synthetic MER2023 (MERTools layout) -> `data import` -> `tune` over the robust_v3 warmup
grid 30/40/50 on an embedded local Ray (dashboard on 127.0.0.1:8265) -> `ensemble score`
(uniform mean of logits) of test1/test2/test3.

Sized to finish in under 8 minutes on 2 CPU cores after set-up: scale 0.2 of MER2023's
sample counts and three seeds, i.e. 3 warmups x 5 folds x 3 seeds = 45 members of the full
recipe (100 epochs at most, early stopping), each trial's 15 members trained as one pack.
Three seeds rather than one: Ray's fixed start-up (about 45 s of processes importing Ray
and torch on 2 cores, docs/performance.md) is then a small part of the run, and the
ensemble is one of seeds as well as folds. Raise --scale for the real picture.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from mer_ray.errors import InputError

DEMO_SCALE = 0.2
DEMO_WARMUPS = (30, 40, 50)
DEMO_SEEDS = (0, 1, 2)


def demo_pack_size(seeds) -> int:
    """One pack per trial: all 5 folds x seeds of a warmup train together, up to 25
    members (a full-scale 25-pack peaks at about 2.6 GB, docs/performance.md; three
    trials train at once)."""
    return min(5 * len(seeds), 25)


def run_demo(out: str, seed: int = 0, scale: float = DEMO_SCALE, seeds=DEMO_SEEDS,
             overwrite: bool = False, address: str | None = None) -> None:
    import ray

    from ensembles.score import score_runs
    from mer_ray import ray_train
    from mer_ray.data.mertools import import_mertools
    from mer_ray.data.store import read_store, summary_table
    from mer_ray.data.synth import synthesize
    from mer_ray.presets import get_preset
    from mer_ray.run import trial_table

    out = Path(out).absolute()
    if out.exists():
        if not overwrite:
            raise InputError(f"{out} already exists; choose another --out or pass --overwrite")
        shutil.rmtree(out)
    t0 = time.perf_counter()
    n_members = len(DEMO_WARMUPS) * 5 * len(seeds)
    print(f"mer-ray demo: scale {scale} of MER2023, seeds {list(seeds)}: {n_members} robust_v3 "
          "members (sized for under 8 minutes on 2 CPU cores)")
    print(f"[1/4] generating synthetic MER2023 (data seed {seed}) in {out / 'mertools'}")
    synthesize(out / "mertools", seed=seed, scale=scale, progress=False)
    print(f"[2/4] importing through the MERTools importer into {out / 'store'}")
    import_mertools(out / "mertools" / "features", out / "mertools" / "labels.csv", out / "store",
                    progress=False)
    print(summary_table(read_store(out / "store", verify=True)))
    print(f"[3/4] Ray Tune over warmup {'/'.join(map(str, DEMO_WARMUPS))} "
          f"({time.perf_counter() - t0:.0f} s so far)")
    started = ray_train.connect(address)
    try:
        grid = ray_train.tune_grid(str(out / "store"), get_preset("robust_v3"),
                                   [{"warmup": w} for w in DEMO_WARMUPS], list(seeds),
                                   str(out / "run"), pack_size=demo_pack_size(seeds))
    finally:
        if started:
            ray.shutdown()
    print("\ntrials (each seed's fold-averaged members, mean over seeds)")
    print(trial_table([(r.config["setting"], r.metrics) for r in grid]))
    print(f"\n[4/4] ensemble of every member (uniform mean of logits) "
          f"({time.perf_counter() - t0:.0f} s so far)")
    text, written = score_runs([str(out / "run")], strategy="mean")
    print(text)
    print(f"\nscores, predictions and MER2023 submission files in {written}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; next: "
          f"mer-ray report {out / 'run'}")
