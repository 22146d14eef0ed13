"""LoRA adapters on the attention and MLP projections; only the adapters are trainable.

``add_lora(model, rank, alpha, rngs)`` gives every targeted :class:`~metarl_jax.models.transformer.Linear` of
the stacked decoder layers two :class:`LoRAParam` stacks ``a [L, in, rank]`` (random) and ``b [L, rank, out]``
(zero, so the model is unchanged at first), one adapter per layer; layer l's projection becomes
``x @ W[l] + (alpha / rank) * (x @ a[l]) @ b[l]``. Train with
``nnx.split(model, LoRAParam, ...)`` or ``nnx.Optimizer(model, tx, wrt=LoRAParam)``: the base weights are
``nnx.Param`` and stay frozen.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from metarl_jax.models.transformer import Linear

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


class LoRAParam(nnx.Variable):
    """A trainable adapter weight (a variable type of its own, so filters can select it)."""


def add_lora(model, rank: int, alpha: float, rngs: nnx.Rngs, targets=ATTENTION + MLP):
    """Adds adapters in place to the ``targets`` projections of every layer; returns the model. Each layer's
    ``a`` is an independent draw. The adapters are float32 whatever the base's storage dtype."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    unknown = set(targets) - set(ATTENTION + MLP)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose from {ATTENTION + MLP}")
    layers = model.layers
    init = nnx.initializers.normal(1.0 / rank)
    for name in targets:
        linear: Linear = getattr(layers.attn if name in ATTENTION else layers.mlp, name)
        num_layers, d_in, d_out = linear.kernel.shape
        dtype = jnp.float32  # what trains stays in float32 (a frozen base may be stored in bfloat16)
        a = jnp.stack([init(rngs.params(), (d_in, rank), dtype) for _ in range(num_layers)])
        linear.lora_a = nnx.data(LoRAParam(a))
        linear.lora_b = nnx.data(LoRAParam(jnp.zeros((num_layers, rank, d_out), dtype)))
        linear.lora_scale = alpha / rank
    return model
