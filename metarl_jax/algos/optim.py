"""The meta-learner's optimizer: AdamW after global-norm clipping, with a linear learning-rate warm-up.

The defaults are the README main run's (``configs/default.py``'s ``optimizer`` group); the training loop builds the
same optimizer from a config with ``make_optimizer(**config.optimizer)``.
"""

from __future__ import annotations

import optax


def make_schedule(learning_rate: float = 3e-3, warmup_steps: int = 10) -> optax.ScalarOrSchedule:
    """The learning rate: a linear warm-up from 0 over ``warmup_steps`` updates (an optax schedule: update count ->
    rate), or the constant ``learning_rate`` without warm-up."""
    return optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1)) if warmup_steps else learning_rate


def make_optimizer(learning_rate: float = 3e-3, warmup_steps: int = 10, grad_clip: float = 1.0, b1: float = 0.9,
                   b2: float = 0.99, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """``clip_by_global_norm(grad_clip)`` (none when 0), then AdamW on :func:`make_schedule`'s rate."""
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    parts.append(optax.adamw(make_schedule(learning_rate, warmup_steps), b1=b1, b2=b2, weight_decay=weight_decay))
    return optax.chain(*parts)
