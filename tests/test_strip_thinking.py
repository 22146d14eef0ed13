"""Earlier thinking stripped from the context (rLLM's ``accumulate_reasoning=False``), through the compiled
rollout of a real tiny transformer under free decoding.

Once a turn ends, its response leaves the context and only what follows its last end-of-thinking token stays
(leading newlines dropped). The test rebuilds, on the host and without the rollout's bookkeeping, the context
each turn must have seen (earlier observations and the kept parts of earlier responses), and checks that:

* the transcript's stream holds every response whole, each stripped one followed by its kept part;
* every sampled token's log-probability equals a plain causal forward over that explicitly stripped context
  (so the KV cache really forgot the thinking, and RoPE positions close the gap);
* the teacher-forced pass over the stream (``visible_until``) gives the same log-probabilities, which the
  learner's ratio needs, and the same gradient as the explicit forwards.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metarl_jax import envs
from metarl_jax.agents import ActionTable
from metarl_jax.agents.context import context_budget
from metarl_jax.agents.rollout import RolloutSpec, rollout
from metarl_jax.agents.sampler import kept_start
from metarl_jax.algos.scoring import teacher_forced_logp
from metarl_jax.models import Transformer, preset
from metarl_jax.text import Codec, WordTokenizer
from metarl_jax.text.chat import ChatWrap

BATCH, TURNS, FREE_TOKENS = 4, 4, 12


class BiasedPolicy(nnx.Module):
    """A tiny random transformer whose logits get a fixed bias per token, so that its responses often hold the
    end-of-thinking token, newlines and the end-of-turn token."""

    def __init__(self, vocab_size: int, bias: np.ndarray):
        self.inner = Transformer(preset("tiny", vocab_size), rngs=nnx.Rngs(0))
        self.bias = nnx.Variable(jnp.asarray(bias, jnp.float32))
        self.config, self.dtype = self.inner.config, self.inner.dtype

    def hidden_states(self, *args, **kw):
        return self.inner.hidden_states(*args, **kw)

    def logits(self, hidden, vocab=None):
        bias = self.bias[...] if vocab is None else self.bias[...][jnp.minimum(vocab, self.bias.shape[0] - 1)]
        return self.inner.logits(hidden, vocab) + bias


def kept(response, think_end, skip):
    """The part of a response that stays in the context (the whole response without ``think_end``)."""
    if think_end not in response:
        return response
    j = len(response) - response[::-1].index(think_end)
    while j < len(response) and response[j] in skip:
        j += 1
    return response[j:]


@pytest.fixture(scope="module")
def played():
    tok = WordTokenizer()
    env, params = envs.make_trial("game:GuessTheNumber-v0-easy", total_step_cap=TURNS, max_turns=1, intro=False)
    codec, table = Codec(env, tok), ActionTable(env, tok)
    think_end, skip, eos = tok.encode(" number")[0], tuple(tok.encode("\n")), tok.eos_id
    bias = np.zeros(tok.vocab_size, np.float32)
    bias[think_end], bias[list(skip)], bias[eos] = 6.5, 6.0, 4.0
    graphdef, state = nnx.split(BiasedPolicy(tok.vocab_size, bias))
    budget = context_budget(env, codec, FREE_TOKENS)
    _, trials = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), BATCH), params)
    spec = RolloutSpec(env=env, env_params=params, codec=codec, table=table, budget=budget, context_len=budget.worst_case,
                       free_tokens=FREE_TOKENS, chat=ChatWrap(), end_of_turn=eos, think_end=think_end, think_skip=skip)
    tr = jax.jit(lambda st: rollout(graphdef, st, spec, jax.random.PRNGKey(3), trials))(state)
    return dict(tok=tok, env=env, params=params, codec=codec, table=table, graphdef=graphdef, state=state,
                trials=trials, tr=tr, think_end=think_end, skip=skip, spec=spec)


def contexts(s, b):
    """Row b's turns: (the stripped context the turn saw, its response), rebuilt from the env and the
    responses; and the stream the transcript must hold."""
    tr, env = s["tr"], s["env"]
    state = jax.tree.map(lambda x: x[b], s["trials"])
    history, stream, turns, carried = [], [], [], []
    for t in range(TURNS):
        if not bool(tr.taken[b, t]):
            break
        obs, n = s["codec"].render_tokens(state)
        obs = np.asarray(obs)[: int(n)].tolist()
        response = np.asarray(tr.action_tokens[b, t])[np.asarray(tr.action_mask[b, t])].tolist()
        turns.append((history + obs, response))
        stream += carried + obs + response
        visible = kept(response, s["think_end"], s["skip"])
        carried = visible if visible is not response else []
        history = history + obs + visible
        _, state, _, _, _ = env.step_env(jax.random.PRNGKey(0), state, jnp.int32(tr.actions[b, t]), s["params"])
    return turns, stream


def turn_sequences(s):
    """(row, turn, stripped context, response) of every turn played."""
    return [(b, t, ctx, resp) for b in range(BATCH) for t, (ctx, resp) in enumerate(contexts(s, b)[0])]


def stripped_rows(s):
    """One padded row per turn played: its stripped context then its response (int32[N, W]), the positions
    0, 1, ..., the real tokens and where the response's tokens are (bool[N, W] each)."""
    seqs = turn_sequences(s)
    width = max(len(ctx) + len(resp) for _, _, ctx, resp in seqs)
    tokens = np.full((len(seqs), width), s["tok"].pad_id, np.int32)
    real, where = np.zeros(tokens.shape, bool), np.zeros(tokens.shape, bool)
    for i, (_, _, ctx, resp) in enumerate(seqs):
        tokens[i, : len(ctx) + len(resp)] = ctx + resp
        real[i, : len(ctx) + len(resp)] = True
        where[i, len(ctx): len(ctx) + len(resp)] = True
    return tokens, np.broadcast_to(np.arange(width, dtype=np.int32), tokens.shape), real, where


