"""The meta-learner's optimizer: AdamW after global-norm clipping, with a linear learning-rate warm-up; the guard
that drops an update whose gradients are not finite; gradients accumulated over row micro-batches.

The defaults are the README main run's (``configs/default.py``'s ``optimizer`` group); the training loop builds the
same optimizer from a config with ``make_optimizer(**config.optimizer)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from metarl_jax.agents.sampler import split_rows


def make_schedule(learning_rate: float = 3e-4, warmup_steps: int = 10, imitation_steps: int = 0,
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


def make_optimizer(learning_rate: float = 3e-4, warmup_steps: int = 10, grad_clip: float = 1.0, b1: float = 0.9,
                   b2: float = 0.99, weight_decay: float = 0.0, imitation_steps: int = 0,
                   imitation_rate: float = 3e-3) -> optax.GradientTransformation:
    """``clip_by_global_norm(grad_clip)`` (none when 0), then AdamW on :func:`make_schedule`'s rate."""
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    schedule = make_schedule(learning_rate, warmup_steps, imitation_steps, imitation_rate)
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))
    return optax.chain(*parts)


def accumulate_over_rows(value_and_grad, rows, rows_per_chunk: int):
    """``value_and_grad(rows)`` summed over micro-batches of ``rows_per_chunk`` rows (a ``lax.scan``; 0 or at
    least the batch: one call). ``rows``: a pytree whose leaves share a leading row axis (None leaves allowed);
    the function's outputs must be sums over rows (each micro-batch's share of the whole batch's loss, as
    :class:`LossTotals` denominators give), so the sum equals the whole batch's value and gradient. Only one
    micro-batch's activations are alive at a time."""
    batch = jax.tree.leaves(rows)[0].shape[0]
    if not rows_per_chunk or rows_per_chunk >= batch:
        return value_and_grad(rows)
    if batch % rows_per_chunk:
        raise ValueError(f"update rows per micro-batch {rows_per_chunk} do not divide the batch of {batch} rows")
    split = split_rows(rows, batch // rows_per_chunk)  # strided: each chunk spans every data-parallel device
    first = jax.tree.map(lambda x: x[0], split)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(value_and_grad, first))

    def body(total, chunk):
        return jax.tree.map(jnp.add, total, value_and_grad(chunk)), None

    total, _ = jax.lax.scan(body, zeros, split)
    return total


def guard_non_finite(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optimizer`` inside ``optax.apply_if_finite``: an update whose gradients are not all finite is dropped (zero
    update, inner state kept), however many come in a row; the training loop decides when to stop. The train state's
    ``opt_state`` is this wrapper's state (:func:`metarl_jax.algos.grpo.init_train_state`)."""
    return optax.apply_if_finite(optimizer, max_consecutive_errors=jnp.iinfo(jnp.int32).max)
