"""A mixture of games as one env: each row plays exactly its own game (dynamics, valid actions, text), the
rollout of a mixed batch writes every row's own game's transcript, and one train step over a mixture logs each
game's metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from metarl_jax.agents.rollout import rollout
from metarl_jax.algos.grpo import GRPOHyper, init_train_state, make_train_step
from metarl_jax.envs.mixture import MixtureKey
from metarl_jax.models import Transformer, preset
from metarl_jax.tasks import build_mixture, build_task
from metarl_jax.text import WordTokenizer

GAMES = [("game:GuessTheNumber-v0-easy", 4), ("game:Mastermind-v0-random", 3), ("rockpaperscissors", 5)]


@pytest.fixture(scope="module")
def mix():
    tok = WordTokenizer()
    tasks = [build_task(dict(env_id=env_id, total_step_cap=cap), tok, split="train", seed=0, num_tasks=4, intro=False)
             for env_id, cap in GAMES]
    return tok, tasks, build_mixture(tasks, tok)


def test_each_row_plays_its_own_game(mix):
    """Random valid actions through the mixture and through each game alone, from the same task key: equal
    rewards, infos, valid actions (mapped to the mixture's action texts) and observation text and tokens."""
    tok, tasks, m = mix
    env, params = m.env, m.env_params
    assert m.table.num_actions == env.num_actions
    for g, task in enumerate(tasks):
        key = task.task_keys[1]
        mtask = env.sample_task(MixtureKey(key=key, game=jnp.int32(g)), params)
        _, mstate = env.reset_to_task(jax.random.PRNGKey(5), mtask, params)
        _, state = task.env.reset_to_task(jax.random.PRNGKey(5), task.env.sample_task(key, task.env_params), task.env_params)
        rng = np.random.default_rng(g)
        for t in range(task.env.total_step_cap):
            valid = np.asarray(task.env.valid_actions(state))
            mvalid = np.asarray(env.valid_actions(mstate))
            assert [env.action_text(i) for i in np.flatnonzero(mvalid)] == sorted(
                (task.env.action_text(i) for i in np.flatnonzero(valid)), key=lambda s: list(map(env.action_text, range(env.num_actions))).index(s))
            text = m.codec.decode(*m.codec.render_tokens(mstate))
            assert text == task.env.render_text(state) == env.render_text(mstate)
            tokens, n = m.codec.render_tokens(mstate)  # the shared table's tokens are the game's own, padded
            own, own_n = task.codec.render_tokens(state)
            assert int(n) == int(own_n) and tokens.shape == (m.codec.max_len,)
            assert np.asarray(tokens)[:int(n)].tolist() == np.asarray(own)[:int(n)].tolist()
            assert (np.asarray(tokens)[int(n):] == m.codec.pad_id).all()
            action = int(rng.choice(np.flatnonzero(valid)))
            maction = env._texts.index(task.env.action_text(action))
            k = jax.random.PRNGKey(100 + t)
            _, state, r, done, info = task.env.step_env(k, state, jnp.int32(action), task.env_params)
            _, mstate, mr, mdone, minfo = env.step_env(k, mstate, jnp.int32(maction), params)
            assert float(r) == float(mr) and bool(done) == bool(mdone)
            assert {k: np.asarray(v).tolist() for k, v in info.items()} == {k: np.asarray(v).tolist() for k, v in minfo.items()}
        assert bool(mstate.trial_done) and int(mstate.total_steps) == task.env.total_step_cap


@pytest.mark.slow
def test_a_mixed_batch_rolls_out_each_rows_game(mix):
    tok, tasks, m = mix
    graphdef, state = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    keys = m.task_keys[jnp.array([0, 4, 8, 1, 5, 9])]  # two tasks of each game
    mtasks = jax.vmap(lambda k: m.env.sample_task(k, m.env_params))(keys)
    _, trials = jax.vmap(m.env.reset_to_task, in_axes=(0, 0, None))(jax.random.split(jax.random.PRNGKey(0), 6), mtasks, m.env_params)
    tr = jax.jit(lambda st: rollout(graphdef, st, m, jax.random.PRNGKey(1), trials,
                                    row_context_len=m.row_context_len(mtasks.game)))(state)
    games = np.asarray(mtasks.game)
    np.testing.assert_array_equal(games, [0, 1, 2, 0, 1, 2])
    taken = np.asarray(tr.taken)
    for b, g in enumerate(games):
        task = tasks[g]
        assert taken[b].sum() == task.env.total_step_cap, "each row plays its own game's step cap"
        row = jax.tree.map(lambda x: x[b], trials)
        env_state = row.states[g]
        text = []
        for t in range(int(taken[b].sum())):
            action_text = m.env.action_text(int(tr.actions[b, t]))
            assert bool(np.asarray(tr.valid)[b, t, int(tr.actions[b, t])])
            text.append(task.env.render_text(env_state) + action_text)
            local = [task.env.action_text(a) for a in range(task.env.num_actions)].index(action_text)
            _, env_state, *_ = task.env.step_env(jax.random.PRNGKey(0), env_state, jnp.int32(local), task.env_params)
        if task.env.deterministic:  # a stochastic game (RPS's opponent) draws with the rollout's own keys
            assert tok.decode(np.asarray(tr.tokens[b, :int(tr.length[b])]).tolist()) == "".join(text)
        assert int(tr.length[b]) <= int(m.context_limits[g])


@pytest.mark.slow
def test_train_step_over_a_mixture_logs_every_game(mix):
    tok, tasks, m = mix
    graphdef, params = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    optimizer = optax.adam(1e-3)
    hp = GRPOHyper.orbit(num_tasks=6, group_size=2, observation_coef=1.0)
    step = jax.jit(make_train_step(graphdef, [m], optimizer, hp))
    state, metrics = step(init_train_state(params, optimizer), jax.random.PRNGKey(0))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    assert sum(int(metrics[t.name]["rows"]) for t in tasks) == 12
    for t in tasks:
        assert metrics[t.name]["episode_success"].shape == (3,)
        assert 0 <= float(metrics[t.name]["mean_return"]) <= t.env.total_step_cap
    assert "observation_nll" in metrics["mixture"]
