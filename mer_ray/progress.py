"""Consumers of the trainer's per-epoch progress (trainer.EpochProgress).

The trainer reports numbers, never text; each consumer makes what it needs of them:

- `PackPrinter`: one console line per pack every N epochs (members live, epoch,
  seconds per epoch, best held-out score so far, an ETA).
"""

from __future__ import annotations

import math

LOG_EVERY = 10


def _eta(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class PackPrinter:
    """Print a pack's progress every `every` epochs, on its last epoch and when members
    finish. The ETA assumes the slowest member runs every remaining epoch (early
    stopping can only make it shorter)."""

    def __init__(self, log=print, every: int = LOG_EVERY, tag: str = ""):
        self.log, self.every, self.tag = log, max(1, int(every)), tag
        self.seconds = []

    def __call__(self, p) -> None:
        self.seconds.append(p.seconds)
        last = p.epoch == p.epochs - 1 or len(p.finished) == len(p.member_ids)
        if p.epoch % self.every and not last:
            return
        recent = self.seconds[-self.every:]
        per_epoch = sum(recent) / len(recent)
        finite = [b for b in p.best if math.isfinite(b)]
        best = f"best {p.metric} {max(finite):.4f} (mean {sum(finite) / len(finite):.4f})" \
            if finite else f"no finite {p.metric} yet"
        left = len(p.member_ids) - len(p.finished)
        eta = "" if last or not left else f", ETA {_eta(per_epoch * (p.epochs - p.epoch - 1))}"
        self.log(f"{self.tag}epoch {p.epoch + 1}/{p.epochs}: {left} of {p.pack_size} "
                 f"member(s) training, {per_epoch:.1f} s/epoch, {best}{eta}")
