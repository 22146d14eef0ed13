"""The learner's teacher-forced scoring of rollouts and the inputs of its auxiliary losses.

:func:`teacher_forced` recomputes, in one causal forward over a :class:`~metarl_jax.agents.rollout.Transcript`,
the sampler's log-probability and entropy of every action token (the policy-gradient ratio's numerator), and
optionally the observation loss and the answer loss's log-probabilities. :func:`on_used_prefix` runs a pass on
the shortest static prefix of the transcript that holds every row.

Shapes: B rows, S token slots, T turns, L = longest action in tokens, A actions, K sub-vocabulary tokens.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from metarl_jax.agents.rollout import Transcript
from metarl_jax.models.sampling import chunked_logp_entropy, process_logits, vocab_chunk_for


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
                   top_p: float = 1.0, *, free: bool = False, observation_vocab=None, answers=None,
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
            graphdef, model_state, cut, table, temperature, top_p, free=free, observation_vocab=observation_vocab,
            answers=answers, cut_to_used=False, vocab_chunk=vocab_chunk))
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
    in the sub-vocabulary; action tokens and a prompt's virtual tokens are not). Needs no model: a row micro-batch of the update takes the
    whole batch's count of scored tokens from it."""
    vocab = jnp.asarray(vocab, jnp.int32)
    batch, slots = transcript.tokens.shape
    act_len = transcript.action_tokens.shape[2]
    action_slots = transcript.action_start[:, :, None] + jnp.arange(act_len)[None, None, :]
    is_action = jnp.zeros((batch, slots + 1), bool)  # one spare column for the unused slots' index
    rows = jnp.arange(batch)[:, None, None]
    is_action = is_action.at[rows, jnp.where(transcript.action_mask, jnp.minimum(action_slots, slots), slots)].set(True)[:, :slots]
    index = jnp.full((vocab_size,), -1, jnp.int32).at[vocab].set(jnp.arange(vocab.shape[0], dtype=jnp.int32))
    following = transcript.tokens[:, 1:]
    target = jnp.where(following < vocab_size, index[jnp.minimum(following, vocab_size - 1)], -1)  # prompt: not scored
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
                        top_p: float = 1.0, *, with_entropy: bool = False, free: bool = False, cut_to_used: bool = True):
    """float32[B, T, L]: the sampler's log-probability of every action token (see :func:`teacher_forced`);
    with ``with_entropy`` returns ``(logp, entropy)``."""
    out = teacher_forced(graphdef, model_state, transcript, table, temperature, top_p, free=free, cut_to_used=cut_to_used)
    return (out.logp, out.entropy) if with_entropy else out.logp
