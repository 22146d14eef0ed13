"""The sampling engine of the rollout (:mod:`metarl_jax.agents.rollout`): prefilling a turn's forced tokens into
the KV cache in blocks, constrained decoding of an action's decision tokens, free decoding from the whole
vocabulary, the token scans that read what a response wrote (:func:`kept_start` for stripped thinking,
:func:`tag_pair_written` for the remark reward), and the strided row micro-batches (:func:`split_rows`).

Shapes: B rows, W tokens of a turn's chunk, N tokens of a free-decoded response.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from metarl_jax.agents.actions import constrained_step
from metarl_jax.agents.context import ContextBudget
from metarl_jax.envs.base import tree_select
from metarl_jax.models.sampling import sample


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the rollout draws tokens: the temperature and top-p of the sampled distribution (the learner scores
    the action tokens under the same ones)."""

    temperature: float = 1.0
    top_p: float = 1.0


PREFILL_BLOCKS = (8, 16, 32)  # tokens per prefill call: the least that holds an ordinary turn, at most 32
LONG_ROWS = 4  # prefill blocks after the first run on at most batch / LONG_ROWS rows at a time


def write_rows(buffer, values, start):
    """Row-wise ``buffer[b, start[b]:start[b] + n] = values[b]`` (buffer [B, S], values [B, n])."""
    return jax.vmap(lambda buf, val, s: jax.lax.dynamic_update_slice(buf, val.astype(buf.dtype), (s,)))(buffer, values, start)


def prefill_block(budget: ContextBudget, action_len: int, prefix_len: int, per_turn: int = 0, free: bool = False) -> int:
    """Tokens per prefill call: the least of :data:`PREFILL_BLOCKS` that holds an ordinary turn's chunk (the
    previous action's forced tail, ``per_turn`` chat tokens, ``budget.step_len`` of game text, the forced action
    prefix), else the largest. One call then covers such a turn; longer chunks (an opening, an episode
    boundary) take more calls on their rows only: one-word feedback prefills 8 tokens a turn instead of 32."""
    if not budget.step_len:  # unknown
        return PREFILL_BLOCKS[-1]
    ordinary = (0 if free else action_len - prefix_len) + per_turn + budget.step_len + prefix_len
    return next((b for b in PREFILL_BLOCKS if b >= ordinary), PREFILL_BLOCKS[-1])


def _prefill_blocks(model, cache, chunk, n, first: int, trips, block: int, *, rows=None):
    """Writes blocks ``first, first + 1, ...`` (``trips`` of them, ``block`` tokens each) of ``chunk``
    [B, W] into the cache from ``cache.length`` on; tokens at or past ``n[b]`` are padding (never attended to,
    overwritten later). ``rows`` (int32[B], distinct): the chunk's rows are these cache rows (None: all, in
    order). Returns ``(cache, hidden [B, D] of each row's token ``n - 1`` if written here, else 0)``.
    ``cache.length`` is left at the start (the caller sets it)."""
    batch = chunk.shape[0]
    start = cache.length if rows is None else cache.length[rows]

    def body(i, carry):
        cache, last = carry
        off = (first + i) * block
        toks = jax.lax.dynamic_slice_in_dim(chunk, off, block, axis=1)
        idx = off + jnp.arange(block)[None, :]
        cache = cache.replace(length=start + off if rows is None else cache.length.at[rows].set(start + off))
        hidden, cache = model.hidden_states(toks, start[:, None] + idx, cache, idx < n[:, None],
                                            last_at=jnp.clip(n - 1 - off, 0, block - 1), rows=rows)
        here = (n - 1 >= off) & (n - 1 < off + block)
        last = jnp.where(here[:, None], hidden[:, 0], last)
        return cache, last

    last = jnp.zeros((batch, model.config.hidden_size), jnp.float32)
    cache, last = jax.lax.fori_loop(0, trips, body, (cache, last))
    return cache.replace(length=start if rows is None else cache.length.at[rows].set(start)), last


