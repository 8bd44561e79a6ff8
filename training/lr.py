"""Learning-rate schedule: linear warm-up, then cosine (or linear) decay to min_lr, or constant."""

import math


def learning_rate(step: int, optim, max_steps: int) -> float:
    """Rate for optimizer step `step` (0-based)."""
    if step < optim.lr_warmup_steps:
        return optim.lr * (step + 1) / optim.lr_warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    progress = min(1.0, (step - optim.lr_warmup_steps) / max(1, max_steps - optim.lr_warmup_steps))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1.0 - progress
    return optim.min_lr + decay * (optim.lr - optim.min_lr)
