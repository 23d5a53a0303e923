"""What a model is made of, without torch: its input dims, hidden size, classes and heads
(ModelShape), and every layer's name and shape in the order the weights are kept."""

from __future__ import annotations

from dataclasses import dataclass

FUSION = "fusion"
ENCODER_DEPTH = 3


@dataclass(frozen=True)
class ModelShape:
    """Everything that fixes a member's weight shapes."""

    dims: tuple[tuple[str, int], ...]  # (modality, input dim) of the modalities used, in order
    hidden: int
    n_classes: int
    valence: bool  # a valence head

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.dims)

    def to_dict(self) -> dict:
        return {"dims": {m: d for m, d in self.dims}, "hidden": self.hidden,
                "n_classes": self.n_classes, "valence": self.valence}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelShape":
        return cls(tuple((m, int(v)) for m, v in d["dims"].items()), int(d["hidden"]),
                   int(d["n_classes"]), bool(d["valence"]))


def layer_shapes(shape: ModelShape) -> list[tuple[str, int, int]]:
    """(name, fan_in, fan_out) of every Linear, in the (fixed) initialisation order."""
    h, n_mod = shape.hidden, len(shape.dims)
    out = []
    for encoder, d_in in list(shape.dims) + [(FUSION, n_mod * h)]:
        for i in range(ENCODER_DEPTH):
            out.append((f"{encoder}.{i}", d_in if i == 0 else h, h))
    out += [("attention", h, n_mod), ("emotion", h, shape.n_classes)]
    if shape.valence:
        out.append(("valence", h, 1))
    return out
