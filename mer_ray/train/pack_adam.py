"""Adam and gradient clipping on a pack's stacked weights, member by member.

Both do for each member exactly what torch does for one model
(torch.optim.Adam with L2 weight decay; torch.nn.utils.clip_grad_norm_), on weights
with a leading member dimension K; tests check each against torch's own.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam

BETAS = (0.9, 0.999)
EPS = 1e-8
# On CPU the fused kernel runs a vector loop and a scalar tail that round differently. A
# weight whose per-member size is a multiple of ALIGN (a multiple of every CPU vector
# loop's stride) puts each member's elements in the vector loop in any slice of the pack;
# the others (the biases of the 3-, 6- and 1-wide heads) are stepped one member at a
# time there, or a member's update would depend on where its pack ends.
ALIGN = 64


class PackAdam:
    """torch.optim.Adam (L2 weight decay, no amsgrad) on stacked [K, ...] weights with a
    per-member lr [K] and step count [K]; inactive members are left untouched.

    Members are updated by torch's own fused Adam kernel (torch.optim.adam.adam,
    fused=True): one call per run of neighbouring members that share learning rate and
    step count, over the contiguous slice [i:j] of every stacked weight. The update is
    element-wise, so a member's result is the same whichever run it lands in; in the
    common case (one lr, every member active) a whole pack is one call instead of one
    per member and weight (Adam is memory-bound at batch 32)."""

    def __init__(self, params: dict, lr, weight_decay: float, betas=BETAS, eps=EPS):
        self.params = params
        k = next(iter(params.values())).shape[0]
        self.lr = torch.as_tensor(lr, dtype=torch.float64).expand(k).clone()
        self.wd = weight_decay
        self.betas, self.eps = betas, eps
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}
        self.count = [0] * k  # Adam steps taken by each member

    @property
    def step_count(self) -> torch.Tensor:
        return torch.tensor(self.count, dtype=torch.float64)

    @torch.no_grad()
    def step(self, active=None):
        k = len(self.count)
        active = [True] * k if active is None else [bool(a) for a in active]
        lrs = self.lr.tolist()
        names = [n for n, p in self.params.items() if p.grad is not None]
        dev = self.params[names[0]].device
        cpu = dev.type == "cpu"  # on a GPU every element runs the same code (see ALIGN)
        aligned = [n for n in names if not cpu or self.params[n][0].numel() % ALIGN == 0]
        ragged = [n for n in names if n not in aligned]
        i = 0
        while i < k:
            if not active[i]:
                i += 1
                continue
            j = i + 1
            while j < k and active[j] and lrs[j] == lrs[i] and self.count[j] == self.count[i]:
                j += 1
            self._adam(aligned, i, j, lrs[i], dev)
            for x in range(i, j):  # see ALIGN
                self._adam(ragged, x, x + 1, lrs[i], dev)
            for x in range(i, j):
                self.count[x] += 1
            i = j

    def _adam(self, names, i, j, lr, dev):
        """One fused Adam call over members [i, j) of the named weights."""
        if not names:
            return
        # The kernel reads (and increments) one step tensor per weight; torch.full
        # makes them without a host-to-device copy on a GPU.
        steps = torch.full((len(names),), float(self.count[i]), device=dev).unbind()
        adam([self.params[n].detach()[i:j] for n in names],
             [self.params[n].grad[i:j] for n in names],
             [self.m[n][i:j] for n in names], [self.v[n][i:j] for n in names], [],
             list(steps), fused=True, amsgrad=False, beta1=self.betas[0],
             beta2=self.betas[1], lr=lr, weight_decay=self.wd, eps=self.eps,
             maximize=False)

    def select(self, keep: torch.Tensor, params: dict):
        self.params = params
        keep_list = keep.cpu().tolist()
        self.lr = self.lr[keep.cpu()]
        self.count = [self.count[i] for i in keep_list]
        keep = keep.to(next(iter(params.values())).device)
        self.m = {n: x[keep].contiguous() for n, x in self.m.items()}
        self.v = {n: x[keep].contiguous() for n, x in self.v.items()}


def clip_per_member(params: dict, max_norm: float) -> torch.Tensor:
    """Scale each member's gradients by min(1, max_norm / (its global norm + 1e-6))."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    k = grads[0].shape[0]
    # one [K, n_weights] stack instead of a pow and an add per weight (K = 1 is mostly
    # small-op overhead). Summed along its contiguous last dim: a sum over dim 0 of
    # [n_weights, K] adds in a K-dependent order, so a member's clip (and from there its
    # whole run) changed in the last bits with the size of its pack.
    per_weight = torch.stack([torch.linalg.vector_norm(g.reshape(k, -1), dim=1) for g in grads],
                             dim=1)
    norm = per_weight.square().sum(1).sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, [coef.view((k,) + (1,) * (g.dim() - 1)) for g in grads])
    return norm
