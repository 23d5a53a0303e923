"""The MERBench "attention" model (utterance features) as a *pack* of K members.

The readable definition is `mer_ray/train/reference.py` (a plain nn.Module); this file is the
same model with every weight carrying a leading member dimension K, so K independent
models train in one set of batched matmuls (torch.baddbmm). Tests check the two agree
member by member (`pytest -k reference`).

Per modality: dropout on the input, then 3 x (Linear + ReLU) to H. Fusion: concatenate
the (masked) hidden vectors (M*H for M modalities), an encoder of the same kind to H,
Linear H->M gives M raw attention weights (no softmax); fused = sum_m w_m * h_m. Heads:
Linear H->C (emotion logits) and, where the dataset has valence, Linear H->1. About
1.07 M parameters per member at H=128 with MER2023's dims 1024 / 5120 / 768.

Weights are a dict of stacked tensors: `<encoder>.<i>.W` [K, in, out] and
`<encoder>.<i>.b` [K, 1, out] for encoder in (modalities..., "fusion") and i in 0..2,
then `attention`, `emotion` and `valence` (.W/.b). Randomness (dropout masks) is passed
in by the caller, so a member's result never depends on the pack it sits in.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from mer_ray.model.shape import ENCODER_DEPTH, FUSION, ModelShape, layer_shapes


def init_member(shape: ModelShape, generator: torch.Generator) -> dict:
    """One member's weights, drawn like nn.Linear's default init from its own generator:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight (drawn [out, in]) then bias.
    Stored as W [in, out] and b [1, out]."""
    params = {}
    for name, fan_in, fan_out in layer_shapes(shape):
        bound = 1.0 / math.sqrt(fan_in)
        weight = (torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
        params[f"{name}.W"] = weight.t().contiguous()
        params[f"{name}.b"] = bias.reshape(1, fan_out)
    return params


def stack(members: list[dict]) -> dict:
    """Stack per-member weight dicts into pack weights [K, ...]."""
    return {k: torch.stack([m[k] for m in members]).contiguous() for k in members[0]}


def unstack(params: dict, k: int) -> dict:
    """Member k's weights out of a pack (detached copies)."""
    return {n: p[k].detach().clone() for n, p in params.items()}


def param_count(params: dict, per_member: bool = True) -> int:
    total = sum(p.numel() for p in params.values())
    if per_member:
        k = next(iter(params.values())).shape[0]
        return total // k
    return total


class PackOutput(NamedTuple):
    logits: torch.Tensor  # [K, B, C]
    valence: torch.Tensor | None  # [K, B], None without a valence head
    hidden: list[torch.Tensor]  # per modality [K, B, H], after the modality mask
    fused: torch.Tensor  # [K, B, H]


def _linear(params, name, x):
    weight, bias = params[f"{name}.W"], params[f"{name}.b"]
    if weight.shape[-1] == 1:
        # A one-wide output (the valence head) as a multiply and a sum: baddbmm rounds it
        # differently for one member than for several (a matrix-vector path), which made
        # a member's run depend on the size of its pack.
        return (x * weight.transpose(1, 2)).sum(-1, keepdim=True) + bias
    return torch.baddbmm(bias, x, weight)


def _encoder(params, name, x, dropout_mask=None):
    if dropout_mask is not None:
        x = x * dropout_mask
    for i in range(ENCODER_DEPTH):
        # in place: baddbmm's backward needs its inputs, not its output (one buffer less)
        x = _linear(params, f"{name}.{i}", x).relu_()
    return x


def forward(params: dict, xs: dict, modality_mask=None, dropout_masks=None) -> PackOutput:
    """xs: {modality: [K, B, D_m]} in the shape's modality order.
    modality_mask: [K, B, M] multiplier on each modality's encoder output (0 drops it).
    dropout_masks: None (eval) or M + 1 tensors (or Nones) broadcastable to each
    encoder input (the modalities', then fusion's), already scaled by 1/(1-p)."""
    n_mod = len(xs)
    masks = dropout_masks or (None,) * (n_mod + 1)
    hidden = [_encoder(params, m, x, masks[i]) for i, (m, x) in enumerate(xs.items())]
    if modality_mask is not None:  # each hidden [K, B, H]
        hidden = [h * modality_mask[..., i : i + 1] for i, h in enumerate(hidden)]
    z = _encoder(params, FUSION, torch.cat(hidden, dim=-1), masks[n_mod])  # [K, B, H]
    weights = _linear(params, "attention", z)  # [K, B, M] raw weights, no softmax
    fused = sum(weights[..., i : i + 1] * h for i, h in enumerate(hidden))  # [K, B, H]
    logits = _linear(params, "emotion", fused)  # [K, B, C]
    valence = _linear(params, "valence", fused).squeeze(-1) if "valence.W" in params else None
    return PackOutput(logits, valence, hidden, fused)
