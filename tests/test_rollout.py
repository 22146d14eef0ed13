"""The transformer rollout: valid actions, the exact text stream, log-probs equal to a teacher-forced forward,
and ORBIT's truncation when the context is full."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metarl_jax import envs
from metarl_jax.agents import ActionTable
from metarl_jax.agents.context import context_budget
from metarl_jax.agents.rollout import RolloutSpec, rollout
from metarl_jax.agents.sampler import Sampling, prefill_block
from metarl_jax.algos.scoring import on_used_prefix, prefix_sizes, teacher_forced, teacher_forced_logp
from metarl_jax.models import Transformer, preset
from metarl_jax.text import Codec, WordTokenizer

BATCH = 3


def play(env_id, context_len=None, cap=6, **trial_kw):
    env, params = envs.make_trial(env_id, total_step_cap=cap, **trial_kw)
    tok = WordTokenizer()
    codec, table = Codec(env, tok), ActionTable(env, tok)
    budget = context_budget(env, codec, table.max_len)
    context_len = budget.worst_case if context_len is None else context_len
    graphdef, state = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    _, trials = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), BATCH), params)
    spec = RolloutSpec(env=env, env_params=params, codec=codec, table=table, budget=budget, context_len=context_len)
    run = jax.jit(lambda st, key, trials: rollout(graphdef, st, spec, key, trials, Sampling(temperature=0.7, top_p=0.95)))
    return dict(env=env, params=params, codec=codec, table=table, graphdef=graphdef, state=state, trials=trials,
                tok=tok, transcript=run(state, jax.random.PRNGKey(1), trials), budget=budget, context_len=context_len)


@pytest.fixture(scope="module", params=[
    # One sampled token per action; terse text prefills 8 tokens per call, so the opening takes several.
    ("game:GuessTheNumber-v0-easy", dict(intro=False, text="terse")),
    pytest.param(("game:Mastermind-v0-random", dict(intro=True, repeat_opening=False, reflection=True)),  # several
                 marks=pytest.mark.slow),
])
def setup(request):
    env_id, kw = request.param
    return play(env_id, **kw)


def test_prefill_block_fits_an_ordinary_turn(setup):
    """Terse one-word feedback prefills 8-token blocks (its opening spans several); GEM's sentences 32."""
    b, table = setup["budget"], setup["table"]
    block = prefill_block(b, table.max_len, table.prefix_len)
    assert block == (8 if setup["env"].env.terse else 32)
    assert b.chunk_len > block, "the opening must take more than one block for the tests to cover that path"
    assert prefill_block(b, table.max_len, table.prefix_len, free=True) <= block


def replay_text(s, b):
    """The text the row's context must hold: each turn's observation, then its action."""
    env, params, tr = s["env"], s["params"], s["transcript"]
    state = jax.tree.map(lambda x: x[b], s["trials"])
    text = []
    for t in range(tr.actions.shape[1]):
        if not bool(tr.taken[b, t]):
            break
        text.append(env.render_text(state))
        action = int(tr.actions[b, t])
        text.append(env.action_text(action))
        _, state, r, _, _ = env.step_env(jax.random.PRNGKey(0), state, jnp.int32(action), params)
        assert float(r) == float(tr.rewards[b, t])
    return "".join(text)


def test_rollout_plays_valid_actions_and_writes_the_exact_text(setup):
    tr, env = setup["transcript"], setup["env"]
    taken = np.asarray(tr.taken)
    assert not np.asarray(tr.truncated).any(), "the worst-case context never truncates"
    env_steps = (taken & ~np.asarray(tr.reflection)).sum(axis=1)
    assert (env_steps == env.total_step_cap).all(), "every trial is played to its step cap"
    actions = np.where(taken, np.asarray(tr.actions), 0)
    assert np.asarray(tr.valid)[np.arange(BATCH)[:, None], np.arange(actions.shape[1])[None], actions][taken].all()
    assert (np.asarray(tr.length) <= setup["context_len"]).all()
    for b in range(BATCH):
        n = int(tr.length[b])
        assert setup["tok"].decode(np.asarray(tr.tokens[b, :n]).tolist()) == replay_text(setup, b)


