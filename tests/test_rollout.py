"""The transformer rollout: valid actions only, and log-probs equal to a teacher-forced forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metarl_jax import envs
from metarl_jax.agents import ActionTable
from metarl_jax.models import Transformer, preset
from metarl_jax.rollout import rollout, teacher_forced_logp
from metarl_jax.text import Codec, WordTokenizer


@pytest.fixture(scope="module")
def setup():
    env, params = envs.make_trial("game:GuessTheNumber-v0-easy", total_step_cap=6, intro=False)
    tok = WordTokenizer()
    codec, table = Codec(env, tok), ActionTable(env, tok)
    model = Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    _, trials = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    run = jax.jit(lambda st, key, trials: rollout(graphdef, st, env, params, codec, table, key, trials, temperature=0.7, top_p=0.95))
    transcript = run(state, jax.random.PRNGKey(1), trials)
    return env, params, table, graphdef, state, transcript, trials


def test_rollout_plays_valid_actions_to_the_cap(setup):
    env, params, table, graphdef, state, tr, trials = setup
    actions = np.asarray(tr.actions)
    assert actions.shape == (3, env.total_step_cap)
    assert (actions >= 0).all() and (actions < env.num_actions).all()
    assert np.asarray(tr.valid)[np.arange(3)[:, None], np.arange(env.total_step_cap)[None], actions].all()
    # Replaying the actions on the host gives the same rewards.
    step = jax.jit(env.step_env)
    for b in range(3):
        s = jax.tree.map(lambda x: x[b], trials)
        for t in range(env.total_step_cap):
            _, s, r, _, _ = step(jax.random.PRNGKey(0), s, jnp.int32(actions[b, t]), params)
            assert float(r) == float(tr.rewards[b, t])
    # Every action's tokens spell its text.
    toks, amask = np.asarray(tr.tokens), np.asarray(tr.action_mask)
    width = toks.shape[1] // env.total_step_cap
    tokenizer = WordTokenizer()
    for t in range(env.total_step_cap):
        seg = slice(t * width, (t + 1) * width)
        assert tokenizer.decode(toks[0, seg][amask[0, seg]].tolist()) == env.action_text(int(actions[0, t]))


def test_rollout_log_probs_equal_teacher_forced_forward(setup):
    env, params, table, graphdef, state, tr, _ = setup
    tf = jax.jit(lambda st, tr: teacher_forced_logp(graphdef, st, tr, table, temperature=0.7, top_p=0.95))(state, tr)
    mask = np.asarray(tr.action_mask)
    np.testing.assert_allclose(np.asarray(tf)[mask], np.asarray(tr.logp)[mask], atol=1e-5)
    assert (np.asarray(tr.logp)[mask] <= 0).all() and (np.asarray(tr.logp)[mask] < 0).any()
