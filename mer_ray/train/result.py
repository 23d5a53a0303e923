"""What training one member produces: its id, its predictions per split and its record
(MemberResult), as the member files of a run hold them (mer_ray/runs/members.py)."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field

import numpy as np

from mer_ray.data.dataset import MODALITIES, Dataset
from mer_ray.train.presets import ADDED_FIELDS

FORMAT = "mer-ray-member/2"
OLD_FORMAT = "mer-ray-member/1"
OOF = "oof"
PARQUET, WEIGHTS = ".parquet", ".safetensors"


def mask_sets(modalities) -> list[tuple[str, ...]]:
    """Modalities zeroed at inference for the robustness analysis: every non-empty proper
    subset, smallest first (each single one, then each pair, ...)."""
    modalities = tuple(modalities)
    return [c for k in range(1, len(modalities)) for c in itertools.combinations(modalities, k)]


MASKS = tuple(mask_sets(MODALITIES))  # the three-modality case


def mask_key(mods) -> str:
    return "_".join(mods)


def member_id(config: dict, fold: int, seed: int) -> str:
    """Stable id of (config, fold, seed): readable prefix + hash of the full config.
    Fields added since the first member format are left out where they have their
    default, so members trained before those fields existed keep their ids."""
    cfg = {k: v for k, v in config.items() if not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}
    payload = json.dumps({"config": cfg, "fold": int(fold), "seed": int(seed)}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"{config['preset']}-w{config['warmup']}-f{fold}-s{seed}-{digest}"


@dataclass
class SplitPredictions:
    names: np.ndarray  # [n] str
    logits: np.ndarray  # [n, C] float32
    valence: np.ndarray | None  # [n] float32; None without a valence head
    label: np.ndarray  # [n] int64, -1 where unlabelled
    valence_label: np.ndarray  # [n] float32, NaN where unknown
    masked: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    # mask_key -> (logits [n, C], valence [n] or None)

    @property
    def labelled(self) -> bool:
        return bool(len(self.label)) and bool((np.asarray(self.label) >= 0).all())


@dataclass
class MemberResult:
    member_id: str
    config: dict
    fold: int
    seed: int
    best_epoch: int
    epochs_run: int
    metrics: dict  # split -> metric name -> value (labelled splits only)
    history: list[dict]  # one dict per epoch run
    classes: list[str]
    store: dict  # {"content_hash": ..., "features": {modality: {"feature", "dim"}}}
    predictions: dict[str, SplitPredictions]  # "oof" + test splits -> predictions
    dataset: dict = field(default_factory=dict)  # Dataset.to_dict()
    model: dict = field(default_factory=dict)  # ModelShape.to_dict()
    status: str = "ok"  # "ok", or "failed" (no predictions, no weights)
    stop_reason: str | None = None  # why training ended early, where it did
    weights: dict | None = None  # best-epoch pack-layout weights (in memory only)
    weights_sha256: str | None = None
    path: str | None = None  # where it was read from / written to
    # a self-training student's pseudo-labels: file, sha256, round, teacher_fold,
    # teachers (member ids), rows (mer_ray.selftrain.pseudo); None for a member without
    pseudo: dict | None = None

    @property
    def description(self) -> Dataset:
        if self.dataset:
            return Dataset.from_dict(self.dataset, str(self.path or self.member_id))
        return _infer_dataset(self)

    @property
    def test_splits(self) -> list[str]:
        return [s for s in self.predictions if s != OOF]

    def meta(self) -> dict:
        return {
            "format": FORMAT, "member_id": self.member_id, "config": self.config,
            "fold": self.fold, "seed": self.seed, "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run, "metrics": self.metrics, "history": self.history,
            "classes": self.classes, "dataset": self.dataset, "model": self.model,
            "store": self.store, "status": self.status, "stop_reason": self.stop_reason,
            "weights": ({"file": self.member_id + WEIGHTS, "sha256": self.weights_sha256}
                        if self.weights_sha256 else None),
            **({"pseudo": self.pseudo} if self.pseudo is not None else {}),
        }


def _old_dataset(meta: dict) -> dict:
    """The first member format was MER2023 only."""
    from mer_ray.data.constants import MER2023

    if list(meta["classes"]) != list(MER2023.classes):
        return Dataset("unknown", tuple(meta["classes"]), MER2023.splits).to_dict()
    return MER2023.to_dict()


def _infer_dataset(result: MemberResult) -> Dataset:
    """A description for a result made without one (in memory, by hand): its prediction
    splits as labelled or unlabelled test splits, valence where labels have it."""
    from mer_ray.data.dataset import Split

    oof = result.predictions.get(OOF)
    splits = [Split("train", "train", bool(oof is not None and oof.valence is not None
                                          and not np.isnan(oof.valence_label).all()))]
    for name in result.test_splits:
        p = result.predictions[name]
        labelled = p.labelled
        splits.append(Split(name, "test" if labelled else "unlabelled",
                            labelled and p.valence is not None
                            and not np.isnan(p.valence_label).all()))
    return Dataset("unnamed", tuple(result.classes), tuple(splits))
