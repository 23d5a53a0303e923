"""Training recipes as dataclass configs (values from shared DESIGN.md).

Every field can be overridden from the CLI (`--set field=value` or a dedicated flag).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "custom"
    hidden_dim: int = 128
    dropout: float = 0.5
    modality_dropout: float = 0.0
    warmup: int = 0  # modality dropout starts at this epoch (0-based)
    weight_decay: float = 1e-5  # L2, applied as Adam's weight decay
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 100
    early_stop_patience: int | None = None  # epochs without improvement; None = off
    plateau_patience: int | None = None  # ReduceLROnPlateau patience; None = off
    plateau_factor: float = 0.5
    grad_clip: float | None = None  # max global grad norm per member; None = off
    n_folds: int = 5
    fold_seed: int = 0  # every member sharing it sees the same folds

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Baseline(TrainConfig):
    """MERTools attention baseline: hidden 128, dropout 0.5, lr 1e-3, L2 1e-5, batch 32,
    100 epochs; no early stopping, LR schedule or modality dropout (our reading of the
    MERTools main-release defaults). Reported on real MER2023 features (accuracy):
    test1 0.7956, test2 0.7476, test3 0.8645, cv 0.7376."""

    preset: str = "baseline"


@dataclass(frozen=True)
class RobustV1(TrainConfig):
    """robust v1: dropout 0.5, modality dropout 0.3 from epoch 0, L2 1e-4, early stop 20,
    LR on plateau (patience 10). The experiment report gives no reference numbers."""

    preset: str = "robust_v1"
    modality_dropout: float = 0.3
    weight_decay: float = 1e-4
    early_stop_patience: int | None = 20
    plateau_patience: int | None = 10


@dataclass(frozen=True)
class RobustV2(TrainConfig):
    """robust v2: dropout 0.4, modality dropout 0.15 from epoch 0, L2 5e-5, early stop 25,
    LR on plateau (patience 10). The experiment report gives no reference numbers."""

    preset: str = "robust_v2"
    dropout: float = 0.4
    modality_dropout: float = 0.15
    weight_decay: float = 5e-5
    early_stop_patience: int | None = 25
    plateau_patience: int | None = 10


@dataclass(frozen=True)
class RobustV3(TrainConfig):
    """robust v3: hidden 128, dropout 0.35, modality dropout 0.2 from epoch 30 (warmup),
    L2 5e-5, lr 5e-4, batch 32, 100 epochs, early stop patience 30 (never before
    warmup + patience), LR on plateau patience 15, grad clip 1.0.
    Reported on real MER2023 features (accuracy): test1 0.8248, test2 0.7621,
    test3 0.8873, cv 0.7516."""

    preset: str = "robust_v3"
    dropout: float = 0.35
    modality_dropout: float = 0.2
    warmup: int = 30
    weight_decay: float = 5e-5
    lr: float = 5e-4
    early_stop_patience: int | None = 30
    plateau_patience: int | None = 15
    grad_clip: float | None = 1.0


PRESETS: dict[str, TrainConfig] = {
    c.preset: c for c in (Baseline(), RobustV1(), RobustV2(), RobustV3())
}

REFERENCE_ACCURACY = {
    "baseline": {"test1": 0.7956, "test2": 0.7476, "test3": 0.8645, "cv": 0.7376},
    "robust_v3": {"test1": 0.8248, "test2": 0.7621, "test3": 0.8873, "cv": 0.7516},
}


def get_preset(name: str) -> TrainConfig:
    from mer_ray.errors import InputError

    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def parse_override(config: TrainConfig, text: str) -> TrainConfig:
    """Apply one `field=value` override, converting value to the field's type."""
    from mer_ray.errors import InputError

    if "=" not in text:
        raise InputError(f"--set {text!r}: expected FIELD=VALUE, e.g. --set dropout=0.3")
    key, value = text.split("=", 1)
    return config.replace(**{key: field_value(key, value, f"--set {text!r}")})


def field_value(key: str, value: str, where: str):
    """A CLI string as TrainConfig field `key`'s value; an unknown field or a bad value is
    an InputError that starts with `where` (the flag the user typed)."""
    from mer_ray.errors import InputError

    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"preset"}
    if key not in fields:
        raise InputError(f"{where}: unknown field {key!r}; fields: {', '.join(sorted(fields))}")
    return convert_field(key, value)


def convert_field(key: str, value: str):
    """Convert a CLI string to TrainConfig field `key`'s type ('none' disables optional ones)."""
    from mer_ray.errors import InputError

    default = getattr(TrainConfig(), key)
    optional = key in ("early_stop_patience", "plateau_patience", "grad_clip")
    if optional and value.lower() in ("none", "off"):
        return None
    kind = type(default) if default is not None else (float if key == "grad_clip" else int)
    try:
        converted = kind(value)
    except ValueError:
        raise InputError(f"{key}={value!r}: expected a {kind.__name__}") from None
    if key in RANGES:
        ok, wanted = RANGES[key]
        if not ok(converted):
            raise InputError(f"{key}={value!r}: expected {wanted}")
    return converted


# Values the trainer cannot run with, refused at the CLI instead of mid-training.
RANGES = {
    "hidden_dim": (lambda v: v >= 1, "an integer >= 1"),
    "dropout": (lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    "modality_dropout": (lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    "warmup": (lambda v: v >= 0, "an epoch index >= 0"),
    "weight_decay": (lambda v: v >= 0, "a value >= 0"),
    "lr": (lambda v: v >= 0, "a learning rate >= 0"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "epochs": (lambda v: v >= 1, "an integer >= 1"),
    "early_stop_patience": (lambda v: v >= 0, "an integer >= 0 (or none)"),
    "plateau_patience": (lambda v: v >= 0, "an integer >= 0 (or none)"),
    "plateau_factor": (lambda v: 0 < v < 1, "a factor in (0, 1)"),
    "grad_clip": (lambda v: v > 0, "a norm > 0 (or none)"),
    "n_folds": (lambda v: v >= 2, "an integer >= 2"),
}
