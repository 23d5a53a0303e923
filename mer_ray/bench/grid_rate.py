"""Figure: members per minute for the warmup grid (robust_v3 at warmups
30/40/50 x seeds x 5 folds, one pack per warmup): extrapolated from the packs figure
(`--quick`) or measured on the grid's own packs at reduced epochs (`--full`)."""

from __future__ import annotations

import statistics

from mer_ray.bench.rows import Row, progress
from mer_ray.bench.runs import fold_specs

GRID_WARMUPS = (30, 40, 50)  # modality dropout from epoch 30, 40 or 50 of 100
GRID_EPOCHS = 100


def measure_grid_rate(bench) -> list[Row]:
    """members per minute for the warmup grid"""
    p = bench.profile
    k = 5 * p.grid_seeds  # one pack per warmup: all folds x seeds of that warmup
    n = len(GRID_WARMUPS) * k
    grid = f"warmups {'/'.join(map(str, GRID_WARMUPS))} x {p.grid_seeds} seed(s) x 5 folds"
    if p.grid_run_epochs is None:
        # the grid's own pack size if it was measured, else the largest pack measured
        sizes = [x for x in p.pack_sizes if bench.value(f"pack{x}_member_epoch_s") is not None]
        src = k if k in sizes else max(sizes, default=None)
        pme = bench.value(f"pack{src}_member_epoch_s")
        tail = bench.value(f"_pack{src}_tail_per_member_s")
        per_member = None if pme is None or tail is None else GRID_EPOCHS * pme + tail
        return [Row("grid_members_per_min", "warmup grid members / minute",
                    None if per_member is None else 60 / per_member, "members/min",
                    f"EXTRAPOLATED, not measured: {grid} = {n} members as {k}-member "
                    f"packs, {GRID_EPOCHS} epochs each at the {src}-pack's measured "
                    "s per member-epoch + its final predictions per member; in-process, "
                    "one pack at a time; early stopping could end members from epoch "
                    "warmup+30")]
    # Measured: the real grid shape (3 packs of 5 folds x seeds) at reduced epochs, the
    # warmups scaled with them so modality dropout starts at the same fraction.
    e = p.grid_run_epochs
    bench.warm_up(p.train_scale)
    wall, epoch_times, tails, warmups = 0.0, [], 0.0, []
    for w in GRID_WARMUPS:
        cfg = bench.config(e, warmup=round(w * e / GRID_EPOCHS))
        warmups.append(cfg.warmup)
        progress(f"grid pack warmup {cfg.warmup}/{e}: {k} members, {e} epochs")
        run = bench.train(fold_specs(k), cfg)
        wall += run.wall_s
        tails += run.tail_s
        if run.steady_epoch_s is not None:
            epoch_times.append(run.steady_epoch_s)
    per_member = None
    if epoch_times:
        per_member = GRID_EPOCHS * statistics.median(epoch_times) / k + tails / n
    return [
        Row("grid_members_per_min_measured", "warmup grid members / minute (run)",
            n / (wall / 60), "members/min",
            f"measured: {grid} = {n} members, {e} epochs each (warmups scaled to "
            f"{'/'.join(map(str, warmups))}), scale {p.train_scale:g}, {wall:.0f} s"),
        Row("grid_members_per_min", "warmup grid members / minute",
            None if per_member is None else 60 / per_member, "members/min",
            f"projected to {GRID_EPOCHS} epochs from the run above's s per "
            "member-epoch + final predictions; no early stopping"),
    ]