def test_rollout_log_probs_equal_teacher_forced_forward(setup):
    s = setup
    tr = s["transcript"]
    tf = jax.jit(lambda st, tr: teacher_forced_logp(s["graphdef"], st, tr, s["table"], temperature=0.7, top_p=0.95))(s["state"], tr)
    mask = np.asarray(tr.action_mask)
    np.testing.assert_allclose(np.asarray(tf)[mask], np.asarray(tr.logp)[mask], atol=1e-5)
    assert (np.asarray(tr.logp)[mask] <= 0).all() and (np.asarray(tr.logp)[mask] < 0).any()
    # Forced tokens (the shared \boxed{ prefix) carry log-probability exactly 0.
    assert (np.asarray(tr.logp)[:, :, : s["table"].prefix_len] == 0).all()


@pytest.mark.slow
def test_cutting_to_the_used_prefix_changes_no_value_or_gradient(setup):
    """A transcript with twice the slots runs its teacher-forced pass, and a gradient taken inside
    ``on_used_prefix`` (as the train step does), on the first half only; values and gradients equal the uncut
    pass over the original slots."""
    s = setup
    tr, vocab = s["transcript"], s["codec"].token_ids
    slots = tr.tokens.shape[1]
    padded = tr.replace(tokens=jnp.pad(tr.tokens, ((0, 0), (0, slots)), constant_values=s["tok"].pad_id))
    assert prefix_sizes(2 * slots)[0] == slots

    def forced(st, t, cut):
        return teacher_forced(s["graphdef"], st, t, s["table"], 0.7, 0.95, observation_vocab=vocab, cut_to_used=cut)

    def loss(st, t):
        out = forced(st, t, False)
        return (out.logp * tr.action_mask).sum() + out.observation_nll

    whole, cut = jax.jit(lambda st: (forced(st, tr, False), forced(st, padded, True)))(s["state"])
    for a, b in zip(whole, cut):
        if a is not None:  # no answers here
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    grads, cut_grads = jax.jit(lambda st: (jax.grad(loss)(st, tr),
                                           on_used_prefix(padded, lambda t: jax.grad(loss)(st, t))))(s["state"])
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(cut_grads)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    assert max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads)) > 0


def test_observation_loss_scores_only_observation_tokens_of_the_sub_vocabulary(setup):
    """The auxiliary loss equals a direct next-token cross-entropy over the env's observation tokens, with
    action slots skipped, and leaves the action log-probs unchanged."""
    s = setup
    tr, vocab = s["transcript"], s["codec"].token_ids
    # jitted: eager dispatch of the bucketed passes is slow on 2 cores
    out = jax.jit(lambda st, tr: teacher_forced(s["graphdef"], st, tr, s["table"], 0.7, 0.95,
                                                observation_vocab=vocab))(s["state"], tr)
    logits = np.asarray(jax.jit(lambda st, tr: nnx.merge(s["graphdef"], st)(
        tr.tokens, tr.positions, None, tr.token_mask)[0])(s["state"], tr))
    tokens, starts, amask = np.asarray(tr.tokens), np.asarray(tr.action_start), np.asarray(tr.action_mask)
    total, count = 0.0, 0
    for b in range(BATCH):
        action_slots = {int(starts[b, t]) + i for t in range(amask.shape[1]) for i in range(amask.shape[2]) if amask[b, t, i]}
        for slot in range(1, int(tr.length[b])):
            if slot in action_slots or tokens[b, slot] not in vocab:
                continue
            sub = logits[b, slot - 1, vocab]
            total += np.log(np.exp(sub - sub.max()).sum()) + sub.max() - logits[b, slot - 1, tokens[b, slot]]
            count += 1
    assert count > 10 * BATCH
    np.testing.assert_allclose(float(out.observation_nll), total / count, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.logp), np.asarray(jax.jit(lambda st, tr: teacher_forced_logp(
        s["graphdef"], st, tr, s["table"], 0.7, 0.95))(s["state"], tr)))


