"""LoRA adapters on the attention and MLP projections; only the adapters are trainable.

``add_lora(model, rank, alpha, rngs)`` gives every targeted :class:`~metarl_jax.models.transformer.Linear` two
:class:`LoRAParam` matrices ``a [in, rank]`` (random) and ``b [rank, out]`` (zero, so the model is unchanged
at first); the projection becomes ``x @ W + (alpha / rank) * (x @ a) @ b``. Train with
``nnx.split(model, LoRAParam, ...)`` or ``nnx.Optimizer(model, tx, wrt=LoRAParam)``: the base weights are
``nnx.Param`` and stay frozen.
"""

from __future__ import annotations

from flax import nnx

from metarl_jax.models.transformer import Linear

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


class LoRAParam(nnx.Variable):
    """A trainable adapter weight (a variable type of its own, so filters can select it)."""


def add_lora(model, rank: int, alpha: float, rngs: nnx.Rngs, targets=ATTENTION + MLP):
    """Adds adapters in place to the ``targets`` projections of every layer; returns the model."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    unknown = set(targets) - set(ATTENTION + MLP)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose from {ATTENTION + MLP}")
    for layer in model.layers:
        for name in targets:
            parent = layer.attn if name in ATTENTION else layer.mlp
            linear: Linear = getattr(parent, name)
            d_in, d_out = linear.kernel.shape
            dtype = linear.kernel[...].dtype
            linear.lora_a = nnx.data(LoRAParam(nnx.initializers.normal(1.0 / rank)(rngs.params(), (d_in, rank), dtype)))
            linear.lora_b = nnx.data(LoRAParam(nnx.initializers.zeros(rngs.params(), (rank, d_out), dtype)))
            linear.lora_scale = alpha / rank
    return model
