"""Shared set-up for the Ray tests: a tiny store and a fast recipe."""

from mer_ray.data.synth import synthesize_store
from mer_ray.presets import get_preset

FAST = ["epochs=2", "hidden_dim=16", "warmup=1", "early_stop_patience=none"]


def tiny_store(path):
    return str(synthesize_store(path, seed=0, scale=0.05))


def fast_config(**changes):
    fast = dict(epochs=2, hidden_dim=16, warmup=1, early_stop_patience=None)
    return get_preset("robust_v3").replace(**{**fast, **changes})


def set_args():
    return [a for s in FAST for a in ("--set", s)]
