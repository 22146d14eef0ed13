"""Constrained decoding: the policy may only emit the token sequence of a valid action.

:class:`ActionTable` tokenizes an env's action texts (``\\boxed{...}``) once. Decoding then walks the
implicit prefix trie inside ``jit``: at step ``t`` the allowed tokens are the ``t``-th tokens of the actions
still consistent with what was emitted, so the emitted sequence is always exactly one action's text. The
log-probability of each emitted token is taken under the masked, temperature/top-p processed distribution,
so forced tokens (the shared ``\\boxed{`` prefix) cost nothing and the summed log-probability is the exact
log-probability of the chosen action under the sampler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metarl_jax.models.sampling import sample


@struct.dataclass
class DecodeState:
    """Progress of one constrained decode.

    Attributes:
      alive: bool[A], actions consistent with the tokens emitted so far.
      t: int32[], tokens emitted so far.
      action: int32[], the chosen action once done, else -1.
    """

    alive: jax.Array
    t: jax.Array
    action: jax.Array

    @property
    def done(self):
        return self.action >= 0


class ActionTable:
    """The token sequences of an env's actions for one tokenizer.

    Attributes:
      tokens: int32[A, max_len] padded with ``pad_id``; lengths: int32[A].
      prefix_len: tokens shared by every action (forced, e.g. ``\\boxed{``).
      decide_len: the most tokens after the prefix that any action needs before no other action shares them;
        only these may need sampling, the rest of an action is forced.
    """

    def __init__(self, env, tokenizer):
        seqs = [list(tokenizer.encode(env.action_text(i))) for i in range(env.num_actions)]
        for i, s in enumerate(seqs):
            if not s:
                raise ValueError(f"action {i} of {env.name} tokenizes to nothing")
            if tokenizer.decode(s) != env.action_text(i):
                raise ValueError(f"{tokenizer!r} does not render action {env.action_text(i)!r} exactly")
        as_tuples = {tuple(s) for s in seqs}
        if len(as_tuples) != len(seqs):
            raise ValueError(f"two actions of {env.name} have the same tokens")
        prefixes = {tuple(s[:k]) for s in seqs for k in range(1, len(s))}
        clash = as_tuples & prefixes
        if clash:
            raise ValueError(
                f"the action token sequences of {env.name} are not prefix-free (e.g. {tokenizer.decode(list(next(iter(clash))))!r}); "
                "constrained decoding needs each action's text to end unambiguously"
            )
        self.num_actions = len(seqs)
        self.max_len = max(len(s) for s in seqs)
        self.vocab_size = int(tokenizer.vocab_size)
        self.pad_id = int(tokenizer.pad_id)
        table = np.full((len(seqs), self.max_len), tokenizer.pad_id, np.int32)
        for i, s in enumerate(seqs):
            table[i, : len(s)] = s
        self.tokens = jnp.asarray(table)
        self.lengths = jnp.asarray([len(s) for s in seqs], jnp.int32)
        # The K distinct tokens of all actions, sorted: constrained decoding gives every other token
        # probability 0, so its distributions live on these K columns of the vocabulary. ``_columns``: each
        # entry of ``tokens`` as a column of ``vocab`` (padding clipped; it is never live).
        self.vocab = np.unique(np.concatenate([np.asarray(s, np.int32) for s in seqs]))
        self._columns = jnp.asarray(np.minimum(np.searchsorted(self.vocab, table), len(self.vocab) - 1), jnp.int32)
        # Tokens every action starts with (forced: the rollout prefills them with the observation), and the
        # most tokens after that prefix before the action is determined (the sampled "decision" tokens; the
        # rest of the action is forced too and is written with the next observation).
        common = 0
        while common < min(len(s) for s in seqs) - 1 and len({s[common] for s in seqs}) == 1:
            common += 1
        self.prefix_len = common if len(seqs) > 1 else 0
        # Free decoding parses a box that follows other text: the first action token (the shared "\\") may then
        # be merged with what precedes it (" \\"). Tokens whose text ends with it stand in for it.
        first = {s[0] for s in seqs}
        lead = np.zeros(self.vocab_size, bool)
        if len(first) == 1:
            text = tokenizer.decode([seqs[0][0]])
            for i in range(self.vocab_size):
                lead[i] = tokenizer.decode([i]).endswith(text)
        lead[list(first)] = True
        self._lead = jnp.asarray(lead)
        counts = _prefix_counts(seqs)
        self.decide_len = max(1, max(_determined_at(s, counts) for s in seqs) - self.prefix_len)

    def match_suffix(self, window):
        """Which action's tokens end ``window`` (int32[..., max_len], the latest tokens, oldest first).

        Returns ``(matched bool[...], action int32[...])`` (action -1 when none). Prefix-freeness makes the
        match unique. The first token may also be any token whose text ends with the first token's text (a
        space before the box merges with it). A box whose contents tokenize unlike the canonical action text
        does not match (a format error).
        """
        width = self.max_len
        slots = jnp.arange(width)[None, :]
        lengths = self.lengths[:, None]
        care = slots >= width - lengths  # [A, L]: the positions of each action, right-aligned
        head = slots == width - lengths  # [A, L]: each action's first token
        right = jnp.take_along_axis(self.tokens, jnp.clip(slots - (width - lengths), 0, width - 1), axis=1)
        lead_ok = self._lead[jnp.clip(window, 0, self.vocab_size - 1)] & (window >= 0)
        same = (window[..., None, :] == right) | (head & lead_ok[..., None, :])
        match = (same | ~care).all(-1)  # [..., A]
        matched = match.any(-1)
        return matched, jnp.where(matched, jnp.argmax(match, axis=-1), -1).astype(jnp.int32)

    def opens_box(self, window):
        """bool[...]: ``window`` (int32[..., max_len], latest tokens last) ends with the tokens every action starts
        with (``prefix_len`` of them, e.g. ``\\boxed{``): an answer has been opened. False when the actions
        share no prefix. The first token may be merged with what precedes it, as in :meth:`match_suffix`."""
        p = self.prefix_len
        if not p:
            return jnp.zeros(window.shape[:-1], bool)
        tail = window[..., self.max_len - p:]
        lead_ok = self._lead[jnp.clip(tail[..., 0], 0, self.vocab_size - 1)] & (tail[..., 0] >= 0)
        rest = (tail[..., 1:] == self.tokens[0, 1:p]).all(-1)
        return lead_ok & rest

    def init(self, valid=None) -> DecodeState:
        """A fresh decode; ``valid`` (bool[A]) optionally restricts the actions (e.g. to env.valid_actions)."""
        alive = jnp.ones((self.num_actions,), bool) if valid is None else jnp.asarray(valid, bool)
        return DecodeState(alive=alive, t=jnp.zeros((), jnp.int32), action=jnp.full((), -1, jnp.int32))

    def allowed(self, state: DecodeState) -> jax.Array:
        """bool[V]: tokens that continue at least one live action."""
        t = jnp.minimum(state.t, self.max_len - 1)
        live = state.alive & (state.t < self.lengths)
        return jnp.zeros((self.vocab_size,), bool).at[self.tokens[:, t]].max(live)

    def allowed_columns(self, state: DecodeState) -> jax.Array:
        """bool[K]: :meth:`allowed` restricted to the columns ``vocab`` (without building the [V] mask)."""
        t = jnp.minimum(state.t, self.max_len - 1)
        live = state.alive & (state.t < self.lengths)
        return jnp.zeros((len(self.vocab),), bool).at[self._columns[:, t]].max(live)

    def advance(self, state: DecodeState, token) -> DecodeState:
        t = jnp.minimum(state.t, self.max_len - 1)
        alive = state.alive & (self.tokens[:, t] == token)
        finished = alive & (self.lengths == state.t + 1)
        action = jnp.where(state.done, state.action, jnp.where(finished.any(), jnp.argmax(finished), -1))
        return DecodeState(alive=jnp.where(state.done, state.alive, alive), t=state.t + (~state.done), action=action.astype(jnp.int32))


def _prefix_counts(seqs) -> dict:
    """How many sequences start with each prefix."""
    counts: dict = {}
    for s in seqs:
        for k in range(1, len(s) + 1):
            counts[tuple(s[:k])] = counts.get(tuple(s[:k]), 0) + 1
    return counts


def _determined_at(seq, counts) -> int:
    """The fewest leading tokens of ``seq`` that no other action shares."""
    for k in range(1, len(seq) + 1):
        if counts[tuple(seq[:k])] == 1:
            return k
    return len(seq)


def constrained_step(table: ActionTable, state: DecodeState, logits, key, temperature: float = 1.0, top_p: float = 1.0,
                     on_columns: bool = False):
    """One decoding step. Returns ``(token int32[], log_prob float32[], new_state)``.

    ``logits`` is float32[V] over the whole vocabulary, or with ``on_columns`` float32[K] over the actions'
    tokens ``table.vocab`` only (every other token has probability 0 anyway; the rollout projects onto those K
    columns, which spares the [V] projection and sampling). Once the decode is done the step emits ``table``'s
    padding with log-probability 0 and changes nothing.
    """
    if on_columns:
        column, logp = sample(key, logits, temperature, top_p, mask=table.allowed_columns(state))
        token = jnp.asarray(table.vocab, jnp.int32)[column]
    else:
        token, logp = sample(key, logits, temperature, top_p, mask=table.allowed(state))
    new = table.advance(state, token)
    return jnp.where(state.done, table.pad_id, token), jnp.where(state.done, 0.0, logp), new
