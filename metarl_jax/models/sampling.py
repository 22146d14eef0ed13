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


# Vocabulary columns per chunk of :func:`chunked_logp_entropy`: at most VOCAB_CHUNK, and few enough that a
# chunk's float32 logits [N, C], the largest buffer it holds, stay within CHUNK_LOGITS_BYTES (free decoding's
# update scores N = rows x turns x tokens positions: 8 x 30 x 1,024 positions at 8,192 columns would be 8 GB).
VOCAB_CHUNK = 8192
CHUNK_LOGITS_BYTES = 2**30


def vocab_chunk_for(positions: int, vocab_size: int) -> int:
    """Columns per vocabulary chunk for ``positions`` scored positions (see :data:`CHUNK_LOGITS_BYTES`): a power
    of two between 128 and :data:`VOCAB_CHUNK`."""
    chunk = VOCAB_CHUNK
    while chunk > 128 and positions * chunk * 4 > CHUNK_LOGITS_BYTES:
        chunk //= 2
    return min(chunk, vocab_size)


def chunked_logp_entropy(project, hidden, tokens, vocab_size: int, temperature: float = 1.0,
                         chunk: int = VOCAB_CHUNK):
    """Log-probability of ``tokens`` and entropy of ``softmax(logits / temperature)`` over the whole vocabulary,
    computed over column chunks of the vocabulary, so that no ``[..., V]`` array is ever materialised.

    Args:
      project: ``project(hidden, columns int32[C]) -> float32[..., C]``, the logits of those vocabulary columns
        (``Transformer.logits(hidden, vocab=columns)``).
      hidden: final hidden states [..., D].
      tokens: int32[...] the scored token at each position.
      vocab_size: V; columns past V in the last chunk are masked out.
      temperature: > 0 (greedy and top-p need the whole sorted distribution: use :func:`process_logits`).
      chunk: columns per chunk.

    Returns ``(logp float32[...], entropy float32[...])``, equal to :func:`process_logits` with ``top_p=1``
    followed by a gather and ``-sum(p log p)``. One pass keeps a running maximum ``m``, the sum ``s`` of
    ``exp(z - m)`` and the sum ``u`` of ``exp(z - m) * z`` over the scaled logits ``z``; then
    ``log Z = m + log s`` and the entropy is ``log Z - u / s``. Each chunk is rematerialised in the backward
    pass (``jax.checkpoint``), so the gradient also holds one chunk's logits at a time.
    """
    if temperature <= 0:
        raise ValueError(f"chunked_logp_entropy needs temperature > 0, got {temperature}")
    chunk = int(min(chunk, vocab_size))
    n_chunks = -(-vocab_size // chunk)
    tokens = jnp.asarray(tokens, jnp.int32)
    lead = tokens.shape
    zeros = jnp.zeros(lead, jnp.float32)

    @jax.checkpoint
    def body(carry, start):
        top, total, weighted, picked = carry
        columns = start + jnp.arange(chunk, dtype=jnp.int32)
        real = columns < vocab_size
        z = project(hidden, jnp.minimum(columns, vocab_size - 1)).astype(jnp.float32) / temperature
        z = jnp.where(real, z, NEG_INF)
        new_top = jax.lax.stop_gradient(jnp.maximum(top, z.max(axis=-1)))  # the shift is a constant: exact grads
        rescale = jnp.exp(top - new_top)
        e = jnp.exp(z - new_top[..., None])
        total = total * rescale + e.sum(axis=-1)
        weighted = weighted * rescale + jnp.where(real, e * z, 0.0).sum(axis=-1)
        here = (tokens >= start) & (tokens < start + chunk)
        at = jnp.clip(tokens - start, 0, chunk - 1)
        picked = jnp.where(here, jnp.take_along_axis(z, at[..., None], axis=-1)[..., 0], picked)
        return (new_top, total, weighted, picked), None

    init = (jnp.full(lead, NEG_INF, jnp.float32), zeros, zeros, zeros)
    starts = jnp.arange(n_chunks, dtype=jnp.int32) * chunk
    (top, total, weighted, picked), _ = jax.lax.scan(body, init, starts)
    log_z = top + jnp.log(total)
    return picked - log_z, log_z - weighted / total
