"""A run: which members a recipe needs, which are already saved, and training the rest.

The same functions serve `mer-ray train --no-ray` (everything in this process) and each
Ray Train worker (its share of the members): a member's result depends only on
(config, fold, seed, data), never on who trains it. No Ray and no `ensembles` import
here (ensembles reads what runs write; the dependency goes one way).

Run folder (a local path or a pyarrow filesystem URI):

    RUN/run.json                    the store used (location, content hash, dataset),
                                    every config trained into the run and the seeds
                                    asked of each (`seeds`, one list per config)
    RUN/members/<id>.safetensors    one member's best-epoch weights (mer_ray.model.weights)
    RUN/members/<id>.parquet        its predictions, written last (mer_ray.runs.members)
    RUN/tensorboard/<id>/           the member's curves, one point per epoch
                                    (mer_ray.runs.progress; off with --no-tensorboard)
    RUN/progress/<pack-id>.json     a pack being trained, rewritten every epoch and
                                    removed once its members are saved (`mer-ray
                                    status`, the live Tune reports)
    RUN/ray/                        Ray Train / Tune bookkeeping (Ray paths only)
"""

from __future__ import annotations

import json
import time

from mer_ray.errors import InputError, StorageError
from mer_ray.runs.curves import MemberCurves
from mer_ray.runs.members import existing_member_ids, member_path, read_member, write_member
from mer_ray.runs.progress import (
    LOG_EVERY,
    PackBar,
    PackPrinter,
    PackProgressFile,
    remove_finished_progress,
)
from mer_ray.runs.pseudo_labels import read_labels
from mer_ray.storage import absolute, join, read_bytes, storage_errors, write_bytes
from mer_ray.train.presets import TrainConfig, get_preset
from mer_ray.train.result import member_id

RUN_FORMAT = "mer-ray-run/2"
RUN_FILE = "run.json"

__all__ = ["absolute", "all_specs", "pending_specs", "missing", "grid_settings",
           "record_run", "read_run", "train_members", "train_grid_here",
           "read_config_members"]


def all_specs(config, seeds) -> list[tuple[int, int]]:
    """Every (fold, seed) of a recipe: n_folds x seeds, seed-major."""
    return [(fold, int(seed)) for seed in seeds for fold in range(config.n_folds)]


def pending_specs(run, config, specs) -> list[tuple[int, int]]:
    """The specs whose member is not complete in the run yet (resume never retrains)."""
    done = existing_member_ids(run)
    cfg = config.to_dict()
    return [s for s in specs if member_id(cfg, *s) not in done]


def setting_label(config) -> str:
    """`robust_v3 warmup=40`: the preset, the warmup and each other field that differs
    from the preset. It names a Tune trial and its Train run the same on every start, and
    the same setting in the console, the progress files and `mer-ray status`."""
    try:
        preset = get_preset(config.preset).to_dict()
    except InputError:  # a custom preset name: compare with the base defaults
        preset = TrainConfig().to_dict()
    fields = {"warmup": config.warmup}
    fields.update((k, v) for k, v in config.to_dict().items()
                  if k not in ("preset", "warmup") and v != preset.get(k))
    return " ".join([config.preset] + [f"{k}={value_text(v)}" for k, v in fields.items()])


def value_text(value) -> str:
    return "none" if value is None else str(value)


def missing(run, config, seeds, log=print):
    """(all specs, specs still to train) of a recipe, saying how many are skipped."""
    specs = all_specs(config, seeds)
    todo = pending_specs(run, config, specs)
    log(f"{setting_label(config)}: {len(specs)} members, {len(specs) - len(todo)} already "
        f"saved in {run} (skipped), {len(todo)} to train")
    return specs, todo


def grid_settings(grid: dict[str, list]) -> list[dict]:
    """Cartesian product of field -> values, in the order given."""
    settings = [{}]
    for field, values in grid.items():
        settings = [{**s, field: v} for s in settings for v in values]
    return settings


def read_run(run) -> dict:
    """RUN/run.json ({} when the run has none yet)."""
    try:
        with storage_errors(run, "reading"):
            raw = read_bytes(join(run, RUN_FILE))
    except FileNotFoundError:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise InputError(f"{join(run, RUN_FILE)} is not valid JSON; delete it (the members "
                         "are kept) and run the same command again") from None


def record_run(run, store_location: str, configs, manifest: dict | None = None,
               seeds=None) -> None:
    """Add configs to RUN/run.json (creating it), so scoring and prediction can find the
    store, and the seeds each was asked for (`seeds`, a list per config beside
    `configs`: the union of every command's), so `mer-ray status` knows what a run
    is missing. A run holds members of one store only: another store's content hash is
    refused."""
    info = read_run(run) or {"format": RUN_FORMAT, "store": str(store_location), "configs": []}
    if manifest is not None:
        known = info.get("store_content_hash")
        if known and known != manifest["content_hash"]:
            raise InputError(
                f"{run} holds members trained on store {known[:16]} ({info.get('store')}), "
                f"not on {store_location} ({manifest['content_hash'][:16]}); choose another "
                "--out for this store")
        info.update(format=RUN_FORMAT, store=str(store_location),
                    store_content_hash=manifest["content_hash"], dataset=manifest["dataset"])
    recorded = info.setdefault("seeds", [])
    recorded += [[] for _ in range(len(info["configs"]) - len(recorded))]  # older run.json
    for c in configs:
        if c.to_dict() not in info["configs"]:
            info["configs"].append(c.to_dict())
            recorded.append([])
        i = info["configs"].index(c.to_dict())
        recorded[i] = sorted(set(recorded[i]) | {int(s) for s in seeds or ()})
    with storage_errors(join(run, RUN_FILE)):
        write_bytes(join(run, RUN_FILE), json.dumps(info, indent=1).encode())


