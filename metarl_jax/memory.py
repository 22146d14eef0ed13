"""Memory planning before anything compiles: how many rows the rollout and the update take at a time.

The compiled step plays every env's ``num_tasks * group_size`` rows and differentiates the loss over them. At
ORBIT's scale neither fits at once: one Qwen3-1.7B row of a 32,768-token context holds 3.7 GB of bfloat16 KV
cache, and its update keeps every layer's activations for 32,768 tokens. :func:`plan_micro_batches` picks,
from a memory budget (``config.memory_budget_gb``; default the device's memory), the largest row micro-batches
of the rollout (:func:`metarl_jax.agents.rollout.rollout`'s ``rows_per_chunk``) and of the update
(``GRPOHyper.update_rows``, accumulated gradients) whose estimated bytes fit beside the train state. The
estimates are rough (see the constants); ``config.rollout_rows`` / ``config.update_rows`` override them, and
the AOT memory analysis of ``benchmarks/paper_scale.py`` gives XLA's own figure.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import jax
import numpy as np

from metarl_jax.models.transformer import remat_group_size

# Bytes the update keeps per context token, per layer and per unit of (hidden_size + intermediate_size):
# measured on CPU from XLA's temporary buffers of the tiny preset's update (16 tasks x 8 rows of
# BernoulliBandit-misc: 7.1 GB at 1,541 tokens, 3.5 GB at 770 tokens and at 8 x 8 rows, so linear in rows x
# tokens), float32. The attention's scores are recomputed in the backward pass
# (models.attention.causal_attention), so nothing grows with the square of the context.
UPDATE_BYTES_PER_TOKEN_UNIT = 70
# Share of the budget the planner fills: XLA's own buffers, fragmentation and the rest of the step.
USABLE_SHARE = 0.85


def device_memory_bytes() -> int:
    """Memory of the first local device: the accelerator's limit, or the host's physical memory on CPU."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def tree_bytes(tree) -> int:
    """Bytes of the arrays (or ``ShapeDtypeStruct`` s) of a pytree."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def update_activation_bytes(model_config, tasks, rows_per_task: int, remat: str = "none", dtype="float32") -> int:
    """Rough peak bytes of the teacher-forced update's activations for ``rows_per_task`` rows of each task
    (S = the task's ``transcript_len``: its context, longer with stripped thinking; D hidden size, F MLP width, L
    layers).

    Without rematerialisation (``remat="none"``): ``rows x S x L x (D + F)`` times
    :data:`UPDATE_BYTES_PER_TOKEN_UNIT`. With it (any other policy), each layer keeps only its input and the
    backward pass recomputes one layer at a time: ``rows x S x (L x D x 2 x bytes of dtype + (4 D + 3 F) x 8)``
    (the layer inputs and residuals, plus one layer's float32 working set forward and backward); ``"nested"``
    keeps L / g + g layer inputs instead of L (g from :func:`~metarl_jax.models.transformer.remat_group_size`)."""
    tokens = sum(rows_per_task * t.transcript_len for t in tasks)
    d, f, layers = model_config.hidden_size, model_config.intermediate_size, model_config.num_layers
    if remat == "none":
        return int(tokens * layers * (d + f) * UPDATE_BYTES_PER_TOKEN_UNIT)
    if remat == "nested":
        group = remat_group_size(layers)
        layers = layers // group + group if group > 1 else layers
    return int(tokens * (layers * d * 2 * np.dtype(dtype).itemsize + (4 * d + 3 * f) * 8))


def kv_cache_bytes(model_config, rows: int, slots: int, dtype) -> int:
    """Bytes of a KV cache of ``rows`` rows x ``slots`` slots: layers x 2 (keys, values) x kv heads x head dim."""
    per_slot = model_config.num_layers * 2 * model_config.num_kv_heads * model_config.head_dim
    return int(rows * slots * per_slot * np.dtype(dtype).itemsize)


def rollout_bytes_per_row(model_config, task, cache_dtype) -> int:
    """Rough bytes one row of ``task``'s rollout holds: its KV cache (the context plus one turn's slack), once
    more for the copy a cache update may make, and its logits (a whole vocabulary under free decoding)."""
    slots = task.context_len + task.budget.chunk_len + task.budget.action_len + 64
    logits = model_config.vocab_size * 4 * 3  # float32 logits, their processed copy and the sampling noise
    return 2 * kv_cache_bytes(model_config, 1, slots, cache_dtype) + logits


@dataclasses.dataclass(frozen=True)
class MicroBatches:
    """Rows per micro-batch (each a divisor of its batch): ``rollout`` and ``update`` of the train step's
    per-env batch, ``evaluate`` of the held-out evaluation's; ``fits``: whether the estimate fits the budget."""

    rollout: int
    update: int
    evaluate: int
    fits: bool = True


