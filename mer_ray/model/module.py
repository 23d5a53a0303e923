"""The MERBench attention model as a plain torch.nn.Module (the readable definition), and the
conversion between one member of a pack (mer_ray/model/pack.py) and this module's state_dict."""

from __future__ import annotations

import torch
from torch import nn

from mer_ray.model.pack import PackOutput
from mer_ray.model.shape import ENCODER_DEPTH, ModelShape


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


