"""The pack's randomness in one go, still per member: a counter-based generator.

Every random number a member uses in a training step (its dropout masks, its
modality-dropout mask, its feature noise) is a hash of (member key, epoch, step,
stream, unit index), computed for all K members of a pack at once in integer tensor
ops. So the same few kernels serve the whole pack on CPU and GPU alike, nothing waits
on the host, and a member's masks still depend only on (its key, epoch, step): never on
which pack it sits in or where. The member key comes from (seed, fold)
(`member_key`); the recipe decides widths and probabilities.

The hash is Chris Wellons' "lowbias32" integer finaliser on 32-bit words, computed in
int32 tensors (multiplication wraps modulo 2**32; logical right shifts are arithmetic
shifts with the sign bits masked off). Each 32-bit word gives two 16-bit uniforms.
`tests/test_masks.py` checks it against a plain-Python uint32 implementation.
Written by hand because torch has no counter-based generator addressable per member
(its CPU generator is a Mersenne twister; one torch.Generator per member costs one
kernel launch per member and step on a GPU).
"""

from __future__ import annotations

import hashlib
import math

import torch

_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # as a signed int32
_GOLDEN = 0x9E3779B9 - (1 << 32)
# stream constants: one per kind of draw, so streams never share words
DROPOUT, MODALITY, NOISE = 0x1B873593, 0x5BD1E995 - (1 << 32), 0x27D4EB2F
_LOW16 = 0xFFFF