@pytest.mark.slow
def test_the_stream_holds_each_response_then_its_kept_part(played):
    s, tr = played, played["tr"]
    stripped = kept_parts = 0
    for b in range(BATCH):
        turns, stream = contexts(s, b)
        n = int(tr.length[b])
        assert np.asarray(tr.tokens[b, :n]).tolist() == stream
        for t, (_, response) in enumerate(turns[:-1]):
            if s["think_end"] in response:
                stripped += 1
                kept_parts += bool(kept(response, s["think_end"], s["skip"]))
        last_context, last_response = turns[-1]
        assert int(tr.context_length[b]) == len(last_context) + len(last_response)
    assert stripped >= 3 and kept_parts >= 1, "the scripted bias must make the rollout strip some turns"
    assert int(tr.length.max()) > int(tr.context_length.max()), "hidden slots make the stream longer"


@pytest.mark.slow
def test_sampled_log_probs_equal_a_forward_over_the_stripped_context(played):
    """Every turn of every row, as a row of one plain causal pass (no cache, positions 0, 1, ...) over the
    explicitly stripped context followed by the response."""
    s, tr = played, played["tr"]
    seqs = turn_sequences(s)
    tokens, positions, real, _ = stripped_rows(s)

    def forward(st, tokens):
        model = nnx.merge(s["graphdef"], st)
        hidden, _ = model.hidden_states(tokens, positions, None, real)
        return jax.nn.log_softmax(model.logits(hidden), axis=-1)

    logp = np.asarray(jax.jit(forward)(s["state"], tokens))
    checked = 0
    for i, (b, t, ctx, resp) in enumerate(seqs):
        expected = [logp[i, len(ctx) + j - 1, token] for j, token in enumerate(resp)]
        np.testing.assert_allclose(np.asarray(tr.logp[b, t, : len(resp)]), expected, atol=2e-5)
        checked += len(resp)
    assert checked > BATCH * TURNS


@pytest.mark.slow
def test_gradient_over_the_stream_equals_the_gradient_over_the_stripped_contexts(played):
    """The learner's gradient: the summed log-probability of every response, from one teacher-forced pass over the
    stream (attention masked by ``visible_until``), has the same gradient as from the explicit forwards."""
    s, tr = played, played["tr"]
    tokens, positions, real, where = stripped_rows(s)

    def explicit(st):
        model = nnx.merge(s["graphdef"], st)
        hidden, _ = model.hidden_states(tokens, positions, None, real)
        logp = jax.nn.log_softmax(model.logits(hidden[:, :-1]), axis=-1)
        picked = jnp.take_along_axis(logp, jnp.asarray(tokens[:, 1:])[..., None], axis=-1)[..., 0]
        return (picked * where[:, 1:]).sum()

    def stream(st):
        logp = teacher_forced_logp(s["graphdef"], st, tr, s["table"], free=True)
        return (logp * tr.action_mask).sum()

    (a, grads), (b, stream_grads) = jax.jit(lambda st: (jax.value_and_grad(explicit)(st),
                                                         jax.value_and_grad(stream)(st)))(s["state"])
    np.testing.assert_allclose(float(b), float(a), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(grads), jax.tree.leaves(stream_grads)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-3, atol=1e-5)
    assert max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads)) > 0


