"""Figure: a K-member pack against the same K members trained one after another (each
a train_pack call of one member), K from the profile (5 and 25)."""

from __future__ import annotations

from mer_ray.bench.rows import Row, progress, ratio
from mer_ray.bench.runs import fold_specs


def measure_packs(bench) -> list[Row]:
    """K-member packs vs the same members one after another"""
    p = bench.profile
    cfg = bench.config(p.pack_epochs)
    bench.warm_up(p.train_scale)
    rows = []
    for k in p.pack_sizes:
        specs = fold_specs(k)
        progress(f"training a {k}-member pack, {p.pack_epochs} epochs")
        pack = bench.train(specs, cfg)
        seq_s, seq_cpu = 0.0, 0.0
        for i, spec in enumerate(specs):
            progress(f"sequential member {i + 1}/{k}, {p.pack_epochs} epochs")
            one = bench.train([spec], cfg)
            seq_s += one.wall_s
            seq_cpu += one.cpu_s
        steady = pack.steady_epoch_s
        rows += [
            Row(f"pack{k}_s", f"{k}-member pack", pack.wall_s, "s",
                f"{p.pack_epochs} epochs, scale {p.train_scale:g}; cpu {pack.cpu_s:.1f} s"),
            Row(f"seq{k}_s", f"{k} members one by one", seq_s, "s",
                f"{k} train_pack calls of 1 member; cpu {seq_cpu:.1f} s"),
            Row(f"pack{k}_speedup", f"{k}-pack speed-up", ratio(seq_s, pack.wall_s), "x",
                target=">= 2" if k == 25 else ""),
            Row(f"pack{k}_member_epoch_s", f"{k}-pack s per member-epoch",
                None if steady is None else steady / k, "s", "steady epoch / K"),
        ]
        # the grid extrapolation needs the final-prediction cost per member too
        bench.figures[f"_pack{k}_tail_per_member_s"] = Row("", "", pack.tail_s / k, "s")
    return rows