def member_generator(seed: int, fold: int, device="cpu", stream: str = "") -> torch.Generator:
    """The member's own random stream for its init and shuffles: its result never
    depends on who else shares the pack."""
    digest = hashlib.sha256(f"mer-ray/{int(seed)}/{int(fold)}{stream}".encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g



def _lsr(x: torch.Tensor, s: int) -> torch.Tensor:
    return (x >> s) & ((1 << (32 - s)) - 1)


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int32 words (a bijection of 32-bit values)."""
    x = x ^ _lsr(x, 16)
    x = x * _M1
    x = x ^ _lsr(x, 15)
    x = x * _M2
    return x ^ _lsr(x, 16)


def _as_int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def member_key(seed: int, fold: int) -> int:
    """A member's 32-bit key (signed, for int32 tensors), from (seed, fold) only."""
    digest = hashlib.sha256(f"mer-ray/masks/{int(seed)}/{int(fold)}".encode()).digest()
    return _as_int32(int.from_bytes(digest[:4], "little"))


def dropout_threshold(p: float) -> tuple[int, float]:
    """Inverted dropout from 16-bit uniforms: a unit is kept when its int16 draw >= thr.
    Returns (thr, 1/P(keep)). p is rounded to a multiple of 2**-16 (exact for 0.5; 0.35
    becomes 0.350006)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    thr = min(round(p * 65536), 65535) - 32768
    return thr, 65536 / (32768 - thr)


def _hash_inplace(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """hash32 of x, in place (tmp: a scratch tensor of x's shape). Same values as
    hash32; without temporaries it is about 3x faster on a CPU (a 25-member pack's
    step: 2.9 M words in about 3 ms on 2 cores)."""
    for shift, multiplier in ((16, _M1), (15, _M2), (16, None)):
        torch.bitwise_right_shift(x, shift, out=tmp)
        tmp.bitwise_and_((1 << (32 - shift)) - 1)
        x.bitwise_xor_(tmp)
        if multiplier is not None:
            x.mul_(multiplier)
    return x


class PackRandom:
    """Per-step random draws of a pack of members, for every member at once.

    keys: [K] member keys (member_key); batch: rows per step; widths: the dropout
    units per row of each encoder input (modalities..., fusion)."""

    def __init__(self, keys, batch: int, widths: list[int], device):
        self.device = torch.device(device)
        self.keys = torch.tensor(list(keys), dtype=torch.int32, device=self.device)
        self.batch, self.widths = batch, list(widths)
        self.n_words = (batch * sum(widths) + 1) // 2  # two 16-bit units per word
        self.tables: dict = {}  # hashed index tables and constants, made once
        self.epoch_base = None
        self._buffers()

    def _buffers(self):
        # reused every step (the previous step's backward is done with them)
        k = len(self.keys)
        self.words = torch.empty(k, self.n_words, dtype=torch.int32, device=self.device)
        self.scratch = torch.empty_like(self.words)
        self.masks = [torch.empty(k, self.batch, w, device=self.device) for w in self.widths]

    def _table(self, n: int) -> torch.Tensor:
        """Hashed unit indices 0..n-1, made once: a step's words are then one xor with
        the members' step bases and one hash."""
        if n not in self.tables:
            self.tables[n] = hash32(torch.arange(n, dtype=torch.int32, device=self.device)
                                    * _GOLDEN)
        return self.tables[n]

    def select(self, keep: torch.Tensor) -> None:
        """Keep members `keep` (indices), as the trainer drops finished members."""
        keep = keep.to(self.device)
        self.keys = self.keys[keep]
        if self.epoch_base is not None:
            self.epoch_base = self.epoch_base[keep]
        self._buffers()

    def start_epoch(self, epoch: int) -> None:
        self.epoch_base = hash32(hash32(self.keys) + _as_int32(epoch * 0x3C6EF372 + 1))

    def _base(self, step: int, stream: int) -> torch.Tensor:
        """[K, 1] per-member words for (epoch, step, stream)."""
        return hash32(hash32(self.epoch_base + _as_int32(step)) ^ stream).view(-1, 1)

    def _words(self, step: int, stream: int, n: int) -> torch.Tensor:
        """[K, n] int32 random words (a fresh tensor)."""
        return hash32(self._table(n).view(1, -1) ^ self._base(step, stream))

    def dropout_masks(self, step: int, p: float, unscaled: int = 0) -> list[torch.Tensor]:
        """Keep-masks [K, B, w] for each encoder input, in buffers reused every step:
        0 or 1/(1-p) (inverted dropout), except the first `unscaled` ones, which are 0 or
        1 for inputs that were scaled by 1/(1-p) beforehand (the trainer scales the
        store's features once instead of every gathered batch: one pass less per step)."""
        thr, scale = dropout_threshold(p)
        k = len(self.keys)
        torch.bitwise_xor(self._table(self.n_words).view(1, -1),
                          self._base(step, DROPOUT), out=self.words)
        units = _hash_inplace(self.words, self.scratch).view(torch.int16).view(k, -1)
        at = 0
        for i, (w, out) in enumerate(zip(self.widths, self.masks)):
            torch.ge(units[:, at : at + self.batch * w].view(k, self.batch, w), thr, out=out)
            if i >= unscaled:
                out.mul_(scale)  # straight to float: no bool tensor to convert
            at += self.batch * w
        return self.masks

    def modality_mask(self, step: int, probabilities) -> torch.Tensor:
        """[K, B, M] keep-multipliers: modality m dropped with probability p_m; where every
        modality falls, one chosen uniformly is kept (never all dropped)."""
        k, n_mod = len(self.keys), len(probabilities)
        words = self._words(step, MODALITY, self.batch * (n_mod + 1))
        u = (words & _LOW16).to(torch.float32).div_(65536.0).view(k, self.batch, n_mod + 1)
        drop = u[..., :n_mod] < self._on_device(tuple(probabilities))
        pick = (u[..., n_mod : n_mod + 1] * n_mod).long().clamp_(max=n_mod - 1)  # [K, B, 1]
        rescue = drop.all(-1, keepdim=True) & (self._on_device(tuple(range(n_mod))) == pick)
        return (~drop | rescue).to(torch.float32)

    def _on_device(self, values: tuple) -> torch.Tensor:
        """A small constant tensor, copied to the device once (a host-to-device copy
        every step would make the host wait for the GPU)."""
        if values not in self.tables:
            self.tables[values] = torch.tensor(values, device=self.device)
        return self.tables[values]

    def normal(self, step: int, stream_index: int, shape) -> torch.Tensor:
        """[K, *shape] standard normal draws (Box-Muller on two 16-bit uniforms; tails
        reach about 4.7 sd)."""
        k, n = len(self.keys), math.prod(shape)
        words = self._words(step, NOISE + 7919 * stream_index, n)
        u1 = ((words & _LOW16).to(torch.float32) + 1.0) / 65537.0
        u2 = _lsr(words, 16).to(torch.float32) / 65536.0
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
        return z.view(k, *shape)
