"""Figure: the pack against the readable reference loop (mer_ray.train.reference.train_member:
an nn.Module, torch.optim.Adam(fused=True), clip_grad_norm_, ReduceLROnPlateau) run one
member at a time, same data and recipe, in seconds per member-epoch measured in the same
run. The K = 1 pack and the reference train the same member; the figure checks their
predictions agree, so the speed-up is for the same work."""

from __future__ import annotations

import itertools
import statistics
import time

from mer_ray.bench.rows import Row, progress, ratio, sync
from mer_ray.bench.runs import fold_specs

TARGET_PACK = 25  # the target: a 25-member pack at least 3x the reference per member-epoch


def time_reference(bench, config, specs):
    """Train `specs` with the reference loop one after another; returns (epoch seconds
    after each member's first epoch, the first member's ReferenceResult)."""
    from mer_ray.train.reference import train_member

    store = bench.store(bench.profile.train_scale)
    data = bench.train_data(bench.profile.train_scale)
    # untimed: the first torch.optim.Adam of a process imports torch._dynamo (3 s here)
    progress("warm-up: one untimed 1-epoch reference member")
    train_member(store, config.replace(epochs=1), 0, 0, bench.device, data=data)
    epochs, first = [], None
    for i, (fold, seed) in enumerate(specs):
        progress(f"reference loop member {i + 1}/{len(specs)}, {config.epochs} epochs")
        marks = []

        def on_epoch(_epoch, _model, _optimizer, marks=marks):
            sync(bench.device)
            marks.append(time.perf_counter())

        sync(bench.device)
        bounds = [time.perf_counter()]
        result = train_member(store, config, fold, seed, bench.device, data=data,
                              on_epoch=on_epoch)
        bounds += marks
        member = [b - a for a, b in itertools.pairwise(bounds)]
        epochs += member[1:] or member
        first = first or result
    return epochs, first


def measure_reference(bench) -> list[Row]:
    """the pack vs the reference loop, s per member-epoch"""
    import numpy as np

    p = bench.profile
    cfg = bench.config(p.pack_epochs)
    bench.warm_up(p.train_scale)
    specs = fold_specs(p.reference_members)
    ref_epochs, ref = time_reference(bench, cfg, specs)
    ref_s = statistics.median(ref_epochs) if ref_epochs else None
    rows = [Row("reference_member_epoch_s", "reference loop s per member-epoch", ref_s, "s",
                f"reference.train_member, {len(specs)} member(s) one at a time, "
                f"{p.pack_epochs} epochs each, median epoch after each member's first; "
                "torch.optim.Adam(fused=True)")]
    for k in p.reference_sizes:
        progress(f"{k}-member pack, {p.pack_epochs} epochs (or its run from the packs figure)")
        run = bench.train(fold_specs(k), cfg)
        per_member = None if run.steady_epoch_s is None else run.steady_epoch_s / k
        rows.append(Row(f"reference_over_pack{k}", f"reference / {k}-pack per member-epoch",
                        ratio(ref_s, per_member), "x",
                        f"{k}-pack {per_member:.3g} s per member-epoch (steady epoch / K)"
                        if per_member else "no steady epoch",
                        target=">= 3" if k == TARGET_PACK else ""))
        if k == 1:  # the same member (0, 0) both ways: the same predictions?
            diff = max(float(np.abs(ref.predictions[s][0] - run.first.predictions[s].logits)
                             .max()) for s in ref.predictions)
            rows.append(Row("reference_pack_logit_diff", "reference vs pack: max |logit diff|",
                            diff, "", "member (0, 0) trained by both, every split's logits at "
                            f"its best epoch ({run.first.best_epoch} both: "
                            f"{ref.best_epoch == run.first.best_epoch}); float32 rounding"))
    return rows
