"""Sampling utilities: temperature, top-p (nucleus) and logit masks for constrained decoding.

All functions work on logits of any leading shape ``[..., V]`` and run under jit/vmap/scan.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def process_logits(logits, temperature: float = 1.0, top_p: float = 1.0, mask=None):
    """The log-probabilities ``float32[..., V]`` of the sampling distribution.

    Args:
      temperature: > 0 divides the logits; 0 means greedy (all mass on the argmax).
      top_p: keep the smallest set of most likely tokens whose mass reaches ``top_p`` (1.0 keeps all).
      mask: bool[..., V], tokens allowed (constrained decoding); disallowed ones get probability 0.
    """
    logits = logits.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, NEG_INF)
    if temperature == 0:
        best = jnp.argmax(logits, axis=-1)
        return jnp.where(jax.nn.one_hot(best, logits.shape[-1], dtype=bool), 0.0, NEG_INF)
    logp = jax.nn.log_softmax(logits / temperature, axis=-1)
    if top_p < 1.0:
        sorted_logp = jnp.sort(logp, axis=-1)[..., ::-1]
        mass_before = jnp.cumsum(jnp.exp(sorted_logp), axis=-1) - jnp.exp(sorted_logp)
        # The smallest kept log-probability: the last sorted token whose preceding mass is below top_p.
        kept = mass_before < top_p
        threshold = jnp.min(jnp.where(kept, sorted_logp, jnp.inf), axis=-1, keepdims=True)
        logp = jnp.where(logp >= threshold, logp, NEG_INF)
        logp = jax.nn.log_softmax(logp, axis=-1)
    if mask is not None:
        logp = jnp.where(mask, logp, NEG_INF)
    return logp


def sample(key, logits, temperature: float = 1.0, top_p: float = 1.0, mask=None):
    """Samples tokens. Returns ``(tokens int32[...], log_probs float32[...])`` under the processed distribution."""
    logp = process_logits(logits, temperature, top_p, mask)
    tokens = jax.random.categorical(key, logp, axis=-1).astype(jnp.int32)
    return tokens, jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
