"""Multi-episode rollouts of a transformer policy, as one ``lax.scan`` over the turns of a trial.

Each turn: render the observation tokens (codec), prefill them into the KV cache, decode one action with
constrained decoding (:mod:`metarl_jax.agents.actions`), step the :class:`~metarl_jax.envs.MultiEpisode` env.
Everything is batched (the model takes a batch; env functions are vmapped), so the whole rollout is one XLA
program.

The context is *compact*: each row's real tokens are written contiguously from slot 0 (an observation's
padding is overwritten by what follows), so positions equal slot indices and a context of ``context_len``
tokens holds the transcript (see :mod:`metarl_jax.agents.context` for the worst case). As in ORBIT, a row whose
context would overflow stops: it takes no further turns (``truncated``); its rewards are those it earned, and the
learner decides what a truncated trial returns (``GRPOHyper.truncated_return``; ORBIT's is 0).

The returned :class:`Transcript` holds the token stream, the action tokens per turn with their slots, the
sampler's log-probabilities and the per-turn env outcomes. :func:`teacher_forced_logp` recomputes the
log-probabilities from ``tokens`` in one causal forward; ``tests/test_rollout.py`` checks they agree.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

from metarl_jax.agents.actions import constrained_step
from metarl_jax.agents.context import ContextBudget
from metarl_jax.envs.base import tree_select
from metarl_jax.models.sampling import chunked_logp_entropy, process_logits, sample, vocab_chunk_for
from metarl_jax.models.transformer import VISIBLE, init_cache
from metarl_jax.text.chat import ChatWrap


@struct.dataclass
class Transcript:
    """A batch of rollouts: B rows, S = ``context_len`` token slots, T turns, L = longest action in tokens.

    Attributes:
      tokens: int32[B, S] the context, real tokens first (``length`` of them), then padding.
      length: int32[B] real tokens per row.
      action_tokens: int32[B, T, L]; action_mask: bool[B, T, L] the sampled tokens (False after an action
        ends and on turns not taken).
      action_start: int32[B, T] the slot of each turn's first action token.
      logp: float32[B, T, L] the sampler's log-probability of each action token (0 where masked).
      valid: bool[B, T, A] the actions the decoder could choose at each turn.
      actions, rewards, episode_index, episode_done, success, reflection: [B, T] per turn, from the env.
      taken: bool[B, T] the turn was played (the trial was not over and the context had room).
      truncated: bool[B] the context filled up before the trial's step cap.
      visible_until: int32[B, S] or None. With earlier thinking stripped from the context (:func:`rollout`'s
        ``think_end``), ``tokens`` is the *stream* of everything written, longer than the context: a stripped
        response stays at its slots, followed by the copy of its kept part that later turns saw instead. Slot j is
        seen only by the slots before ``visible_until[b, j]`` (``VISIBLE`` for the slots never hidden); a
        response's slots are hidden from its copy on. None: nothing is hidden (the stream is the context).
    """

    tokens: jax.Array
    length: jax.Array
    action_tokens: jax.Array
    action_mask: jax.Array
    action_start: jax.Array
    logp: jax.Array
    valid: jax.Array
    actions: jax.Array
    rewards: jax.Array
    episode_index: jax.Array
    episode_done: jax.Array
    success: jax.Array
    reflection: jax.Array
    taken: jax.Array
    truncated: jax.Array
    visible_until: jax.Array | None = None

    @property
    def token_mask(self) -> jax.Array:
        """bool[B, S]: the real tokens."""
        return jnp.arange(self.tokens.shape[1])[None, :] < self.length[:, None]

    @property
    def positions(self) -> jax.Array:
        """int32[B, S]: RoPE positions: slot indices (the context is compact), less the slots hidden before a
        slot (each token sits where the context the model saw put it)."""
        batch, slots = self.tokens.shape
        index = jnp.broadcast_to(jnp.arange(slots, dtype=jnp.int32), (batch, slots))
        if self.visible_until is None:
            return index
        # hidden[b, i]: the slots j with visible_until[b, j] <= i, counted by where they vanish
        vanish = jnp.zeros((batch, slots + 1), jnp.int32).at[jnp.arange(batch)[:, None],
                                                              jnp.minimum(self.visible_until, slots)].add(1)
        return index - jnp.cumsum(vanish[:, :slots], axis=1)

    @property
    def context_length(self) -> jax.Array:
        """int32[B]: the tokens each row's context held when its last token was written (``length`` less the
        slots hidden before it)."""
        if self.visible_until is None:
            return self.length
        last = jnp.take_along_axis(self.positions, jnp.maximum(self.length - 1, 0)[:, None], axis=1)[:, 0]
        return jnp.where(self.length > 0, last + 1, 0)


PREFILL_BLOCKS = (8, 16, 32)  # tokens per prefill call: the least that holds an ordinary turn, at most 32
LONG_ROWS = 4  # prefill blocks after the first run on at most batch / LONG_ROWS rows at a time


def _write(buffer, values, start):
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


def _prefill_blocks(model, cache, chunk, n, first: int, trips, block: int, rows=None):
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


def _prefill(model, cache, chunk, n, block: int):
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


def _decode_free(model, table, cache, logits, live, row_keys, num_tokens: int, temperature: float, top_p: float,
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

    ``row_keys(key) -> key[B]``: the rows' keys of a draw (see :func:`rollout`).

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
        token, lp = jax.vmap(lambda k, l: sample(k, l, temperature, top_p))(row_keys(i), logits)
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


def rollout(graphdef, model_state, env, env_params, codec, table, key, trial_states, budget: ContextBudget,
            context_len: int, temperature: float = 1.0, top_p: float = 1.0, free_tokens: int = 0,
            chat: ChatWrap | None = None, rows_per_chunk: int = 0, row_context_len=None, constrain=None, *,
            end_of_turn: int = -1, remaining_budget: bool = False, remark_tags: tuple = (),
            remark_reward: float = 0.0, think_end: int = -1, think_skip: tuple = ()) -> Transcript:
    """Plays ``budget.turns`` turns from ``trial_states`` (batched [B]); returns a :class:`Transcript`.

    ``context_len`` is the context size in tokens; rows that would overflow it stop early (``truncated``).
    ``row_context_len`` (int32[B], each at most ``context_len``) gives each row a smaller limit of its own (a
    :class:`~metarl_jax.envs.mixture.GameMixture`'s rows, each with its game's context).
    ``free_tokens`` > 0 switches to free decoding (:func:`_decode_free`, ORBIT's mode: the model writes up to
    that many tokens and its ``\\boxed{...}`` is parsed); 0 is constrained decoding. ``chat`` wraps observations
    and actions in the tokenizer's chat turns (:mod:`metarl_jax.text.chat`). Under free decoding,
    ``end_of_turn`` (a token id; -1: off) ends a turn at that token and parses the last action text written
    (ORBIT's mode; else a turn ends at its first action text), and ``remaining_budget`` lets a turn write up to
    the context's remaining room (at most ``free_tokens``; ORBIT's per-turn budget): a response that the full
    context cuts off before its end-of-turn token earns nothing and stops the trial (``truncated``).
    ``remark_tags`` (the token sequences of the opening and the closing remark tag, each a tuple of
    alternatives; see :func:`tag_pair_written`) and ``remark_reward``: under free
    decoding, a reflection turn whose text holds an opening tag and, after it, a closing one earns
    ``remark_reward`` (the LaMer variant in ORBIT's repository pays 1.0 for a valid ``<remark>``).
    ``think_end`` (a token id, free decoding; -1: off) strips earlier thinking from the context, as rLLM does
    with ``accumulate_reasoning=False`` and as Qwen3's chat template renders earlier turns: once a turn ends,
    its response is hidden from the context and replaced by what follows its last ``think_end`` token (the
    leading ``think_skip`` tokens, newlines, left out), prefilled afresh where the response began; a response
    without the token stays whole. The context then holds the stripped history, so stripped thinking frees its
    room; the transcript keeps the whole stream (see :class:`Transcript`'s ``visible_until``), up to
    ``budget.turns * free_tokens`` slots longer than ``context_len``.

    Forced tokens cost no decode call: a turn prefills the previous action's forced tail, the observation and
    the forced action prefix (``table.prefix_len`` tokens) in one go, then samples at most
    ``table.decide_len`` tokens; the chosen action's remaining tokens are forced and wait for the next
    prefill. Their log-probability is exactly 0 under constrained decoding.

    ``rows_per_chunk`` (a divisor of B; 0: all rows) plays the rows in micro-batches of that many, one after
    the other inside the same program (``lax.map``; chunks are strided, see :func:`split_rows`), each with a KV
    cache of its own rows only: the cache's memory is that of one micro-batch. Every random draw of a row comes from the row's own key (the draw's
    key split over the B rows), so the result equals the unchunked rollout's with the same ``key``.
    ``constrain(tree, axis=0)`` (optional, e.g. :func:`metarl_jax.sharding.row_constraint`) pins a micro-batch's
    states and KV cache to the mesh's data axis.
    """
    batch = trial_states.total_steps.shape[0]
    limit = jnp.full((batch,), context_len, jnp.int32) if row_context_len is None else jnp.asarray(row_context_len, jnp.int32)
    play = functools.partial(_rollout_rows, graphdef, model_state, env, env_params, codec, table, key,
                             budget=budget, context_len=context_len, temperature=temperature, top_p=top_p,
                             free_tokens=free_tokens, chat=chat, total_rows=batch,
                             constrain=constrain or (lambda tree, axis=0: tree), end_of_turn=end_of_turn,
                             remaining_budget=remaining_budget, remark_tags=remark_tags, remark_reward=remark_reward,
                             think_end=think_end, think_skip=tuple(think_skip))
    if not rows_per_chunk or rows_per_chunk >= batch:
        return play(trial_states, limit, 0)
    if batch % rows_per_chunk:
        raise ValueError(f"rows_per_chunk={rows_per_chunk} does not divide the batch of {batch} rows")
    chunks = batch // rows_per_chunk
    out = jax.lax.map(lambda a: play(*a), (*split_rows((trial_states, limit), chunks), jnp.arange(chunks, dtype=jnp.int32)))
    return merge_rows(out)


def split_rows(tree, chunks: int):
    """Leaves [B, ...] -> [chunks, B / chunks, ...], chunk i holding rows ``i, i + chunks, i + 2 chunks, ...``.

    Strided, not contiguous: a batch sharded by contiguous row blocks over a mesh's data axis then gives every
    chunk an equal share of each device's rows, so the chunks run one after the other on all devices at once
    without moving rows. None leaves pass through."""
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // chunks, chunks, *x.shape[1:]), 0, 1), tree)


def merge_rows(tree):
    """The inverse of :func:`split_rows`: leaves [chunks, C, ...] -> [chunks * C, ...] in the original row order."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:]), tree)


def _rollout_rows(graphdef, model_state, env, env_params, codec, table, key, trial_states, limit, chunk_index, *,
                  budget: ContextBudget, context_len: int, temperature: float, top_p: float, free_tokens: int,
                  chat: ChatWrap | None, total_rows: int, constrain, end_of_turn: int,
                  remaining_budget: bool, remark_tags: tuple, remark_reward: float, think_end: int,
                  think_skip: tuple) -> Transcript:
    """:func:`rollout` of chunk ``chunk_index`` of a batch of ``total_rows`` rows split by :func:`split_rows`
    (``trial_states`` and ``limit``, int32[B] the rows' context limits, hold its B rows; with B = ``total_rows``
    the chunk is the whole batch)."""
    model = nnx.merge(graphdef, model_state)
    batch = trial_states.total_steps.shape[0]

    def row_keys(k):
        """key[B]: this call's rows of ``k`` split over the whole batch."""
        keys = jax.random.split(k, total_rows)
        if batch == total_rows:
            return keys
        return jax.lax.dynamic_index_in_dim(split_rows(keys, total_rows // batch), chunk_index, axis=0,
                                             keepdims=False)

    free = free_tokens > 0
    chunk, decide = budget.chunk_len, table.decide_len
    act_len, pre = (free_tokens, 0) if free else (table.max_len, table.prefix_len)
    if budget.action_len != act_len:
        raise ValueError(f"the context budget counts {budget.action_len} action tokens, the decoder writes {act_len}")
    chat = chat or ChatWrap()
    width = act_len + chat.per_turn + chunk + pre  # pending tail, chat end, chat open, observation, chat close, prefix
    block = prefill_block(budget, act_len, pre, chat.per_turn, free)
    room = context_len + width + block  # slack: block writes never clip at the end
    trial_states = constrain(trial_states)
    cache = init_cache(model.config, batch, room, model.dtype)
    cache = cache.replace(k=constrain(cache.k, 1), v=constrain(cache.v, 1), valid=constrain(cache.valid),
                          length=constrain(cache.length))
    step_env = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))
    render = jax.vmap(codec.render_tokens)
    padded_actions = jnp.pad(table.tokens, ((0, 0), (0, act_len)), constant_values=table.pad_id)
    prefix = jnp.broadcast_to(table.tokens[0, :pre], (batch, pre))
    positions = jnp.arange(act_len)
    columns = jnp.asarray(table.vocab, jnp.int32)
    select_rows = jax.vmap(tree_select)  # per row: the first tree where the flag is set, else the second
    wrap_open, wrap_close, wrap_end = (jnp.broadcast_to(jnp.asarray(w, jnp.int32), (batch, len(w)))
                                       for w in (chat.open, chat.close, chat.end))
    # Free decoding carries the chat end of the previous action as its pending tail: whole, or without its first
    # token when the model wrote that itself (the end-of-turn token).
    end_tail = jnp.pad(jnp.asarray(chat.end, jnp.int32), (0, max(act_len - len(chat.end), 0) + 1),
                       constant_values=table.pad_id)
    end_whole, end_rest = (jnp.broadcast_to(e[:act_len], (batch, act_len)) for e in (end_tail, end_tail[1:]))
    if free and chat.end and end_of_turn >= 0 and chat.end[0] != end_of_turn:
        raise ValueError(f"end_of_turn={end_of_turn} is not the chat end's first token {chat.end[0]}")
    if free and len(chat.end) > act_len:
        raise ValueError(f"free_tokens={act_len} cannot hold the chat end's {len(chat.end)} tokens")
    strip = think_end >= 0
    if strip and not free:
        raise ValueError("stripping thinking (think_end) needs free decoding (free_tokens > 0)")
    # Stripping: the pending tail is a response's kept part then the chat end; the stream grows by what is hidden.
    tail_len = act_len + (len(chat.end) if strip else 0)
    stream_room = room + (budget.turns * act_len if strip else 0)
    slots = jnp.arange(room)

    def turn(carry, t):
        states, cache, tokens, pending, pending_n, end, stopped, stream = carry
        hidden = stream[0] if strip else 0  # int32[B]: slots hidden so far (stream slot = cache slot + hidden)
        k_dec, k_env = jax.random.split(jax.random.fold_in(key, t))
        obs, n = render(states)
        obs = obs[:, :chunk]  # real tokens come first and never exceed the chunk bound
        start = cache.length  # where the pending tail goes; the rest of the chunk follows it
        end_n = jnp.where(t > 0, 0 if free else len(chat.end), 0)  # the chat end of the previous action
        # The chunk: pending tail | chat end | chat open | observation | chat close | action prefix.
        parts = [(pending, pending_n), (wrap_end, end_n), (wrap_open, len(chat.open)), (obs, n),
                 (wrap_close, len(chat.close)), (prefix, pre)]
        m = sum(k for _, k in parts)
        fits = start + m - pre + (1 if free and remaining_budget else act_len) <= limit
        live = ~states.trial_done & ~stopped & fits
        truncated_now = ~states.trial_done & ~stopped & ~fits
        buf = jnp.full((batch, width), codec.pad_id, jnp.int32)
        offset = jnp.zeros_like(n)
        for values, k in parts:
            if values.shape[1]:
                mask = jnp.arange(values.shape[1])[None, :] < jnp.reshape(k, (-1, 1))
                buf = _write(buf, jnp.where(mask, values, codec.pad_id), offset)
            offset = offset + k
        m = jnp.where(live, m, 0)
        scratch = stream_room - width  # past the context: where rows that take no turn write their padding
        tokens = _write(tokens, jnp.where(live[:, None], buf, codec.pad_id), jnp.where(live, start + hidden, scratch))
        cache, last = _prefill(model, cache, buf, m, block)
        action_start = cache.length - pre
        valid = jax.vmap(env.valid_actions)(states)
        if free:
            room_left = limit - action_start if remaining_budget else None
            cache, action, action_tokens, logp, emitted, ended = _decode_free(
                model, table, cache, model.logits(last), live, lambda i: row_keys(jax.random.fold_in(k_dec, i)),
                free_tokens, temperature, top_p, end_of_turn, room_left)
            length = emitted.sum(axis=1).astype(jnp.int32)
            shown = action_start + hidden  # the response's first slot in the stream
            tokens = _write(tokens, action_tokens, jnp.where(live, shown, scratch))
            overflow = jnp.zeros_like(live)
            if remaining_budget:  # the context filled up before the response ended: no reward, the trial stops
                overflow = live & ~ended & (length >= room_left) & (room_left < free_tokens)
            bonus = jnp.zeros((batch,), jnp.float32)
            if remark_reward and remark_tags:
                bonus = remark_reward * tag_pair_written(action_tokens, emitted, *remark_tags).astype(jnp.float32)
            pending = jnp.where(ended[:, None], end_rest, end_whole)
            pending_n = jnp.where(live, len(chat.end) - (ended & bool(chat.end)).astype(jnp.int32), 0)
            if strip:
                first = kept_start(action_tokens, emitted, think_end, think_skip)
                stripped = live & (first >= 0)
                kept_n = jnp.where(stripped, length - first, 0)
                # The kept part, then the chat end (its first kept_n slots are left, its own is pending_n).
                kept = jax.vmap(lambda row, f: jax.lax.dynamic_slice_in_dim(row, f, act_len))(
                    jnp.pad(action_tokens, ((0, 0), (0, act_len)), constant_values=table.pad_id), jnp.maximum(first, 0))
                end_part = pending[:, :len(chat.end)]
                pending = jnp.pad(jnp.where(positions[None, :] < kept_n[:, None], kept, table.pad_id),
                                  ((0, 0), (0, tail_len - act_len)), constant_values=table.pad_id)
                if chat.end:
                    own = jnp.arange(len(chat.end))[None, :] < pending_n[:, None]
                    pending = _write(pending, jnp.where(own, end_part, table.pad_id), kept_n)
                pending_n = pending_n + kept_n
                # The response leaves the context: its cache slots are freed and the kept part is written there.
                hide = stripped[:, None] & (slots >= action_start[:, None]) & (slots < (action_start + length)[:, None])
                cache = cache.replace(valid=cache.valid & ~hide, length=jnp.where(stripped, action_start, cache.length))
                at = jnp.arange(stream_room)[None, :]
                gone = stripped[:, None] & (at >= shown[:, None]) & (at < (shown + length)[:, None])
                stream = (hidden + jnp.where(stripped, length, 0), jnp.where(gone, (shown + length)[:, None], stream[1]))
            return finish(states, cache, tokens, pending, pending_n, end, stopped, truncated_now | overflow, live,
                          k_env, action, action_tokens, length, shown, logp, valid, overflow, bonus, stream)
        dstate = jax.vmap(table.init)(valid)
        for i in range(pre):
            dstate = jax.vmap(table.advance)(dstate, prefix[:, i])
        logp = jnp.zeros((batch, act_len), jnp.float32)
        logits = model.logits(last, columns)  # the actions' K tokens only
        for i in range(decide):
            keys = row_keys(jax.random.fold_in(k_dec, i))
            token, lp, new = jax.vmap(lambda d, l, k: constrained_step(table, d, l, k, temperature, top_p, on_columns=True))(
                dstate, logits, keys)
            chosen = live & ~dstate.done & (dstate.alive.sum(-1) > 1)  # a real choice remains
            logp = logp.at[:, pre + i].set(jnp.where(chosen, lp, 0.0))
            dstate = select_rows(chosen, new, dstate)
            if i + 1 < decide:
                pos = cache.length
                hidden, cache = model.hidden_states(token[:, None], pos[:, None], cache, chosen[:, None])
                cache = cache.replace(length=pos + chosen)
                logits = model.logits(hidden[:, 0], columns)
        action = jnp.argmax(dstate.alive, axis=-1).astype(jnp.int32)  # determined: one action is alive
        action_tokens = table.tokens[action]
        length = table.lengths[action]
        emitted = cache.length - action_start
        pending = jax.vmap(lambda row, e: jax.lax.dynamic_slice_in_dim(row, e, act_len))(padded_actions[action], emitted)
        pending_n = jnp.where(live, length - emitted, 0)
        tokens = _write(tokens, jnp.where(live[:, None], action_tokens, table.pad_id), jnp.where(live, action_start, scratch))
        return finish(states, cache, tokens, pending, pending_n, end, stopped, truncated_now, live, k_env,
                      action, action_tokens, length, action_start, logp, valid, jnp.zeros_like(live),
                      jnp.zeros((batch,), jnp.float32), stream)

    def finish(states, cache, tokens, pending, pending_n, end, stopped, truncated_now, live, k_env,
               action, action_tokens, length, action_start, logp, valid, unrewarded, remark_bonus, stream):
        """Steps the env with the decoded actions and emits the turn's record (``action_start``: the response's
        first stream slot; ``unrewarded``: rows whose turn earns nothing and counts no success, bool[B];
        ``remark_bonus``: float32[B], earned if the turn is a reflection turn)."""
        end = jnp.where(live, action_start + length, end)
        _, new_states, reward, _, info = step_env(row_keys(k_env), states, action, env_params)
        new_states = select_rows(live, new_states, states)
        out = dict(
            action_tokens=action_tokens, action_mask=live[:, None] & (positions[None, :] < length[:, None]),
            action_start=action_start, logp=logp, valid=valid, actions=jnp.where(live, action, -1),
            rewards=jnp.where(live & ~unrewarded, reward + jnp.where(info["reflection"], remark_bonus, 0.0), 0.0),
            episode_index=info["episode_index"],
            episode_done=info["episode_done"] & live, success=info["success"] & live & ~unrewarded,
            reflection=info["reflection"] & live, taken=live,
        )
        return (new_states, cache, tokens, pending, pending_n, end, stopped | truncated_now, stream), out

    tokens = constrain(jnp.full((batch, stream_room), codec.pad_id, jnp.int32))
    zeros = jnp.zeros((batch,), jnp.int32)
    # Stripping's stream: the slots hidden so far (int32[B]) and each stream slot's visible_until (int32[B, S']).
    stream = (zeros, constrain(jnp.full((batch, stream_room), VISIBLE, jnp.int32))) if strip else None
    init = (trial_states, cache, tokens, jnp.full((batch, tail_len), table.pad_id, jnp.int32), zeros, zeros,
            jnp.zeros((batch,), bool), stream)
    (_, _, tokens, _, _, end, truncated, stream), out = jax.lax.scan(turn, init, jnp.arange(budget.turns))
    per_turn = {k: jnp.swapaxes(v, 0, 1) for k, v in out.items()}  # [T, B, ...] -> [B, T, ...]
    kept_slots = stream_room - room + context_len  # the context, plus the most a trial can hide
    return Transcript(tokens=tokens[:, :kept_slots], length=end, truncated=truncated,
                      visible_until=stream[1][:, :kept_slots] if strip else None, **per_turn)


class TeacherForced(NamedTuple):
    """One teacher-forced pass over a transcript (see :func:`teacher_forced`).

    logp, entropy: float32[B, T, L] per action token (0 where masked; entropy 0 for forced tokens).
    observation_nll: float32[] mean next-token loss on observation tokens (0 unless asked for), and
      observation_count: float32[] the number of tokens it averages.
    answer_logp: float32[B, T] log-probability of the row's answer action at each turn, and answer_scored:
      bool[B, T] the turns where it is scored (None unless asked for; see :func:`teacher_forced`).
    """

    logp: jax.Array
    entropy: jax.Array
    observation_nll: jax.Array
    answer_logp: jax.Array | None = None
    answer_scored: jax.Array | None = None
    observation_count: jax.Array | None = None


def teacher_forced(graphdef, model_state, transcript: Transcript, table, temperature: float = 1.0,
                   top_p: float = 1.0, free: bool = False, observation_vocab=None, answers=None,
                   cut_to_used: bool = True, vocab_chunk: int = 0) -> TeacherForced:
    """The sampler's log-probability and entropy of every action token, recomputed in one causal forward.

    Each action token is scored by the hidden state of the slot before it, under the same constrained,
    temperature/top-p processed distribution the decoder used (constrained decoding: the trie is replayed from
    ``valid``; ``free``: the whole vocabulary, scored in column chunks of ``vocab_chunk`` (0: sized by
    :func:`~metarl_jax.models.sampling.vocab_chunk_for` from the positions scored) when ``top_p=1``
    (:func:`~metarl_jax.models.sampling.chunked_logp_entropy`), so no [B, T, L, V] array is built).

    ``observation_vocab`` (int32[K], the token ids the env's text can show) adds the mean next-token
    cross-entropy of the observation tokens, over that sub-vocabulary: an auxiliary world-model loss that
    gives a from-scratch model the knowledge of the game's text a pretrained LM would bring. Action slots and
    tokens outside the sub-vocabulary are not scored.

    ``answers`` (int32[B], each row's answer action, ``env.answer_action`` of its task; constrained decoding
    only) adds the log-probability of that action at every turn, under the plain constrained distribution
    (temperature 1, top-p 1): the auxiliary answer loss's input. A turn's hidden states after its first token
    follow the *sampled* action, so the answer's tokens are scored up to and including the first one that
    departs from the sampled action (exact when the actions differ in one decision token, as the numbers
    of GuessTheNumber do; a lower bound on the loss otherwise). Turns where the answer is not a valid action
    are not scored.

    The forward runs over the shortest prefix that holds every row (:func:`on_used_prefix`); with
    ``cut_to_used=False`` over all the transcript's slots (for a caller that already cut it).
    """
    if cut_to_used:
        return on_used_prefix(transcript, lambda cut: teacher_forced(
            graphdef, model_state, cut, table, temperature, top_p, free, observation_vocab, answers, cut_to_used=False,
            vocab_chunk=vocab_chunk))
    model = nnx.merge(graphdef, model_state)
    batch, steps, act_len = transcript.action_tokens.shape
    hidden, _ = model.hidden_states(transcript.tokens, transcript.positions, None, transcript.token_mask,
                                    **({} if transcript.visible_until is None else
                                       dict(key_until=transcript.visible_until)))
    # Slot of the token that predicts action token i of turn t: the one just before it (turns not taken may
    # point past a cut transcript's end: clipped, and masked anyway).
    action_slots = transcript.action_start[:, :, None] + jnp.arange(act_len)[None, None, :]
    before = jnp.clip(action_slots - 1, 0, transcript.tokens.shape[1] - 1)
    picked = jnp.take_along_axis(hidden, before.reshape(batch, -1)[:, :, None], axis=1)
    # Project only where an action is predicted, and (constrained decoding) only onto the actions' K tokens:
    # every other token has probability 0 there, so the distributions are the same as over the whole vocabulary.
    nll = count = jnp.zeros((), jnp.float32)
    if observation_vocab is not None:
        nll, count = _observation_nll(model, hidden, transcript, jnp.asarray(observation_vocab, jnp.int32))
    if free and top_p == 1.0 and temperature > 0:
        # The whole vocabulary, in column chunks: never a [B, T, L, V] array (V = 151,936 for Qwen3).
        logp, entropy = chunked_logp_entropy(
            lambda h, columns: model.logits(h, columns), picked.reshape(batch, steps, act_len, -1),
            transcript.action_tokens, model.config.vocab_size, temperature,
            vocab_chunk or vocab_chunk_for(batch * steps * act_len, model.config.vocab_size))
        mask = transcript.action_mask
        logp, entropy = jnp.where(mask, logp, 0.0), jnp.where(mask, entropy, 0.0)
        if answers is not None:
            raise ValueError("the answer loss needs constrained decoding (free decoding has no action trie)")
        return TeacherForced(logp, entropy, nll, observation_count=count)
    vocab = None if free else jnp.asarray(table.vocab, jnp.int32)
    pred = model.logits(picked, vocab).reshape(batch, steps, act_len, -1)
    column = jnp.arange(table.vocab_size) if free else (
        jnp.zeros((table.vocab_size,), jnp.int32).at[vocab].set(jnp.arange(vocab.shape[0], dtype=jnp.int32)))

    def score(valid, tokens, mask, step_logits, temperature=temperature, top_p=top_p):  # replay the trie
        state = table.init(valid)
        out, ent = [], []
        for i in range(act_len):
            allowed = None if free else table.allowed_columns(state)
            logp = process_logits(step_logits[i], temperature, top_p, mask=allowed)
            out.append(jnp.where(mask[i], logp[column[tokens[i]]], 0.0))
            p = jnp.exp(logp)
            ent.append(jnp.where(mask[i], -jnp.sum(jnp.where(p > 0, p * logp, 0.0)), 0.0))
            state = table.advance(state, tokens[i])
        return jnp.stack(out), jnp.stack(ent)

    logp, entropy = jax.vmap(jax.vmap(score))(transcript.valid, transcript.action_tokens, transcript.action_mask, pred)
    if answers is None:
        return TeacherForced(logp, entropy, nll, observation_count=count)
    if free:
        raise ValueError("the answer loss needs constrained decoding (free decoding has no action trie)")

    answers = jnp.asarray(answers, jnp.int32)  # -1: none (see answer_turns); its tokens are never scored
    answer_tokens = jnp.broadcast_to(table.tokens[jnp.maximum(answers, 0)][:, None, :act_len],
                                     transcript.action_tokens.shape)
    # Token i of the answer is scored while tokens 0..i-1 agree with the sampled action (its hidden states).
    agree_before = jnp.cumprod(answer_tokens == transcript.action_tokens, axis=-1)
    agree_before = jnp.concatenate([jnp.ones_like(agree_before[..., :1]), agree_before[..., :-1]], axis=-1) > 0
    answer_mask = transcript.action_mask & agree_before & (answer_tokens != table.pad_id)
    plain = functools.partial(score, temperature=1.0, top_p=1.0)
    answer_logp = jax.vmap(jax.vmap(plain))(transcript.valid, answer_tokens, answer_mask, pred)[0].sum(-1)
    scored = answer_turns(transcript, answers)
    return TeacherForced(logp, entropy, nll, jnp.where(scored, answer_logp, 0.0), scored, count)


# A teacher-forced pass covers context_len / d slots for the smallest d that fits. Each bucket is a forward and
# backward pass to compile, so there are only two.
PREFIX_BUCKETS = (2, 1)


def prefix_sizes(slots: int) -> list[int]:
    """The static prefix lengths a transcript of ``slots`` slots may be cut to (ascending)."""
    return sorted({-(-slots // d) for d in PREFIX_BUCKETS})


def on_used_prefix(transcript: Transcript, fn):
    """``fn(cut)`` where ``cut`` is the transcript cut to the shortest static prefix (S/2 or S slots, see
    :data:`PREFIX_BUCKETS`) that holds every row's tokens, chosen at run time with ``lax.switch``.

    Short trials (single-episode ones, or trials that end early) then cost a fraction of a full-context pass;
    attention is causal, so nothing computed for the real tokens depends on the slots cut off. ``fn``'s output
    must not depend on the slot count. Put the switch around a whole ``value_and_grad`` rather than inside the
    differentiated function: differentiated, a switch carries every branch's residuals out of every branch
    (the update's step ran up to a third slower that way on 2 cores).
    """
    sizes = prefix_sizes(transcript.tokens.shape[1])
    if len(sizes) == 1:
        return fn(transcript)
    index = jnp.searchsorted(jnp.asarray(sizes), transcript.length.max())
    return jax.lax.switch(index, [lambda n=n: fn(cut_slots(transcript, n)) for n in sizes])


def cut_slots(transcript: Transcript, n: int) -> Transcript:
    """The transcript's first ``n`` slots (every row's tokens must lie there)."""
    until = transcript.visible_until
    return transcript.replace(tokens=transcript.tokens[:, :n], visible_until=None if until is None else until[:, :n])


def observation_targets(transcript: Transcript, vocab, vocab_size: int):
    """The next-token targets of the observation loss: ``(target int32[B, S-1], scored bool[B, S-1])``, the
    column in ``vocab`` (int32[K]) of each slot's next token and whether it is scored (a real observation token
    in the sub-vocabulary; action tokens are not). Needs no model: a row micro-batch of the update takes the
    whole batch's count of scored tokens from it."""
    vocab = jnp.asarray(vocab, jnp.int32)
    batch, slots = transcript.tokens.shape
    act_len = transcript.action_tokens.shape[2]
    action_slots = transcript.action_start[:, :, None] + jnp.arange(act_len)[None, None, :]
    is_action = jnp.zeros((batch, slots + 1), bool)  # one spare column for the unused slots' index
    rows = jnp.arange(batch)[:, None, None]
    is_action = is_action.at[rows, jnp.where(transcript.action_mask, jnp.minimum(action_slots, slots), slots)].set(True)[:, :slots]
    index = jnp.full((vocab_size,), -1, jnp.int32).at[vocab].set(jnp.arange(vocab.shape[0], dtype=jnp.int32))
    target = index[transcript.tokens[:, 1:]]
    return target, transcript.token_mask[:, 1:] & ~is_action[:, 1:] & (target >= 0)


def _observation_nll(model, hidden, transcript: Transcript, vocab):
    """``(mean, count)``: the mean cross-entropy of each observation token given the slots before it, over the
    sub-vocabulary, and the number of tokens scored (float32[])."""
    target, scored = observation_targets(transcript, vocab, model.config.vocab_size)
    logp = jax.nn.log_softmax(model.logits(hidden[:, :-1], vocab), axis=-1)
    picked = jnp.take_along_axis(logp, jnp.maximum(target, 0)[..., None], axis=-1)[..., 0]
    count = scored.sum().astype(jnp.float32)
    return -(picked * scored).sum() / jnp.maximum(count, 1), count


def answer_turns(transcript: Transcript, answers) -> jax.Array:
    """bool[B, T]: the turns where the answer loss scores ``answers`` (int32[B]; -1: the row has none): turns
    taken where the answer is a valid action."""
    answers = jnp.asarray(answers, jnp.int32)
    valid = jnp.take_along_axis(transcript.valid, jnp.maximum(answers, 0)[:, None, None], axis=2)[..., 0]
    return transcript.action_mask.any(axis=-1) & valid & (answers >= 0)[:, None]


def hindsight_answers(transcript: Transcript) -> jax.Array:
    """int32[B]: the action that won each row's first won episode, read from the row's own transcript (-1 for
    a row that never won). In a game whose winning action is the task's answer (GuessTheNumber's secret,
    Wordle's word, Mastermind's code) this is the answer, learnt from what the policy itself saw: no
    privileged information, and only rows that found it are scored."""
    won = transcript.success & transcript.taken
    first = jnp.argmax(won, axis=1)
    action = jnp.take_along_axis(transcript.actions, first[:, None], axis=1)[:, 0]
    return jnp.where(won.any(axis=1), action, -1).astype(jnp.int32)


def teacher_forced_logp(graphdef, model_state, transcript: Transcript, table, temperature: float = 1.0,
                        top_p: float = 1.0, with_entropy: bool = False, free: bool = False, cut_to_used: bool = True):
    """float32[B, T, L]: the sampler's log-probability of every action token (see :func:`teacher_forced`);
    with ``with_entropy`` returns ``(logp, entropy)``."""
    out = teacher_forced(graphdef, model_state, transcript, table, temperature, top_p, free, cut_to_used=cut_to_used)
    return (out.logp, out.entropy) if with_entropy else out.logp
