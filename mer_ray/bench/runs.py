"""Timed training runs and the state the figures share (`Bench`): the profile, the
device, the synthetic stores and their TrainData, the figures measured so far and the
runs already timed."""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from mer_ray.bench.profiles import GpuProfile, Profile
from mer_ray.bench.rows import Row, progress, steady, sync


@dataclass
class TrainRun:
    wall_s: float
    epoch_s: list[float]  # per epoch, between the trainer's EpochProgress reports
    tail_s: float  # after the last epoch: best-epoch predictions and results
    cpu_s: float  # process CPU time: near wall x threads when the machine is ours
    results: list = field(default_factory=list)  # MemberResults, weights dropped
    gpu_peak_bytes: int | None = None  # torch.cuda.max_memory_allocated during the run

    @property
    def first(self):
        """The first member's MemberResult (what checks of results read)."""
        return self.results[0] if self.results else None

    @property
    def steady_epoch_s(self) -> float | None:
        return steady(self.epoch_s)


def timed_train(store, config, specs, device: str, data=None) -> TrainRun:
    """Wall time of one train_pack call; epoch boundaries are the moments its
    `on_epoch` callback gets each EpochProgress (after the epoch's held-out scoring).
    `data`: a TrainData to share between runs (on a GPU the features are then copied to
    it once, and a memory peak counts them once); without it train_pack builds its own."""
    from mer_ray.train.trainer import train_pack

    marks: list[float] = []

    def on_epoch(_progress):
        sync(device)
        marks.append(time.perf_counter())

    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()  # this run's high-water mark, not the process's
    shared = {} if data is None else {"data": data}
    sync(device)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    results = train_pack(store, config, specs, device=device, on_epoch=on_epoch, **shared)
    sync(device)
    t1 = time.perf_counter()
    bounds = [t0] + marks
    for result in results:
        result.weights = None  # predictions are what figures read; weights are 4 MB a member
    return TrainRun(t1 - t0, [b - a for a, b in itertools.pairwise(bounds)], t1 - bounds[-1],
                    time.process_time() - cpu0, results,
                    torch.cuda.max_memory_allocated() if cuda else None)


def pythonpath_with_tree() -> str:
    """PYTHONPATH with the tree this mer_ray is in first: subprocesses and Ray workers
    import the same code, also where mer-ray is not installed (a bare GPU node)."""
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])


def fold_specs(n: int, seed0: int = 0) -> list[tuple[int, int]]:
    """n members: folds 0-4 of seed 0, then of seed 1, ... (how a grid fills a pack)."""
    return [(i % 5, seed0 + i // 5) for i in range(n)]


@dataclass
class Bench:
    """What the measurement functions share: profile, device, the stores they train on,
    the figures measured so far (later figures build on earlier ones) and the timed
    runs (a later figure that needs the same run reuses it)."""

    profile: Profile | GpuProfile
    device: str
    workdir: Path
    figures: dict[str, Row] = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # beyond the rows: per-epoch times, tracebacks
    _stores: dict = field(default_factory=dict)
    _runs: dict = field(default_factory=dict)
    _data: dict = field(default_factory=dict)
    _warm: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def store_path(self, scale: float) -> Path:
        path = self.workdir / f"store-{scale:g}"
        if path not in self._stores:
            progress(f"writing synthetic store (seed 0, scale {scale:g})")
            from mer_ray.data.synth_files import synthesize_store

            synthesize_store(path, seed=0, scale=scale)
            self._stores[path] = None
        return path

    def store(self, scale: float):
        from mer_ray.data.store import read_store

        path = self.store_path(scale)
        if self._stores[path] is None:
            self._stores[path] = read_store(path)
        return self._stores[path]

    def train_data(self, scale: float):
        """The TrainData of the store of this scale, built once: the features on the
        device, shared by the runs that pass it to timed_train."""
        from mer_ray.train.train_data import TrainData

        if scale not in self._data:
            self._data[scale] = TrainData(self.store(scale), self.config(1), self.device)
        return self._data[scale]

    def value(self, key: str):
        row = self.figures.get(key)
        return None if row is None else row.value

    def config(self, epochs: int, warmup: int | None = None):
        """robust_v3 with a fixed number of epochs: early stopping off (every member runs
        all epochs, so timings compare) and modality dropout from epoch 1 (so its cost is
        in the figures) unless a warmup is given."""
        from mer_ray.train.presets import get_preset

        if warmup is None:
            warmup = 1 if epochs > 1 else 0
        cfg = get_preset("robust_v3").replace(epochs=epochs, early_stop_patience=None,
                                              warmup=warmup)
        if self.profile.hidden_dim is not None:
            cfg = cfg.replace(hidden_dim=self.profile.hidden_dim)
        return cfg

    def shape(self, scale: float):
        """The model's ModelShape on the store of this scale."""
        from mer_ray.model.shape import ModelShape

        store = self.store(scale)
        dims = tuple((m, int(store.feature(m).shape[1])) for m in store.modalities)
        return ModelShape(dims, self.config(1).hidden_dim, store.dataset.n_classes,
                          store.dataset.has_valence)

    def shapes(self, scale: float):
        """(name, fan_in, fan_out) of every Linear (model.layer_shapes)."""
        from mer_ray.model.shape import layer_shapes

        return layer_shapes(self.shape(scale))

    def fold_sizes(self, scale: float) -> tuple[int, int]:
        """(training rows, held-out rows) of fold 0."""
        from mer_ray.train.folds import make_folds

        store, cfg = self.store(scale), self.config(1)
        rows = store.rows("train")
        tr, va = make_folds(store.emotion[rows], cfg.n_folds, cfg.fold_seed)[0]
        return len(tr), len(va)

    def train(self, specs, config) -> TrainRun:
        """timed_train on the training store, once per (specs, config) in a bench run."""
        key = (tuple(specs), json.dumps(config.to_dict(), sort_keys=True))
        if key not in self._runs:
            run = timed_train(self.store(self.profile.train_scale), config, specs,
                              self.device)
            run.results = run.results[:1]  # what later checks read; kept for the whole run
            self._runs[key] = run
        return self._runs[key]

    def train_fresh(self, specs, config) -> TrainRun:
        """timed_train on the training store with the bench's one TrainData (on a GPU the
        features copied to it once, so a memory peak counts them once), a new run every
        call: for figures that read a run's memory peak or every member's results."""
        scale = self.profile.train_scale
        return timed_train(self.store(scale), config, specs, self.device,
                           data=self.train_data(scale))

    def warm_up(self, scale: float) -> None:
        """One untimed 1-epoch member: the process's first training call pays one-off
        costs (allocator growth, kernel selection) that belong to no figure."""
        if not self._warm:
            progress("warm-up: one untimed 1-epoch member")
            timed_train(self.store(scale), self.config(1), [(0, 0)], self.device)
            self._warm = True