@pytest.mark.slow
def test_teacher_forced_pass_over_the_stream_equals_the_sampler(played):
    s, tr = played, played["tr"]
    tf = jax.jit(lambda st, tr: teacher_forced_logp(s["graphdef"], st, tr, s["table"], free=True))(s["state"], tr)
    mask = np.asarray(tr.action_mask)
    np.testing.assert_allclose(np.asarray(tf)[mask], np.asarray(tr.logp)[mask], atol=2e-5)
    # Without the visibility the same pass sees the thinking and disagrees.
    plain = jax.jit(lambda st, tr: teacher_forced_logp(s["graphdef"], st, tr.replace(visible_until=None),
                                                       s["table"], free=True))(s["state"], tr)
    assert np.abs(np.asarray(plain)[mask] - np.asarray(tr.logp)[mask]).max() > 1e-2


def test_kept_start():
    tokens = jnp.asarray([[5, 7, 9, 7, 1, 1, 3, 0], [5, 1, 3, 4, 0, 0, 0, 0], [7, 1, 1, 0, 0, 0, 0, 0],
                          [5, 7, 1, 2, 7, 0, 0, 0]])
    emitted = jnp.asarray([[True] * 7 + [False], [True] * 4 + [False] * 4, [True] * 3 + [False] * 5,
                           [True] * 4 + [False] * 4])
    # after the last 7 and its newlines (1); no 7; a 7 then only newlines; a 7 past the written tokens
    np.testing.assert_array_equal(np.asarray(kept_start(tokens, emitted, 7, (1,))), [6, -1, 3, 3])
    np.testing.assert_array_equal(np.asarray(kept_start(tokens, emitted, 7)), [4, -1, 1, 2])


@pytest.mark.slow
def test_micro_batched_rollout_strips_alike(played):
    """Rows played 2 at a time (``rows_per_chunk``) write the same stream, visibility and log-probabilities."""
    s = played
    chunked = jax.jit(lambda st: rollout(s["graphdef"], st, s["spec"], jax.random.PRNGKey(3), s["trials"],
                                         rows_per_chunk=2))(s["state"])
    for name in ("tokens", "visible_until", "length", "action_tokens", "action_mask", "rewards"):
        np.testing.assert_array_equal(np.asarray(getattr(chunked, name)), np.asarray(getattr(s["tr"], name)), name)
    np.testing.assert_allclose(np.asarray(chunked.logp), np.asarray(s["tr"].logp), atol=1e-5)


def test_a_task_strips_with_its_tokenizers_think_token(tmp_path):
    """``thinking="strip"`` takes ``</think>`` and the single-token newline runs from a Hugging Face tokenizer;
    ``"keep"`` and constrained decoding strip nothing."""
    from metarl_jax.tasks import build_task
    from metarl_jax.text import HFTokenizer
    from metarl_jax.text.tiny import make_bpe_tokenizer

    env, _ = envs.make_trial("game:GuessTheNumber-v0-easy", intro=False)
    texts = [env.pieces_text([i]) for i in range(len(env.pieces))] + ["a\n\nb\nc"] * 50
    tok = HFTokenizer(make_bpe_tokenizer(texts * 4, str(tmp_path), vocab_size=400, extra_specials=("</think>",)))
    entry = dict(env_id="game:GuessTheNumber-v0-easy", max_turns_per_episode=1, total_step_cap=3)

    def task(**kw):
        return build_task(entry, tok, split="train", seed=0, num_tasks=2, intro=False, **kw)

    strip = task(free_tokens=16, thinking="strip")
    assert tok.decode([strip.think_end]) == "</think>"
    assert strip.decoding["think_end"] == strip.think_end
    skipped = {tok.decode([i]) for i in strip.think_skip}
    assert "\n" in skipped and all(set(text) == {"\n"} for text in skipped)
    assert task(free_tokens=16).think_end == -1 and task(thinking="strip").think_end == -1
    # the memory planner sizes the update by the stream, which may be this much longer than the context
    assert strip.transcript_len == strip.context_len + strip.budget.turns * 16
    assert task(free_tokens=16).transcript_len == task(free_tokens=16).context_len