def train_members(store, config, specs, run, pack_size: int = 10, device: str = "cpu",
                  log=print, tag: str = "", on_epoch=None, log_every: int = 10,
                  tensorboard: bool = True, bar: bool = False) -> list[str]:
    """Train `specs` of one config in packs of `pack_size`, writing each member's files
    as its pack finishes. Returns the member files written.

    A failure to save one member (a full disk, say) does not discard the others: every
    member that can be saved is, then one StorageError says how many were kept and how
    to resume. Each pack's EpochProgress (mer_ray.train.trainer) goes to the console (lines
    every `log_every` epochs, or a tqdm bar with `bar`), its members' TensorBoard curves
    (`tensorboard`), its progress file (mer_ray.runs.progress) and `on_epoch`."""
    # torch loads only when training: `mer-ray status` and the CLI's checks never need it
    from mer_ray.train.train_data import TrainData
    from mer_ray.train.trainer import train_pack

    written = []
    packs = [specs[i : i + pack_size] for i in range(0, len(specs), pack_size)]
    data = TrainData(store, config, device) if packs else None
    pseudo = None
    if packs and config.pseudo_round > 0:  # a self-training round: its pseudo-labels
        pseudo = read_labels(run, config, store)
    cfg = config.to_dict()
    for n, pack in enumerate(packs, 1):
        t0 = time.perf_counter()
        names = " ".join(f"f{f}s{s}" for f, s in pack)
        log(f"{tag}pack {n}/{len(packs)}: {len(pack)} member(s) [{names}] of "
            f"{setting_label(config)}")
        ids = [member_id(cfg, f, s) for f, s in pack]
        display, progress_file = pack_consumers(
            run, config, pack, ids, log=log, log_every=log_every,
            tag=f"{tag}pack {n}/{len(packs)} ", tensorboard=tensorboard, bar=bar,
            label=setting_label(config))
        every = display + [progress_file] + ([on_epoch] if on_epoch else [])
        try:
            try:
                results = train_pack(store, config, pack, device=device, data=data,
                                     on_epoch=lambda p, every=every: [c(p) for c in every],
                                     pseudo=pseudo)
            finally:
                for c in display:
                    c.close()
            _save_pack(results, run, written, log, tag)
        finally:
            progress_file.close()  # it goes once the members are saved
        log(f"{tag}pack {n}/{len(packs)} done in {time.perf_counter() - t0:.1f} s")
    if packs:
        remove_finished_progress(run, existing_member_ids(run))
    return written


def pack_consumers(run, config, specs, member_ids, log=print, log_every: int = LOG_EVERY,
                   tag: str = "", tensorboard: bool = True, bar: bool = False,
                   label: str = "") -> tuple[list, "PackProgressFile"]:
    """The consumers of one pack: (the console (a bar or lines) and its TensorBoard
    curves, closed when the pack ends; its progress file, closed once its members are
    saved). Each has `close()`."""
    console = (PackBar(len(specs), config.epochs, desc=tag.strip() or None) if bar
               else PackPrinter(log, every=log_every, tag=tag))
    display = [console] + ([MemberCurves(run, member_ids, log=log)] if tensorboard else [])
    return display, PackProgressFile(run, specs, member_ids, label, config.epochs, log=log)


def _save_pack(results, run, written: list, log, tag: str) -> None:
    failures = []
    for r in results:
        try:
            written.append(write_member(r, run))
        except StorageError as e:
            failures.append((r.member_id, e))
            continue
        if r.status == "failed":
            log(f"{tag}saved {r.member_id} as FAILED: {r.stop_reason}")
            continue
        oof = r.metrics["oof"]
        extra = f" ({r.stop_reason})" if r.stop_reason else ""
        log(f"{tag}saved {r.member_id}: best epoch {r.best_epoch} of {r.epochs_run}, "
            f"oof F1 {oof['f1']:.4f}" + (f" combined {oof['combined']:.4f}"
                                         if "combined" in oof else "") + extra)
    if failures:
        raise StorageError(f"{failures[0][1]} ({len(failures)} member(s) of this pack "
                           f"not saved, {len(written)} saved in {run} and kept)")


def train_grid_here(store, store_location: str, config, settings, seeds, run: str,
                    pack_size: int = 10, device: str = "cpu", log=print,
                    on_epoch=None, log_every: int = 10, tensorboard: bool = True,
                    bar: bool = False) -> int:
    """The same grid in this process, no Ray (`--no-ray`). Returns members trained."""
    trained = 0
    for s in settings:
        c = config.replace(**s)
        _, todo = missing(run, c, seeds, log)
        train_members(store, c, todo, run, pack_size, device, log=log, on_epoch=on_epoch,
                      log_every=log_every, tensorboard=tensorboard, bar=bar)
        trained += len(todo)
    return trained


def read_config_members(run: str, config, seeds, log=None):
    """The saved members of one config and these seeds (those that failed in training are
    left out, with a line to `log`)."""
    wanted = {member_id(config.to_dict(), f, s) for f, s in all_specs(config, seeds)}
    members = [read_member(member_path(run, mid))
               for mid in sorted(wanted & existing_member_ids(run))]
    failed = [m for m in members if m.status != "ok"]
    if failed and log is not None:
        log(f"{len(failed)} member(s) failed in training and are left out: "
            + ", ".join(f"{m.member_id} ({m.stop_reason})" for m in failed))
    return [m for m in members if m.status == "ok"]
