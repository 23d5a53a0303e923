"""The MERBench "attention" model (utterance features) as a *pack* of K members.

Every weight carries a leading member dimension K, so K independent models train in one
set of batched matmuls (torch.baddbmm). Inputs are [K, B, D_m] per modality.

Per modality: dropout on the input, then 3 x (Linear + ReLU) to H. Fusion: concatenate
the three (masked) hidden vectors (3H), an encoder of the same kind to H, Linear H->3 gives
three raw attention weights (no softmax); fused = sum_m w_m * h_m. Heads: Linear H->6
(emotion logits) and Linear H->1 (valence). About 1.07 M parameters per member at H=128
with dims 1024 / 5120 / 768.

Dropout masks are supplied by the caller (the trainer draws them from each member's own
generator) so that a member's randomness does not depend on the pack it sits in.
"""

from __future__ import annotations

import math

import torch

from mer_ray.constants import MODALITIES

N_CLASSES = 6
ENCODER_INPUTS = MODALITIES + ("fusion",)


def layer_shapes(dims: dict[str, int], hidden: int) -> list[tuple[str, int, int]]:
    """(name, fan_in, fan_out) of every Linear, in the (fixed) initialisation order."""
    out = []
    for m in ENCODER_INPUTS:
        d_in = dims[m] if m != "fusion" else 3 * hidden
        for i in range(3):
            out.append((f"{m}.{i}", d_in if i == 0 else hidden, hidden))
    out += [("attention", hidden, 3), ("emotion", hidden, N_CLASSES), ("valence", hidden, 1)]
    return out


def init_member(dims: dict[str, int], hidden: int, generator: torch.Generator) -> dict:
    """One member's weights, drawn like nn.Linear's default init from its own generator:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight (drawn [out, in]) then bias.
    Stored as W [in, out] and b [1, out]."""
    params = {}
    for name, fan_in, fan_out in layer_shapes(dims, hidden):
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound
        b = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
        params[f"{name}.W"] = w.t().contiguous()
        params[f"{name}.b"] = b.reshape(1, fan_out)
    return params


def stack(members: list[dict]) -> dict:
    """Stack per-member weight dicts into pack weights [K, ...]."""
    return {k: torch.stack([m[k] for m in members]).contiguous() for k in members[0]}


def unstack(params: dict, k: int) -> dict:
    return {n: p[k].detach().clone() for n, p in params.items()}


def param_count(params: dict, per_member: bool = True) -> int:
    total = sum(p.numel() for p in params.values())
    if per_member:
        k = next(iter(params.values())).shape[0]
        return total // k
    return total


def _linear(params, name, x):
    return torch.baddbmm(params[f"{name}.b"], x, params[f"{name}.W"])


def _encoder(params, name, x, drop_mask=None):
    if drop_mask is not None:
        x = x * drop_mask
    for i in range(3):
        x = torch.relu(_linear(params, f"{name}.{i}", x))
    return x


def forward(params: dict, xs, modality_mask=None, dropout_masks=None):
    """xs: sequence of 3 tensors [K, B, D_m] (MODALITIES order).
    modality_mask: [K, B, 3] multiplier on each modality's encoder output (0 drops it).
    dropout_masks: None (eval) or 4 tensors broadcastable to each encoder input
    (audio, text, video, fusion), already scaled by 1/(1-p).
    Returns (logits [K, B, 6], valence [K, B])."""
    dm = dropout_masks or (None,) * 4
    hs = [_encoder(params, m, x, dm[i]) for i, (m, x) in enumerate(zip(MODALITIES, xs))]
    if modality_mask is not None:
        hs = [h * modality_mask[..., i : i + 1] for i, h in enumerate(hs)]
    fused_in = torch.cat(hs, dim=-1)
    z = _encoder(params, "fusion", fused_in, dm[3])
    w = _linear(params, "attention", z)  # [K, B, 3] raw weights, no softmax
    fused = sum(w[..., i : i + 1] * h for i, h in enumerate(hs))
    logits = _linear(params, "emotion", fused)
    valence = _linear(params, "valence", fused).squeeze(-1)
    return logits, valence
