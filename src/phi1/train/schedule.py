"""Learning-rate schedules: linear warmup, then linear (the paper), cosine or constant."""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, warmup_steps: int, max_steps: int, kind: str = "linear",
          min_lr: float = 0.0) -> float:
    """The learning rate for optimizer step `step` (0-based).

    Warmup rises linearly from lr/warmup to lr over `warmup_steps` steps; after it
    the rate falls from lr to `min_lr` at `max_steps` (linear or cosine) or stays at lr.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if kind == "constant":
        return lr
    span = max(1, max_steps - warmup_steps)
    frac = min(1.0, max(0.0, (step - warmup_steps) / span))
    if kind == "linear":
        return lr - (lr - min_lr) * frac
    if kind == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule kind {kind!r}")