def test_answer_log_prob_replays_the_answer_on_the_action_trie(setup):
    """Each turn's answer log-probability equals a direct computation from the forward logits: the answer's
    tokens under the plain constrained distribution (temperature 1), up to and including the first token where
    it departs from the sampled action. Row 0's answer is its own first action, so that turn scores it whole."""
    s = setup
    tr, env, table = s["transcript"], s["env"], s["table"]
    actions = np.asarray(tr.actions)
    answers = np.array([actions[0, 0]] + [(actions[b, 0] + 1 + b) % env.num_actions for b in range(1, BATCH)], np.int32)
    out = jax.jit(lambda st, tr, a: teacher_forced(s["graphdef"], st, tr, table, 0.7, 0.95, answers=a))(
        s["state"], tr, answers)
    logits = np.asarray(jax.jit(lambda st, tr: nnx.merge(s["graphdef"], st)(
        tr.tokens, tr.positions, None, tr.token_mask)[0])(s["state"], tr))
    all_tokens, starts = np.asarray(table.tokens), np.asarray(tr.action_start)
    sampled, amask, valid = np.asarray(tr.action_tokens), np.asarray(tr.action_mask), np.asarray(tr.valid)
    scored = np.asarray(out.answer_scored)
    np.testing.assert_array_equal(scored, amask.any(-1) & valid[np.arange(BATCH), :, answers])  # [B, T]
    assert scored[:, 0].all()
    for b in range(BATCH):
        answer = all_tokens[answers[b]]
        for t in np.flatnonzero(scored[b]):
            alive, expected = valid[b, t].copy(), 0.0
            for i in range(amask.shape[2]):
                if not amask[b, t, i] or answer[i] == table.pad_id:
                    break
                allowed = np.unique(all_tokens[alive, i])
                row = logits[b, starts[b, t] + i - 1]
                expected += row[answer[i]] - (np.log(np.exp(row[allowed] - row[allowed].max()).sum()) + row[allowed].max())
                if answer[i] != sampled[b, t, i]:
                    break
                alive &= all_tokens[:, i] == answer[i]
            np.testing.assert_allclose(float(out.answer_logp[b, t]), expected, rtol=1e-5, atol=1e-5)
    # Row 0, turn 0: the answer is the sampled action, so its log-probability is the whole action's (temperature 1).
    whole = np.asarray(jax.jit(lambda st, tr: teacher_forced_logp(s["graphdef"], st, tr, table))(s["state"], tr))
    np.testing.assert_allclose(float(out.answer_logp[0, 0]), whole[0, 0].sum(), rtol=1e-5)
    assert float(out.answer_logp[0, 0]) < 0


@pytest.mark.slow
def test_full_context_stops_the_trial_and_keeps_earned_rewards():
    s = play("game:GuessTheNumber-v0-easy", context_len=170, cap=12, intro=False)
    tr = s["transcript"]
    assert np.asarray(tr.truncated).all(), "170 tokens cannot hold 12 turns"
    taken = np.asarray(tr.taken)
    first_skipped = taken.argmin(axis=1)
    assert (first_skipped > 0).all() and all(not taken[b, first_skipped[b]:].any() for b in range(BATCH))
    assert (np.asarray(tr.length) <= 170).all()
    for b in range(BATCH):  # the kept prefix is still the exact text of the turns played
        n = int(tr.length[b])
        assert s["tok"].decode(np.asarray(tr.tokens[b, :n]).tolist()) == replay_text(s, b)
    assert (np.asarray(tr.rewards)[~taken] == 0).all()


def test_match_suffix_finds_the_action_that_ends_the_window():
    env, _ = envs.make_trial("game:GuessTheNumber-v0-hard")
    tok = WordTokenizer()
    table = ActionTable(env, tok)
    width = table.max_len

    def window(text):
        ids = tok.encode(text)[-width:]
        return jnp.asarray([-1] * (width - len(ids)) + ids, jnp.int32)

    wins = jnp.stack([window("so \\boxed{17}"), window("\\boxed{5}"), window("\\boxed{17} and"), window("boxed{17}"), window("\\boxed{99}")])
    matched, action = table.match_suffix(wins)
    np.testing.assert_array_equal(np.asarray(matched), [True, True, False, False, False])
    np.testing.assert_array_equal(np.asarray(action), [16, 4, -1, -1, -1])


