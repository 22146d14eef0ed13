"""The meta-learner's optimizer: AdamW after global-norm clipping, with a linear learning-rate warm-up.

The defaults are the README main run's (``configs/default.py``'s ``optimizer`` group); the training loop builds the
same optimizer from a config with ``make_optimizer(**config.optimizer)``.
"""

from __future__ import annotations

import optax


def make_schedule(learning_rate: float = 3e-3, warmup_steps: int = 10, imitation_steps: int = 0,
                  imitation_rate: float = 3e-3) -> optax.ScalarOrSchedule:
    """The learning rate: a linear warm-up from 0 over ``warmup_steps`` updates (an optax schedule: update count ->
    rate), or the constant ``learning_rate`` without warm-up. With ``imitation_steps`` > 0 the first that many
    updates (the imitation phase) follow the same shape at ``imitation_rate``, then the schedule starts again,
    warm-up included, at ``learning_rate``."""
    def one(rate):
        return optax.linear_schedule(0.0, rate, max(warmup_steps, 1)) if warmup_steps else optax.constant_schedule(rate)

    if imitation_steps:
        return optax.join_schedules([one(imitation_rate), one(learning_rate)], [imitation_steps])
    return one(learning_rate) if warmup_steps else learning_rate


def make_optimizer(learning_rate: float = 3e-3, warmup_steps: int = 10, grad_clip: float = 1.0, b1: float = 0.9,
                   b2: float = 0.99, weight_decay: float = 0.0, imitation_steps: int = 0,
                   imitation_rate: float = 3e-3) -> optax.GradientTransformation:
    """``clip_by_global_norm(grad_clip)`` (none when 0), then AdamW on :func:`make_schedule`'s rate."""
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    schedule = make_schedule(learning_rate, warmup_steps, imitation_steps, imitation_rate)
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))
    return optax.chain(*parts)
