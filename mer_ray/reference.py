"""The MERBench attention model as a plain torch.nn.Module: the readable definition.

`mer_ray/model.py` is the same model as a pack of K members with stacked weights (fast);
this one is a single member, written the way a researcher would. Tests prove the two
agree member by member (`pytest -k reference`), and the weights files a run keeps
(`RUN/members/<id>.safetensors`) hold this module's `state_dict`, so a saved member
loads straight into it::

    model = AttentionModel(shape, dropout=0.35)
    model.load_state_dict(state_dict)

Per modality an `Encoder`: dropout on the input, then three Linear + ReLU to `hidden`.
Fusion: the hidden vectors concatenated, an `Encoder` of the same kind to `hidden`,
then `attention` (Linear hidden -> M) gives M raw weights (no softmax); the fused
vector is the weighted sum of the hidden vectors. Heads: `emotion` (hidden -> classes)
and `valence` (hidden -> 1, only where the dataset has valence).

Randomness can be injected (`dropout_masks`, `modality_mask`), so a test can feed this
module exactly the masks a pack member drew.
"""

from __future__ import annotations

import torch
from torch import nn

from mer_ray.model import ENCODER_DEPTH, FUSION, ModelShape, PackOutput


class Encoder(nn.Module):
    """Dropout on the input, then three Linear + ReLU layers to `hidden`."""

    def __init__(self, d_in: int, hidden: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else hidden, hidden) for i in range(ENCODER_DEPTH))

    def forward(self, x, dropout_mask=None):
        x = self.dropout(x) if dropout_mask is None else x * dropout_mask
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


class AttentionModel(nn.Module):
    def __init__(self, shape: ModelShape, dropout: float = 0.0):
        super().__init__()
        h, n_mod = shape.hidden, len(shape.dims)
        self.shape = shape
        self.encoders = nn.ModuleDict({m: Encoder(d, h, dropout) for m, d in shape.dims})
        self.fusion = Encoder(n_mod * h, h, dropout)
        self.attention = nn.Linear(h, n_mod)
        self.emotion = nn.Linear(h, shape.n_classes)
        self.valence = nn.Linear(h, 1) if shape.valence else None

    def forward(self, xs: dict, modality_mask=None, dropout_masks=None) -> PackOutput:
        """xs: {modality: [B, D_m]}; modality_mask: [B, M] (0 drops a modality's hidden
        vector); dropout_masks: None (use nn.Dropout) or M + 1 scaled keep-masks.
        Returns logits [B, C], valence [B] (or None), hidden [B, H] per modality, fused."""
        masks = dropout_masks or [None] * (len(xs) + 1)
        hidden = [self.encoders[m](x, masks[i]) for i, (m, x) in enumerate(xs.items())]
        if modality_mask is not None:
            hidden = [h * modality_mask[:, i : i + 1] for i, h in enumerate(hidden)]
        z = self.fusion(torch.cat(hidden, dim=-1), masks[len(xs)])  # [B, H]
        weights = self.attention(z)  # [B, M], raw: no softmax
        fused = sum(weights[:, i : i + 1] * h for i, h in enumerate(hidden))  # [B, H]
        valence = self.valence(fused).squeeze(-1) if self.valence is not None else None
        return PackOutput(self.emotion(fused), valence, hidden, fused)


# ---------------------------------------------------------------- pack <-> state_dict
def _module_name(pack_name: str) -> str:
    """'audio.0' -> 'encoders.audio.layers.0', 'fusion.1' -> 'fusion.layers.1',
    'emotion' -> 'emotion'."""
    head, _, index = pack_name.rpartition(".")
    if not head:
        return pack_name
    return f"{FUSION}.layers.{index}" if head == FUSION else f"encoders.{head}.layers.{index}"


def to_state_dict(member: dict) -> dict:
    """One member's pack weights ('audio.0.W' [in, out], 'audio.0.b' [1, out]) as the
    module's state_dict ('encoders.audio.layers.0.weight' [out, in], '.bias' [out])."""
    out = {}
    for name, value in member.items():
        layer, kind = name.rsplit(".", 1)
        if kind == "W":
            out[f"{_module_name(layer)}.weight"] = value.detach().t().contiguous()
        else:
            out[f"{_module_name(layer)}.bias"] = value.detach().reshape(-1).clone()
    return out


def from_state_dict(state: dict, shape: ModelShape) -> dict:
    """The inverse of to_state_dict, in model.layer_shapes order."""
    from mer_ray.model import layer_shapes

    out = {}
    for layer, _, fan_out in layer_shapes(shape):
        module = _module_name(layer)
        out[f"{layer}.W"] = state[f"{module}.weight"].t().contiguous()
        out[f"{layer}.b"] = state[f"{module}.bias"].reshape(1, fan_out).clone()
    return out
