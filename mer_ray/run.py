"""A run: which members a recipe needs, which are already saved, and training the rest.

The same functions serve `mer-ray train --no-ray` (everything in this process) and each
Ray Train worker (its share of the members): a member's result depends only on
(config, fold, seed, data), never on who trains it. No Ray import here.

Run folder (a local path or a pyarrow filesystem URI):

    RUN/run.json              the store used, and every config trained into the run
    RUN/members/<id>.parquet  one file per finished member (mer_ray.members)
    RUN/ray/                  Ray Train / Tune bookkeeping (Ray paths only)
"""

from __future__ import annotations

import json
import os
import time

from mer_ray.members import existing_member_ids, member_id, resolve, write_member


def absolute(location: str) -> str:
    """Local paths made absolute (Ray workers run elsewhere); URIs as they are."""
    location = str(location)
    return location if "://" in location else os.path.abspath(location)


def all_specs(config, seeds) -> list[tuple[int, int]]:
    """Every (fold, seed) of a recipe: n_folds x seeds, seed-major."""
    return [(fold, int(seed)) for seed in seeds for fold in range(config.n_folds)]


def pending_specs(run, config, specs) -> list[tuple[int, int]]:
    """The specs whose member file is not in the run yet (resume never retrains)."""
    done = existing_member_ids(run)
    cfg = config.to_dict()
    return [s for s in specs if member_id(cfg, *s) not in done]


def missing(run, config, seeds, log=print):
    """(all specs, specs still to train) of a recipe, saying how many are skipped."""
    specs = all_specs(config, seeds)
    todo = pending_specs(run, config, specs)
    log(f"{config.preset} warmup {config.warmup}: {len(specs)} members, "
        f"{len(specs) - len(todo)} already saved in {run} (skipped), {len(todo)} to train")
    return specs, todo


def grid_settings(grid: dict[str, list]) -> list[dict]:
    """Cartesian product of field -> values, in the order given."""
    settings = [{}]
    for field, values in grid.items():
        settings = [{**s, field: v} for s in settings for v in values]
    return settings


def record_run(run, store_path: str, configs) -> None:
    """Add configs to RUN/run.json (creating it), so scoring can find the store."""
    fs, root = resolve(run)
    fs.create_dir(root, recursive=True)
    path = f"{root.rstrip('/')}/run.json"
    info = {"format": "mer-ray-run/1", "store": str(store_path), "configs": []}
    try:
        with fs.open_input_stream(path) as f:
            info = json.loads(f.read())
    except FileNotFoundError:
        pass
    for c in configs:
        if c.to_dict() not in info["configs"]:
            info["configs"].append(c.to_dict())
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(info, indent=1).encode())


def train_members(store, config, specs, run, pack_size: int = 10, device: str = "cpu",
                  log=print, tag: str = "") -> list[str]:
    """Train `specs` of one config in packs of `pack_size`, writing each member's file as
    its pack finishes. Returns the member files written."""
    from mer_ray.trainer import train_pack  # torch loads only when training

    written = []
    packs = [specs[i : i + pack_size] for i in range(0, len(specs), pack_size)]
    for n, pack in enumerate(packs, 1):
        t0 = time.perf_counter()
        names = " ".join(f"f{f}s{s}" for f, s in pack)
        log(f"{tag}pack {n}/{len(packs)}: {len(pack)} member(s) [{names}] of {config.preset} "
            f"warmup {config.warmup}")
        results = train_pack(store, config, pack, device=device,
                             log=_every(10, config.epochs, log, tag))
        for r in results:
            written.append(write_member(r, run))
            oof = r.metrics["oof"]
            log(f"{tag}saved {r.member_id}: best epoch {r.best_epoch} of {r.epochs_run}, "
                f"oof F1 {oof['f1']:.4f} combined {oof['combined']:.4f}")
        log(f"{tag}pack {n}/{len(packs)} done in {time.perf_counter() - t0:.1f} s")
    return written


def _every(k: int, epochs: int, log, tag: str):
    """The trainer logs every epoch; print every k-th and the last."""
    def f(msg: str):
        epoch = int(msg.split(":", 1)[0].split()[-1]) if msg.startswith("epoch ") else None
        if epoch is None or epoch % k == 0 or epoch == epochs - 1:
            log(tag + msg)
    return f


def train_grid_here(store, store_path: str, config, settings, seeds, run: str, pack_size: int = 10,
               device: str = "cpu", log=print) -> int:
    """The same grid in this process, no Ray (`--no-ray`). Returns members trained."""
    record_run(run, store_path, [config.replace(**s) for s in settings])
    trained = 0
    for s in settings:
        c = config.replace(**s)
        _, todo = missing(run, c, seeds, log)
        train_members(store, c, todo, run, pack_size, device, log=log)
        trained += len(todo)
    return trained


def trial_summary(run: str, config, seeds) -> dict:
    """Mean over seeds of each seed's fold-averaged scores: cv_f1, test1_acc, ...
    (plus `seeds` and `members`), from the config's member files in the run."""
    from ensembles.groups import make_groups, score_group

    members = read_config_members(run, config, seeds)
    values: dict[str, list[float]] = {}
    groups = make_groups(members)
    for g in groups:
        for split, metrics in score_group(g).items():
            for name, value in metrics.items():
                values.setdefault(f"{split}_{name}", []).append(value)
    summary = {k: sum(v) / len(v) for k, v in values.items()}
    summary.update(seeds=len(groups), members=len(members))
    return summary


def read_config_members(run: str, config, seeds):
    """The saved members of one config and these seeds."""
    from mer_ray.members import member_path, read_member

    wanted = {member_id(config.to_dict(), f, s) for f, s in all_specs(config, seeds)}
    return [read_member(member_path(run, mid)) for mid in sorted(wanted & existing_member_ids(run))]


def trial_table(rows) -> str:
    """One line per grid setting: its summary (trial_summary) scores."""
    cols = [("cv", "f1"), ("cv", "combined"), ("test1", "f1"), ("test1", "acc"),
            ("test2", "f1"), ("test2", "acc"), ("test3", "f1"), ("test3", "acc")]
    head = f"{'setting':<24}{'seeds':>6}" + "".join(f"{s + ' ' + m:>14}" for s, m in cols)
    lines = [head, "-" * len(head)]
    for setting, m in rows:
        name = ", ".join(f"{k}={v}" for k, v in setting.items()) or "(preset)"
        cells = "".join(f"{m.get(f'{s}_{k}', float('nan')):>14.4f}" for s, k in cols)
        lines.append(f"{name:<24}{int(m.get('seeds', 0)):>6}" + cells)
    return "\n".join(lines)