def largest_rows(batch: int, bytes_per_row: int, available: float, multiple: int = 1) -> int:
    """The largest divisor of ``batch`` that is a multiple of ``multiple`` (the data-parallel devices, which
    each hold ``rows / multiple`` of them) whose rows fit in ``available`` bytes per device; the smallest such
    divisor when none fits."""
    options = [c for c in range(multiple, batch + 1, multiple) if batch % c == 0] or [batch]
    fitting = [c for c in options if c // multiple * bytes_per_row <= available]
    return max(fitting) if fitting else min(options)


def plan_micro_batches(model_config, train_tasks, eval_tasks, rows: int, eval_rows: int, *, budget_bytes: int,
                       state_bytes: int, cache_dtype, data_devices: int = 1, remat: str = "none") -> MicroBatches:
    """Rows per rollout, update and evaluation micro-batch that fit ``budget_bytes`` per device.

    ``state_bytes``: the train state's bytes per device (parameters, optimizer state, reference); the
    gradient and the update take about two parameter copies more, counted as one more state. ``rows``: the
    per-env train batch; ``eval_rows``: the per-env evaluation batch (played on one device); ``remat``: the
    model's rematerialisation policy (:func:`update_activation_bytes`)."""
    available = USABLE_SHARE * budget_bytes - 2 * state_bytes
    roll = max(rollout_bytes_per_row(model_config, t, cache_dtype) for t in train_tasks)
    upd = max(update_activation_bytes(model_config, [t], 1, remat, cache_dtype) for t in train_tasks)
    ev = max(rollout_bytes_per_row(model_config, t, cache_dtype) for t in eval_tasks)
    plan = MicroBatches(rollout=largest_rows(rows, roll, available, data_devices),
                        update=largest_rows(rows, upd, available, data_devices),
                        evaluate=largest_rows(eval_rows, ev, available))
    fits = (plan.rollout // data_devices * roll <= available and plan.update // data_devices * upd <= available
            and plan.evaluate * ev <= available)
    return dataclasses.replace(plan, fits=fits)


# An estimate this many times the device's memory is refused before compiling (config.ignore_memory_estimate
# overrides it); between 80% and this, it is a warning.
FAR_BEYOND = 4.0


class MemoryEstimateError(ValueError):
    """The step's or the evaluation's estimated memory is far beyond the device's (:func:`check_memory_estimate`)."""


def eval_bytes_per_trial(task) -> int:
    """Rough bytes one held-out trial's record keeps until the evaluation ends: its transcript's tokens and masks
    (int32 and float32 [S], three arrays) and its per-turn records (about ten arrays of [T] and the actions'
    tokens, log-probabilities and mask [T, A])."""
    turns, action = task.budget.turns, task.budget.action_len
    return 4 * (3 * task.transcript_len + turns * (10 + 3 * action))


def check_memory_estimate(config, model_config, train_tasks, eval_tasks, memory_bytes: int, devices: int = 1,
                          update_rows: int = 0) -> None:
    """Checks, before compiling, the update's activations (:func:`update_activation_bytes` of one update
    micro-batch, ``update_rows``; 0: the whole batch, split over ``devices``) and the held-out evaluation's records
    (``config.eval_trials`` x :func:`eval_bytes_per_trial` per env, on one device) against ``memory_bytes``.
    Above 80% of it: a warning naming the fields to lower. Above :data:`FAR_BEYOND` times it:
    :class:`MemoryEstimateError` (the first step or evaluation would die with RESOURCE_EXHAUSTED after minutes of
    compiling), unless ``config.ignore_memory_estimate``."""
    rows = config.num_tasks * config.group_size
    contexts = ", ".join(f"{t.name}: {t.context_len}" for t in train_tasks)
    needs = [(update_activation_bytes(model_config, train_tasks, update_rows or rows) / max(devices, 1),
              f"the update's activations need roughly {{need}} GiB per device, against {{have}} GiB. They grow with "
              f"the rows of an update micro-batch (now {update_rows or rows} of num_tasks x group_size = "
              f"{config.num_tasks} x {config.group_size} = {rows} rows per task; config.update_rows sets it) and "
              f"with each task's context_len ({contexts}); lower those (a context_len below the worst case "
              "truncates trials, as in ORBIT)"),
             eval_records_need(config, eval_tasks)]
    for need, text in needs:
        _judge(config, need, text, memory_bytes)


def eval_records_need(config, eval_tasks) -> tuple[int, str]:
    """``(bytes, explanation)``: what the held-out evaluation's records need (``config.eval_trials`` x
    :func:`eval_bytes_per_trial` per env), and the text of a warning or refusal about it."""
    return (config.eval_trials * sum(eval_bytes_per_trial(t) for t in eval_tasks),
            f"the held-out evaluation's records need roughly {{need}} GiB, against {{have}} GiB: lower "
            f"config.eval_trials (now {config.eval_trials:,} per env)")


def refuse_far_beyond(config, need: int, text: str, memory_bytes: int) -> None:
    """The refusal of :func:`check_memory_estimate` alone (no warning), for a check made early: before the
    evaluation's task keys exist, whose 8 bytes per trial would take minutes and gigabytes to draw for a
    ``config.eval_trials`` far beyond memory."""
    _judge(config, need, text, memory_bytes, warn=False)


def _judge(config, need: int, text: str, memory_bytes: int, warn: bool = True) -> None:
    message = text.format(need=f"{need / 2**30:,.1f}", have=f"{memory_bytes / 2**30:.1f}")
    if need > FAR_BEYOND * memory_bytes and not config.ignore_memory_estimate:
        raise MemoryEstimateError(f"refusing to compile: {message}. If the estimate is wrong for your device, set "
                                  "config.ignore_memory_estimate=True")
    if warn and need > 0.8 * memory_bytes:
        warnings.warn(f"the run may not fit in memory: {message}", stacklevel=4)