def prefill(model, cache, chunk, n, block: int):
    """Writes the first ``n[b]`` tokens of ``chunk`` [B, W] into the cache at ``cache.length``.

    Every row runs the first ``block`` tokens (most observations fit). The few longer ones (a new
    episode's opening text) then run their remaining blocks in groups of ``ceil(B / LONG_ROWS)`` rows, the
    longest first, each group on its own cache rows in place (``hidden_states(..., rows=)``), so short rows do
    not pay for the longest row's padding. Returns ``(cache, hidden [B, D] of each row's last written token)``.
    """
    batch, width = chunk.shape
    chunk = jnp.pad(chunk, ((0, 0), (0, -width % block)))
    start = cache.length
    cache, last = _prefill_blocks(model, cache, chunk, n, 0, (jnp.max(n) > 0).astype(jnp.int32), block)
    if chunk.shape[1] > block:
        group = -(-batch // LONG_ROWS)

        def pending(carry):
            return jnp.any(carry[2])

        def run_group(carry):
            cache, last, todo = carry
            _, pick = jax.lax.top_k(todo.astype(jnp.int32) * (n + 1), group)  # rows with blocks left first
            sub_n = jnp.where(todo[pick], n[pick], 0)
            cache, sub_last = _prefill_blocks(model, cache, chunk[pick], sub_n, 1, (jnp.max(sub_n) + block - 1) // block - 1,
                                              block, rows=pick)
            last = last.at[pick].set(jnp.where((sub_n > block)[:, None], sub_last, last[pick]))
            return cache, last, todo.at[pick].set(False)

        cache, last, _ = jax.lax.while_loop(pending, run_group, (cache, last, n > block))
    return cache.replace(length=start + n), last


def decode_constrained(model, table, cache, last, dstate, live, row_keys, sampling: Sampling):
    """Constrained decoding: samples the ``table.decide_len`` decision tokens of an action, each from the
    actions' K tokens the trie allows (:func:`~metarl_jax.agents.actions.constrained_step`), and writes all but
    the last to the cache (the action's remaining tokens are forced: the next turn prefills them).

    ``last``: float[B, D] the hidden state of each row's last token; ``dstate``: the trie's state after the
    forced action prefix; ``live``: bool[B] the rows that take the turn; ``row_keys`` as in :func:`decode_free`.
    A token is sampled only where a real choice remains. Returns ``(cache, action int32[B], logp float32[B, L])``
    with ``logp`` the sampled tokens' log-probabilities at their action positions (0 for forced tokens).
    """
    batch, pre, decide = live.shape[0], table.prefix_len, table.decide_len
    columns = jnp.asarray(table.vocab, jnp.int32)
    select_rows = jax.vmap(tree_select)  # per row: the first tree where the flag is set, else the second
    logp = jnp.zeros((batch, table.max_len), jnp.float32)
    logits = model.logits(last, columns)  # the actions' K tokens only
    for i in range(decide):
        token, lp, new = jax.vmap(lambda d, l, k: constrained_step(
            table, d, l, k, sampling.temperature, sampling.top_p, on_columns=True))(dstate, logits, row_keys(i))
        chosen = live & ~dstate.done & (dstate.alive.sum(-1) > 1)  # a real choice remains
        logp = logp.at[:, pre + i].set(jnp.where(chosen, lp, 0.0))
        dstate = select_rows(chosen, new, dstate)
        if i + 1 < decide:
            pos = cache.length
            hidden, cache = model.hidden_states(token[:, None], pos[:, None], cache, chosen[:, None])
            cache = cache.replace(length=pos + chosen)
            logits = model.logits(hidden[:, 0], columns)
    return cache, jnp.argmax(dstate.alive, axis=-1).astype(jnp.int32), logp  # determined: one action is alive


def decode_free(model, table, cache, logits, live, row_keys, num_tokens: int, sampling: Sampling, *,
                end_of_turn: int = -1, caps=None):
    """Free decoding: up to ``num_tokens`` tokens from the whole vocabulary, each written to the cache.

    Two ways a turn ends:

    * ``end_of_turn`` = -1: a row stops as soon as its last tokens spell an action (its ``\\boxed{...}``);
    * ``end_of_turn`` a token id (ORBIT's mode): a row stops after writing that token; its action is the last
      action text it wrote, and a box opened after that action and never completed makes the turn a format
      error (the last ``\\boxed{}`` of the response is the one parsed).

    Rows without an action choose -1, which the env treats as a format error. ``caps`` (int32[B], optional)
    limits each row's tokens below ``num_tokens`` (the context's remaining room). The loop ends when every row
    has stopped.

    ``row_keys(key) -> key[B]``: the rows' keys of a draw (see :func:`metarl_jax.agents.rollout.rollout`).

    Returns ``(cache, action int32[B], tokens int32[B, N], logp float32[B, N], emitted bool[B, N], ended
    bool[B])``; ``ended``: the row wrote ``end_of_turn``.
    """
    batch, width = logits.shape[0], table.max_len
    caps = jnp.full((batch,), num_tokens, jnp.int32) if caps is None else jnp.minimum(caps, num_tokens)
    last_box = end_of_turn >= 0

    def running(carry):
        i, done = carry[0], carry[4]
        return (i < num_tokens) & (live & ~done & (i < caps)).any()

    def step(carry):
        i, cache, logits, window, done, action, opened, tokens, logp, emitted = carry
        active = live & ~done & (i < caps)
        token, lp = jax.vmap(lambda k, l: sample(k, l, sampling.temperature, sampling.top_p))(row_keys(i), logits)
        token = jnp.where(active, token, table.pad_id)
        pos = cache.length
        hidden, cache = model.hidden_states(token[:, None], pos[:, None], cache, active[:, None])
        cache = cache.replace(length=pos + active)
        window = jnp.where(active[:, None], jnp.concatenate([window[:, 1:], token[:, None]], axis=1), window)
        matched, which = table.match_suffix(window)
        hit = active & matched
        action = jnp.where(hit, which, action)
        if last_box:
            opened = jnp.where(active, (opened | table.opens_box(window)) & ~matched, opened)
            done = done | (active & (token == end_of_turn))
        else:
            done = done | hit
        column = lambda buf, x: jax.lax.dynamic_update_index_in_dim(buf, x, i, axis=1)
        return (i + 1, cache, model.logits(hidden[:, 0]), window, done, action, opened,
                column(tokens, token), column(logp, jnp.where(active, lp, 0.0)), column(emitted, active))

    init = (jnp.zeros((), jnp.int32), cache, logits, jnp.full((batch, width), -1, jnp.int32), jnp.zeros((batch,), bool),
            jnp.full((batch,), -1, jnp.int32), jnp.zeros((batch,), bool),
            jnp.full((batch, num_tokens), table.pad_id, jnp.int32), jnp.zeros((batch, num_tokens), jnp.float32),
            jnp.zeros((batch, num_tokens), bool))
    _, cache, _, _, done, action, opened, tokens, logp, emitted = jax.lax.while_loop(running, step, init)
    ended = done if last_box else jnp.zeros_like(done)
    return cache, jnp.where(opened, -1, action), tokens, logp, emitted, ended


def kept_start(tokens, emitted, think_end: int, skip: tuple = ()) -> jax.Array:
    """int32[B]: where the part of each response that stays in the context starts when earlier thinking is
    stripped: after the response's last ``think_end`` token and the ``skip`` tokens (newlines) right after it;
    -1 for a response without ``think_end`` (it stays whole). ``tokens`` int32[B, N], written where ``emitted``
    bool[B, N] (a prefix of each row)."""
    n = tokens.shape[1]
    index = jnp.arange(n)[None, :]
    last = jnp.max(jnp.where((tokens == think_end) & emitted, index, -1), axis=1)
    skipped = jnp.isin(tokens, jnp.asarray(skip, jnp.int32)) & emitted if skip else jnp.zeros(tokens.shape, bool)
    first = jnp.min(jnp.where((index > last[:, None]) & ~skipped, index, n), axis=1)
    return jnp.where(last >= 0, first, -1).astype(jnp.int32)


def tag_pair_written(tokens, emitted, opens, closes) -> jax.Array:
    """bool[B]: each row's written tokens (``tokens`` int32[B, N] where ``emitted`` bool[B, N]) hold an opening
    tag and, starting after it ends, a closing one (e.g. ``<remark> ... </remark>``). ``opens``, ``closes``: the
    tags' token sequences, each a tuple of alternatives (a tag after a space may tokenize differently)."""
    n = tokens.shape[1]
    index = jnp.arange(n)

    def ends_at(ids):  # bool[B, N]: the sequence ``ids`` ends at token i
        hit = jnp.ones(tokens.shape, bool)
        for j, token in enumerate(ids):
            back = len(ids) - 1 - j
            hit &= jnp.pad((tokens == token) & emitted, ((0, 0), (back, 0)))[:, :n]
        return hit

    first_open_end = jnp.min(jnp.stack([jnp.where(ends_at(ids), index, n) for ids in opens]), axis=(0, 2))
    last_close_start = jnp.max(jnp.stack([jnp.where(ends_at(ids), index - len(ids) + 1, -1) for ids in closes]),
                               axis=(0, 2))
    return last_close_start > first_open_end


def split_rows(tree, chunks: int):
    """Leaves [B, ...] -> [chunks, B / chunks, ...], chunk i holding rows ``i, i + chunks, i + 2 chunks, ...``.

    Strided, not contiguous: a batch sharded by contiguous row blocks over a mesh's data axis then gives every
    chunk an equal share of each device's rows, so the chunks run one after the other on all devices at once
    without moving rows. None leaves pass through."""
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // chunks, chunks, *x.shape[1:]), 0, 1), tree)


def merge_rows(tree):
    """The inverse of :func:`split_rows`: leaves [chunks, C, ...] -> [chunks * C, ...] in the original row order."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:]), tree)
