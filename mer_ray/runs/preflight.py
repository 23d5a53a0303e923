"""One check before any worker starts: the store, the recipe against the data, and the
output location. Only when all of it holds is `run.json` written and training begun.

It runs on the driver (the CLI, a `ray job submit` entrypoint, the Python API), so a
bad store is a one-line exit 2 there, never a worker's traceback an hour later. The
full MER2023 store verifies (content hash, labels, finiteness) in well under a second,
so it is always on.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import numpy as np

from mer_ray.data.store import read_store
from mer_ray.errors import InputError
from mer_ray.model.shape import ModelShape, layer_shapes
from mer_ray.runs.run import read_run
from mer_ray.storage import check_output_folder, file_type, is_uri, resolve

# What a run folder may hold besides run.json; anything else means --out is not a run.
RUN_ENTRIES = {"run.json", "members", "ray", "ensemble", "report", "tensorboard", "progress",
               "predict", "rounds", "selftrain.json", "recipe.yaml"}
SEED_RANGE = (0, 2**31 - 1)
# Bytes per weight during training: weights, gradient, Adam's two moments, best copy.
BYTES_PER_WEIGHT = 5 * 4
# How a run is spread and reported, each option's rule once: (test, what is expected).
OPTION_RULES = {
    "pack_size": (lambda v: v >= 1, "must be at least 1"),
    "workers": (lambda v: v is None or v >= 1, "must be at least 1"),
    "gpus_per_worker": (lambda v: 0 <= v <= 64, "must be in [0, 64]"),
    "log_every": (lambda v: v >= 1, "must be at least 1"),
    "wait_s": (lambda v: 0 < v <= 7 * 24 * 3600, "expected seconds in (0, 604800]"),
}


def check_options(**options) -> None:
    """Check run options against OPTION_RULES; an InputError names the option as its
    caller calls it (mer_ray.errors.InputError.named)."""
    for option, value in options.items():
        test, expected = OPTION_RULES[option]
        if not test(value):
            shown = f"{value:g}" if option == "wait_s" else value  # 300.0 s reads 300
            raise InputError(f"{shown}: {expected}", param=option)


@dataclass
class Preflight:
    store: object  # mer_ray.data.store.Store, verified
    seeds: list[int]
    notes: list[str] = field(default_factory=list)


def check_seeds(seeds) -> tuple[list[int], list[str]]:
    out, notes = [], []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not SEED_RANGE[0] <= s <= SEED_RANGE[1]:
            raise InputError(f"{s!r}: expected integers in [{SEED_RANGE[0]}, "
                             f"{SEED_RANGE[1]}]", param="seeds")
        if s in out:
            notes.append(f"seed {s} given twice; it is trained once")
            continue
        out.append(s)
    if not out:
        raise InputError(": give at least one seed", param="seeds")
    return out, notes


def check_out(out: str, store_location: str, overwrite: bool) -> list[str]:
    """The run folder: a folder (or nothing yet), not the store or inside it, and either
    empty or a run unless --overwrite. Returns notes."""
    check_output_folder(out)
    if not is_uri(out) and not is_uri(store_location):
        a, s = os.path.realpath(out), os.path.realpath(store_location)
        if a == s or a.startswith(s.rstrip(os.sep) + os.sep):
            raise InputError(f"{out} is the feature store's folder (or inside it); "
                             "choose a folder of its own for the run", param="out")
    kind = file_type(out)
    if kind.name == "NotFound":
        return []
    fs, path = resolve(out)
    import pyarrow.fs as pafs

    entries = {i.base_name for i in fs.get_file_info(pafs.FileSelector(path))}
    foreign = sorted(e for e in entries - RUN_ENTRIES if not e.startswith("."))
    if foreign and not overwrite:
        raise InputError(f"{out} holds {', '.join(foreign[:3])}"
                         f"{' ...' if len(foreign) > 3 else ''}, which is not a mer-ray run; "
                         "choose an empty or new folder, or pass --overwrite to replace it", param="out")
    if foreign and overwrite:
        return [f"--overwrite: {out} will be replaced"]
    return []


def replace_out(out: str) -> None:
    """--overwrite: empty the folder (after every check passed)."""
    fs, path = resolve(out)
    if is_uri(out):
        fs.delete_dir_contents(path, missing_dir_ok=True)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def check_recipe(store, config) -> list[str]:
    """The recipe against the data: features that exist, folds possible for every class,
    a warmup that can start. Returns notes (warnings)."""
    notes = []
    dataset = store.dataset
    for m in store.modalities:
        name = config.feature_of(m)
        if name is not None and name not in store.feature_names(m):
            raise InputError(f"{m}_feature={name!r}: the store has no such {m} feature; it "
                             f"has {', '.join(store.feature_names(m))}")
    for m in ("audio", "text", "video"):
        if m not in store.modalities and (config.feature_of(m) is not None
                                          or getattr(config, f"feature_noise_{m}") > 0):
            raise InputError(f"the store has no {m} modality, but the recipe sets "
                             f"{m}_feature or feature_noise_{m}")
    train = store.emotion[store.rows("train")]
    counts = np.bincount(train, minlength=dataset.n_classes)
    if len(train) < config.n_folds:
        raise InputError(f"n_folds={config.n_folds}: the train split has only {len(train)} "
                         "samples; lower n_folds")
    smallest = int(np.argmin(counts))
    if counts[smallest] < config.n_folds:
        raise InputError(f"n_folds={config.n_folds}: class {dataset.classes[smallest]!r} has "
                         f"{counts[smallest]} training sample(s), fewer than the folds, so "
                         f"some folds would lack it; lower n_folds to at most "
                         f"{max(2, int(counts[smallest]))} or add samples")
    if config.warmup >= config.epochs and _robust(config):
        notes.append(f"{config.preset}: warmup {config.warmup} >= epochs {config.epochs}: "
                     "modality dropout and feature noise never start")
    return notes


def _robust(config) -> bool:
    return (any(config.modality_dropout_of(m) > 0 for m in ("audio", "text", "video"))
            or any(getattr(config, f"feature_noise_{m}") > 0 for m in ("audio", "text", "video")))


def check_memory(store, config, pack_size: int) -> None:
    """Refuse a pack whose weights and optimiser state cannot fit this machine's memory
    (an estimate from the layer shapes; activations at batch 32 are small next to it)."""
    dims = tuple((m, store.feature(m, config.feature_of(m)).shape[1]) for m in store.modalities)
    shape = ModelShape(dims, config.hidden_dim, store.dataset.n_classes,
                       store.dataset.has_valence)
    weights = sum(i * o + o for _, i, o in layer_shapes(shape))
    need = weights * BYTES_PER_WEIGHT * pack_size
    have = available_memory()
    if have is not None and need > 0.8 * have:
        raise InputError(
            f"hidden_dim={config.hidden_dim}: a pack of {pack_size} member(s) needs about "
            f"{need / 2**30:.1f} GiB for weights and optimiser state, and this machine has "
            f"{have / 2**30:.1f} GiB available; lower hidden_dim or --pack-size")


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def preflight(store_location: str, configs, seeds, out: str, pack_size: int = 10,
              overwrite: bool = False, local: bool = True, log=print) -> Preflight:
    """Everything checked before training (module docstring). `local`: the training runs
    on this machine (memory can be checked); a cluster's nodes are not known here."""
    check_options(pack_size=pack_size)
    seeds, notes = check_seeds(list(seeds))
    notes += check_out(out, store_location, overwrite)
    store = read_store(store_location, verify=True)
    for config in configs:
        notes += check_recipe(store, config)
        if local:
            check_memory(store, config, pack_size)
    if not overwrite:
        known = read_run(out).get("store_content_hash") if file_type(out).name != "NotFound" \
            else None
        if known and known != store.content_hash:
            raise InputError(f"{out} holds members trained on another store (content "
                             f"hash {known[:16]}, not {store.content_hash[:16]}); choose "
                             "another --out", param="out")
    for n in dict.fromkeys(notes):
        log(f"note: {n}")
    return Preflight(store, seeds, list(dict.fromkeys(notes)))

