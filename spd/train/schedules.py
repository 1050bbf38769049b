"""Learning-rate schedules with optional linear warm-up, and the annealing of p.

Both boundaries follow the original implementation (docs/method.md, 'Optimisation'): warm-up
step s of W has lr · s/W (so step 0 has lr 0), and p starts to move at the first step whose
fraction of training is not below `start_frac`.
"""

import math

from spd.config.schema import LRSchedule


def lr_at_step(
    step: int,
    steps: int,
    base_lr: float,
    schedule: LRSchedule,
    warmup_pct: float = 0.0,
    exponential_halflife: float | None = None,
) -> float:
    """The learning rate for optimiser step `step` of `steps`."""
    warmup_steps = int(warmup_pct * steps)
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    t, total = step - warmup_steps, max(steps - warmup_steps, 1)
    if schedule == "constant":
        factor = 1.0
    elif schedule == "linear":
        factor = 1.0 - t / total
    elif schedule == "cosine":
        # Clamped at t = T − 1: step T (logged, no optimiser step) must not get a negative lr.
        factor = 1.0 if total == 1 else math.cos(0.5 * math.pi * min(t, total - 1) / (total - 1))
    else:
        assert exponential_halflife is not None, "exponential schedule needs a half-life"
        factor = 0.5 ** (t / exponential_halflife)
    return base_lr * factor


def pnorm_at_step(
    step: int, steps: int, pnorm: float, final_p: float | None, start_frac: float, end_frac: float
) -> float:
    """p for the importance-minimality loss, annealed linearly between two fractions of training."""
    if final_p is None:
        return pnorm
    frac = step / steps
    if frac < start_frac:
        return pnorm
    if frac >= end_frac or end_frac == start_frac:
        return final_p
    progress = (frac - start_frac) / (end_frac - start_frac)
    return pnorm + (final_p - pnorm) * progress
