"""Multi-episode rollouts of a transformer policy, as one ``lax.scan`` over the turns of a trial.

Each turn: render the observation tokens (codec), prefill them into the KV cache, decode one action with
constrained decoding (:mod:`metarl_jax.agents.actions`) or free decoding (:mod:`metarl_jax.agents.sampler`),
step the :class:`~metarl_jax.envs.MultiEpisode` env. Everything is batched (the model takes a batch; env
functions are vmapped), so the whole rollout is one XLA program.

The context is *compact*: each row's real tokens are written contiguously from slot 0 (an observation's
padding is overwritten by what follows), so positions equal slot indices and a context of ``context_len``
tokens holds the transcript (see :mod:`metarl_jax.agents.context` for the worst case). As in ORBIT, a row whose
context would overflow stops: it takes no further turns (``truncated``); its rewards are those it earned, and the
learner decides what a truncated trial returns (``GRPOHyper.truncated_return``; ORBIT's is 0).

The returned :class:`Transcript` holds the token stream, the action tokens and the sampler's log-probabilities
per turn, and the env outcomes; :func:`metarl_jax.algos.scoring.teacher_forced_logp` recomputes the
log-probabilities from ``tokens`` in one causal forward (``tests/test_rollout.py`` checks they agree).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

from metarl_jax.agents.actions import ActionTable
from metarl_jax.agents.context import ContextBudget
from metarl_jax.agents.sampler import (Sampling, decode_constrained, decode_free, kept_start, merge_rows, prefill,
                                      prefill_block, split_rows, tag_pair_written, write_rows)
from metarl_jax.envs.base import tree_select
from metarl_jax.models.prompt import prompt_ids, prompt_length
from metarl_jax.models.transformer import VISIBLE, init_cache
from metarl_jax.text.chat import ChatWrap
from metarl_jax.text.codec import Codec


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutSpec:
    """What a rollout plays and how it decodes (a :class:`~metarl_jax.tasks.TaskSet` is one, with its tasks).

    Attributes:
      env, env_params: the :class:`~metarl_jax.envs.MultiEpisode` env and its params.
      codec, table: observation renderer and action table for the tokenizer.
      budget: the trial's :class:`~metarl_jax.agents.context.ContextBudget` (``budget.turns`` turns are played).
      context_len: the context size in tokens; rows that would overflow it stop early (``truncated``).
      free_tokens: 0 for constrained decoding, else free decoding (ORBIT's mode: the model writes up to that many
        tokens per action and its ``\\boxed{...}`` is parsed; :func:`~metarl_jax.agents.sampler.decode_free`).
      chat: the chat turn wrapping of observations and actions (:mod:`metarl_jax.text.chat`), or None.
      end_of_turn: free decoding's end-of-turn token id (ORBIT's mode: a turn ends there and its last action text
        is parsed), or -1 (a turn ends at its first action text).
      remaining_budget: free decoding lets a turn write up to the context's remaining room (at most
        ``free_tokens``; ORBIT's per-turn budget): a response that the full context cuts off before its
        end-of-turn token earns nothing and stops the trial (``truncated``).
      remark_tags, remark_reward: the token sequences of the opening and the closing remark tag (each a tuple of
        spellings: alone and after a space; see :func:`~metarl_jax.agents.sampler.tag_pair_written`) and what a
        free-decoded reflection turn holding an opening tag and, after it, a closing one earns (LaMer's variant
        in ORBIT's repository pays 1.0 for a valid ``<remark>``); ``()`` and 0: off.
      think_end, think_skip: free decoding's end-of-thinking token id and the newline ids dropped after it, or -1
        and ``()`` to keep the thinking. Stripping it is what rLLM's ``accumulate_reasoning=False`` and Qwen3's
        chat template do: once a turn ends, its response leaves the context, replaced by what follows its last
        ``think_end`` (less the leading ``think_skip`` tokens), prefilled afresh where the response began (a
        response without it stays whole), which frees the stripped room. The transcript keeps the whole stream
        (:class:`Transcript`'s ``visible_until``), up to ``budget.turns * free_tokens`` slots more than
        ``context_len``.
      prompt_len: the model's prompt vectors (:mod:`metarl_jax.models.prompt`): their virtual tokens open every
        trial, before its first observation, and count in ``context_len`` and ``budget``; 0: none.
    """

    env: Any
    env_params: Any
    codec: Codec
    table: ActionTable
    budget: ContextBudget
    context_len: int
    free_tokens: int = 0
    chat: ChatWrap | None = None
    end_of_turn: int = -1
    remaining_budget: bool = False
    remark_tags: tuple = ()
    remark_reward: float = 0.0
    think_end: int = -1
    think_skip: tuple = ()
    prompt_len: int = 0


def rollout(graphdef, model_state, spec: RolloutSpec, key, trial_states, sampling: Sampling = Sampling(), *,
            rows_per_chunk: int = 0, row_context_len=None, constrain=None, player=None) -> Transcript:
    """Plays ``spec.budget.turns`` turns of ``spec``'s env from ``trial_states`` (batched [B]), drawing tokens as
    ``sampling`` says; returns a :class:`Transcript`.

    ``row_context_len`` (int32[B], each at most ``spec.context_len``) gives each row a smaller limit of its own
    (a :class:`~metarl_jax.envs.mixture.GameMixture`'s rows, each with its game's context).

    Forced tokens cost no decode call: a turn prefills the previous action's forced tail, the observation and
    the forced action prefix (``table.prefix_len`` tokens) in one go, then samples at most
    ``table.decide_len`` tokens; the chosen action's remaining tokens are forced and wait for the next
    prefill. Their log-probability is exactly 0 under constrained decoding.

    ``rows_per_chunk`` (a divisor of B; 0: all rows) plays the rows in micro-batches of that many, one after
    the other inside the same program (``lax.map``; chunks are strided, see :func:`split_rows`), each with a KV
    cache of its own rows only: the cache's memory is that of one micro-batch. Every random draw of a row comes
    from the row's own key (the draw's key split over the B rows), so the result equals the unchunked rollout's
    with the same ``key``. ``constrain(tree, axis=0)`` (optional, e.g. :func:`metarl_jax.sharding.row_constraint`)
    pins a micro-batch's states and KV cache to the mesh's data axis.

    ``player(key, trial_state) -> int32[]`` (optional; constrained decoding) picks every action and no model runs:
    the transcript is what a decoder allowed only that action writes (``logp`` 0; ``valid`` the env's masks).
    """
    batch = trial_states.total_steps.shape[0]
    limit = (jnp.full((batch,), spec.context_len, jnp.int32) if row_context_len is None
             else jnp.asarray(row_context_len, jnp.int32))
    if player is not None and spec.free_tokens:
        raise ValueError("a scripted player needs constrained decoding (free_tokens=0)")
    play = functools.partial(_rollout_rows, graphdef, model_state, spec, key, sampling, total_rows=batch,
                             constrain=constrain or (lambda tree, axis=0: tree), player=player)
    if not rows_per_chunk or rows_per_chunk >= batch:
        return play(trial_states, limit, 0)
    if batch % rows_per_chunk:
        raise ValueError(f"rows_per_chunk={rows_per_chunk} does not divide the batch of {batch} rows")
    chunks = batch // rows_per_chunk
    out = jax.lax.map(lambda a: play(*a), (*split_rows((trial_states, limit), chunks), jnp.arange(chunks, dtype=jnp.int32)))
    return merge_rows(out)


class _Carry(NamedTuple):
    """The turn scan's carry: env states, KV cache, token stream [B, S'], pending forced tail [B, tail] and its
    length [B], stream end [B], rows stopped [B], stripping's ``(slots hidden [B], visible_until [B, S'])``."""

    states: Any
    cache: Any
    tokens: jax.Array
    pending: jax.Array
    pending_n: jax.Array
    end: jax.Array
    stopped: jax.Array
    stream: tuple | None


class _Decoded(NamedTuple):
    """One turn's response, per row: ``action`` [B] (-1: none), ``action_tokens`` and their ``logp`` [B, L],
    ``length`` [B] tokens written from stream slot ``start`` [B]; ``unrewarded`` [B]: the turn earns nothing and
    counts no success; ``remark_bonus`` [B]: earned if the turn is a reflection turn."""

    action: jax.Array
    action_tokens: jax.Array
    length: jax.Array
    start: jax.Array
    logp: jax.Array
    unrewarded: jax.Array
    remark_bonus: jax.Array


def _rollout_rows(graphdef, model_state, spec: RolloutSpec, key, sampling: Sampling, trial_states, limit, chunk_index,
                  *, total_rows: int, constrain, player=None) -> Transcript:
    """:func:`rollout` of chunk ``chunk_index`` of a batch of ``total_rows`` rows split by :func:`split_rows`
    (``trial_states`` and ``limit``, int32[B] the rows' context limits, hold its B rows; with B = ``total_rows``
    the chunk is the whole batch)."""
    env, env_params, codec, table, budget = spec.env, spec.env_params, spec.codec, spec.table, spec.budget
    context_len, free_tokens, end_of_turn, think_end = spec.context_len, spec.free_tokens, spec.end_of_turn, spec.think_end
    model = nnx.merge(graphdef, model_state)
    batch = trial_states.total_steps.shape[0]
    if prompt_length(model) != spec.prompt_len:
        raise ValueError(f"the model has {prompt_length(model)} prompt vectors, the rollout spec places "
                         f"{spec.prompt_len}: build the tasks with the model's prompt_len")

    def row_keys(k):
        """key[B]: this call's rows of ``k`` split over the whole batch."""
        keys = jax.random.split(k, total_rows)
        if batch == total_rows:
            return keys
        return jax.lax.dynamic_index_in_dim(split_rows(keys, total_rows // batch), chunk_index, axis=0, keepdims=False)

    free = free_tokens > 0
    chunk = budget.chunk_len
    act_len, pre = (free_tokens, 0) if free else (table.max_len, table.prefix_len)
    if budget.action_len != act_len:
        raise ValueError(f"the context budget counts {budget.action_len} action tokens, the decoder writes {act_len}")
    chat = spec.chat or ChatWrap()
    # prompt, pending tail, chat end, chat open, observation, chat close, prefix
    width = spec.prompt_len + act_len + chat.per_turn + chunk + pre
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
    prompt = jnp.broadcast_to(jnp.asarray(prompt_ids(model)), (batch, spec.prompt_len))
    positions = jnp.arange(act_len)
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

    def turn(carry: _Carry, t):
        states, cache, tokens, pending, pending_n, end, stopped, stream = carry
        hidden = stream[0] if strip else 0  # int32[B]: slots hidden so far (stream slot = cache slot + hidden)
        k_dec, k_env = jax.random.split(jax.random.fold_in(key, t))
        obs, n = render(states)
        obs = obs[:, :chunk]  # real tokens come first and never exceed the chunk bound
        start = cache.length  # where the pending tail goes; the rest of the chunk follows it
        end_n = jnp.where(t > 0, 0 if free else len(chat.end), 0)  # the chat end of the previous action
        # The chunk: prompt (first turn) | pending tail | chat end | chat open | observation | chat close | prefix.
        parts = [(prompt, jnp.where(t == 0, spec.prompt_len, 0)), (pending, pending_n), (wrap_end, end_n), (wrap_open, len(chat.open)), (obs, n),
                 (wrap_close, len(chat.close)), (prefix, pre)]
        m = sum(k for _, k in parts)
        fits = start + m - pre + (1 if free and spec.remaining_budget else act_len) <= limit
        live = ~states.trial_done & ~stopped & fits
        truncated_now = ~states.trial_done & ~stopped & ~fits
        buf = jnp.full((batch, width), codec.pad_id, jnp.int32)
        offset = jnp.zeros_like(n)
        for values, k in parts:
            if values.shape[1]:
                mask = jnp.arange(values.shape[1])[None, :] < jnp.reshape(k, (-1, 1))
                buf = write_rows(buf, jnp.where(mask, values, codec.pad_id), offset)
            offset = offset + k
        m = jnp.where(live, m, 0)
        scratch = stream_room - width  # past the context: where rows that take no turn write their padding
        tokens = write_rows(tokens, jnp.where(live[:, None], buf, codec.pad_id), jnp.where(live, start + hidden, scratch))
        # A player's rollout runs no model: its update scores the transcript teacher-forced.
        cache, last = (cache.replace(length=cache.length + m), None) if player else prefill(model, cache, buf, m, block)
        action_start = cache.length - pre
        valid = jax.vmap(env.valid_actions)(states)
        if free:
            room_left = limit - action_start if spec.remaining_budget else None
            cache, action, action_tokens, logp, emitted, ended = decode_free(
                model, table, cache, model.logits(last), live, lambda i: row_keys(jax.random.fold_in(k_dec, i)),
                free_tokens, sampling, end_of_turn=end_of_turn, caps=room_left)
            length = emitted.sum(axis=1).astype(jnp.int32)
            shown = action_start + hidden  # the response's first slot in the stream
            tokens = write_rows(tokens, action_tokens, jnp.where(live, shown, scratch))
            overflow = jnp.zeros_like(live)
            if spec.remaining_budget:  # the context filled up before the response ended: no reward, the trial stops
                overflow = live & ~ended & (length >= room_left) & (room_left < free_tokens)
            bonus = jnp.zeros((batch,), jnp.float32)
            if spec.remark_reward and spec.remark_tags:
                bonus = spec.remark_reward * tag_pair_written(action_tokens, emitted, *spec.remark_tags).astype(jnp.float32)
            pending = jnp.where(ended[:, None], end_rest, end_whole)
            pending_n = jnp.where(live, len(chat.end) - (ended & bool(chat.end)).astype(jnp.int32), 0)
            if strip:
                first = kept_start(action_tokens, emitted, think_end, tuple(spec.think_skip))
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
                    pending = write_rows(pending, jnp.where(own, end_part, table.pad_id), kept_n)
                pending_n = pending_n + kept_n
                # The response leaves the context: its cache slots are freed and the kept part is written there.
                hide = stripped[:, None] & (slots >= action_start[:, None]) & (slots < (action_start + length)[:, None])
                cache = cache.replace(valid=cache.valid & ~hide, length=jnp.where(stripped, action_start, cache.length))
                at = jnp.arange(stream_room)[None, :]
                gone = stripped[:, None] & (at >= shown[:, None]) & (at < (shown + length)[:, None])
                stream = (hidden + jnp.where(stripped, length, 0), jnp.where(gone, (shown + length)[:, None], stream[1]))
            carry = carry._replace(cache=cache, tokens=tokens, pending=pending, pending_n=pending_n, stream=stream)
            decoded = _Decoded(action, action_tokens, length, shown, logp, unrewarded=overflow, remark_bonus=bonus)
            return finish(carry, decoded, live, truncated_now | overflow, valid, k_env)
        if player is None:
            dstate = jax.vmap(table.init)(valid)
            for i in range(pre):
                dstate = jax.vmap(table.advance)(dstate, prefix[:, i])
            cache, action, logp = decode_constrained(model, table, cache, last, dstate, live,
                                                     lambda i: row_keys(jax.random.fold_in(k_dec, i)), sampling)
        else:  # the player's action (an invalid one: the first valid action), as a decoder allowed only it writes it
            chosen = jax.vmap(player)(row_keys(jax.random.fold_in(k_env, 1)), states)
            action = jnp.where(valid[jnp.arange(batch), chosen], chosen, jnp.argmax(valid, axis=1)).astype(jnp.int32)
            logp = jnp.zeros((batch, table.max_len), jnp.float32)  # one action allowed: every token is forced
        action_tokens = table.tokens[action]
        length = table.lengths[action]
        emitted = cache.length - action_start
        pending = jax.vmap(lambda row, e: jax.lax.dynamic_slice_in_dim(row, e, act_len))(padded_actions[action], emitted)
        pending_n = jnp.where(live, length - emitted, 0)
        tokens = write_rows(tokens, jnp.where(live[:, None], action_tokens, table.pad_id), jnp.where(live, action_start, scratch))
        carry = carry._replace(cache=cache, tokens=tokens, pending=pending, pending_n=pending_n)
        decoded = _Decoded(action, action_tokens, length, action_start, logp, unrewarded=jnp.zeros_like(live),
                           remark_bonus=jnp.zeros((batch,), jnp.float32))
        return finish(carry, decoded, live, truncated_now, valid, k_env)

    def finish(carry: _Carry, decoded: _Decoded, live, truncated_now, valid, k_env):
        """Steps the env with the decoded actions (``live``: the rows that took the turn; ``truncated_now``: the
        rows that stop here) and emits the turn's record."""
        d, states = decoded, carry.states
        end = jnp.where(live, d.start + d.length, carry.end)
        _, new_states, reward, _, info = step_env(row_keys(k_env), states, d.action, env_params)
        new_states = select_rows(live, new_states, states)
        out = dict(
            action_tokens=d.action_tokens, action_mask=live[:, None] & (positions[None, :] < d.length[:, None]),
            action_start=d.start, logp=d.logp, valid=valid, actions=jnp.where(live, d.action, -1),
            rewards=jnp.where(live & ~d.unrewarded, reward + jnp.where(info["reflection"], d.remark_bonus, 0.0), 0.0),
            episode_index=info["episode_index"],
            episode_done=info["episode_done"] & live, success=info["success"] & live & ~d.unrewarded,
            reflection=info["reflection"] & live, taken=live,
        )
        return carry._replace(states=new_states, end=end, stopped=carry.stopped | truncated_now), out

    tokens = constrain(jnp.full((batch, stream_room), codec.pad_id, jnp.int32))
    zeros = jnp.zeros((batch,), jnp.int32)
    # Stripping's stream: the slots hidden so far (int32[B]) and each stream slot's visible_until (int32[B, S']).
    stream = (zeros, constrain(jnp.full((batch, stream_room), VISIBLE, jnp.int32))) if strip else None
    init = _Carry(trial_states, cache, tokens, jnp.full((batch, tail_len), table.pad_id, jnp.int32), zeros, zeros,
                  jnp.zeros((batch,), bool), stream)
    (_, _, tokens, _, _, end, truncated, stream), out = jax.lax.scan(turn, init, jnp.arange(budget.turns))
    per_turn = {k: jnp.swapaxes(v, 0, 1) for k, v in out.items()}  # [T, B, ...] -> [B, T, ...]
    kept_slots = stream_room - room + context_len  # the context, plus the most a trial can hide
    return Transcript(tokens=tokens[:, :kept_slots], length=end, truncated=truncated,
                      visible_until=stream[1][:, :kept_slots] if strip else None, **per_turn)