@pytest.fixture(scope="module")
def free_setup():
    env, params = envs.make_trial("game:GuessTheNumber-v0-easy", total_step_cap=4, intro=False)
    tok = WordTokenizer()
    codec, table = Codec(env, tok), ActionTable(env, tok)
    budget = context_budget(env, codec, 8)
    graphdef, state = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    _, trials = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), BATCH), params)
    spec = RolloutSpec(env=env, env_params=params, codec=codec, table=table, budget=budget,
                       context_len=budget.worst_case, free_tokens=8)
    tr = jax.jit(lambda st, key: rollout(graphdef, st, spec, key, trials, Sampling(temperature=0.8)))(
        state, jax.random.PRNGKey(3))
    return dict(env=env, params=params, table=table, graphdef=graphdef, state=state, trials=trials, tok=tok, transcript=tr)


@pytest.mark.slow
def test_free_decoding_log_probs_and_format_errors(free_setup):
    s = free_setup
    tr = s["transcript"]
    mask = np.asarray(tr.action_mask)
    assert mask.all(), "an untrained model never closes a \\boxed{}, so every turn writes all 8 tokens"
    np.testing.assert_array_equal(np.asarray(tr.actions), -1)
    tf = jax.jit(lambda st, tr: teacher_forced_logp(s["graphdef"], st, tr, s["table"], 0.8, 1.0, free=True))(s["state"], tr)
    np.testing.assert_allclose(np.asarray(tf)[mask], np.asarray(tr.logp)[mask], atol=1e-5)
    # The context holds each observation, then the generated text; the env answered with a format error.
    env, params = s["env"], s["params"]
    for b in range(BATCH):
        state = jax.tree.map(lambda x: x[b], s["trials"])
        text = []
        for t in range(env.total_step_cap):
            text.append(env.render_text(state))
            text.append(s["tok"].decode(np.asarray(tr.action_tokens[b, t]).tolist()))
            _, state, _, _, _ = env.step_env(jax.random.PRNGKey(0), state, jnp.int32(-1), params)
            assert "did not provide a valid action" in env.render_text(state) or bool(state.trial_done)
        n = int(tr.length[b])
        assert s["tok"].decode(np.asarray(tr.tokens[b, :n]).tolist()) == "".join(text)


@pytest.mark.slow
def test_chat_format_wraps_turns_and_keeps_log_probs(tmp_path_factory):
    from metarl_jax.text import HFTokenizer
    from metarl_jax.text.chat import chat_wrap
    from metarl_jax.text.tiny import make_bpe_tokenizer

    env, params = envs.make_trial("game:GuessTheNumber-v0-easy", total_step_cap=4, intro=False)
    texts = [env.pieces_text([i]) for i in range(len(env.pieces))] + [env.action_text(i) for i in range(env.num_actions)]
    tok = HFTokenizer(make_bpe_tokenizer(texts * 4, str(tmp_path_factory.mktemp("bpe")), vocab_size=400))
    wrap = chat_wrap(tok)
    assert [tok.decode(list(w)) for w in (wrap.open, wrap.close, wrap.end)] == [
        "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n"]
    codec, table = Codec(env, tok), ActionTable(env, tok)
    budget = context_budget(env, codec, table.max_len, wrap.per_turn)
    graphdef, state = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    _, trials = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), BATCH), params)
    spec = RolloutSpec(env=env, env_params=params, codec=codec, table=table, budget=budget,
                       context_len=budget.worst_case, chat=wrap)
    tr = jax.jit(lambda st: rollout(graphdef, st, spec, jax.random.PRNGKey(2), trials))(state)
    for b in range(BATCH):
        state_b = jax.tree.map(lambda x: x[b], trials)
        turns = []
        for t in range(env.total_step_cap):
            action = int(tr.actions[b, t])
            turns.append(f"<|im_start|>user\n{env.render_text(state_b)}<|im_end|>\n<|im_start|>assistant\n{env.action_text(action)}")
            _, state_b, _, _, _ = env.step_env(jax.random.PRNGKey(0), state_b, jnp.int32(action), params)
        n = int(tr.length[b])
        assert tok.decode(np.asarray(tr.tokens[b, :n]).tolist()) == "<|im_end|>\n".join(turns)
    tf = jax.jit(lambda st: teacher_forced_logp(graphdef, st, tr, table))(state)
    mask = np.asarray(tr.action_mask)
    np.testing.assert_allclose(np.asarray(tf)[mask], np.asarray(tr.logp)[mask], atol=1e-5)
