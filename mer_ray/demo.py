"""The end-to-end demo on synthetic data: generate -> import -> summarize.

Training, the warmup-grid tune and ensemble scoring are not in the project yet; the
demo says so at the end rather than pretending.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from mer_ray.errors import InputError


def run_demo(out: str, seed: int = 0, scale: float = 1.0, overwrite: bool = False) -> None:
    from mer_ray.data.mertools import import_mertools
    from mer_ray.data.store import read_store, summary_table
    from mer_ray.data.synth import synthesize

    out = Path(out)
    if out.exists():
        if not overwrite:
            raise InputError(f"{out} already exists; choose another --out or pass --overwrite")
        shutil.rmtree(out)
    t0 = time.perf_counter()
    print(f"[1/3] generating synthetic MER2023 (seed {seed}, scale {scale}) in {out / 'mertools'}")
    synthesize(out / "mertools", seed=seed, scale=scale)
    print(f"[2/3] importing through the MERTools importer into {out / 'store'}")
    import_mertools(out / "mertools" / "features", out / "mertools" / "labels.csv", out / "store")
    print("[3/3] reading the store back")
    t1 = time.perf_counter()
    store = read_store(out / "store", verify=True)
    t2 = time.perf_counter()
    print(summary_table(store))
    print(f"read {len(store)} samples x {sum(x.shape[1] for x in store.features.values())} "
          f"floats in {t2 - t1:.2f} s (hash verified); demo total {t2 - t0:.1f} s")
    print("next (not built yet): train robust_v3 members, tune the warmup grid, ensemble")
