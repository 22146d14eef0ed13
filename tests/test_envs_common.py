"""Checks every registered env against the suite's contract.

1. jit(vmap) with a batch of 1024, for the bare game (gymnax auto-reset) and the multi-episode trial, with
   tokens rendered by the shipped word vocabulary; the same key gives the same result (no hidden randomness).
2. Deterministic games keep their task across episodes: the oracle's winning actions of episode 1, replayed
   in episode 2, win again.
3. Property test (hypothesis): random action sequences, format errors included, never break the invariants.
"""

import functools
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import replay_episode_one, slow_if_heavy
from metarl_jax import envs
from metarl_jax.baselines import random_policy
from metarl_jax.agents.context import context_budget
from metarl_jax.text import Codec, WordTokenizer

# METARL_TEST_ENVS=id1,id2 restricts these tests to some envs while developing one.
ALL_IDS = os.environ.get("METARL_TEST_ENVS", ",".join(envs.registered())).split(",")
BATCH = 1024


@functools.lru_cache(maxsize=None)
def word_tokenizer():
    return WordTokenizer()


@functools.lru_cache(maxsize=None)
def trial_and_codec(env_id, reflection=False, repeat_opening=True):
    env, params = envs.make_trial(env_id, reflection=reflection, repeat_opening=repeat_opening)
    return env, params, Codec(env, word_tokenizer())


def test_no_python_randomness_in_envs():
    src = pathlib.Path(envs.__file__).parent
    for path in src.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import random|from random import)", text, re.M), path
        assert "np.random" not in text and "numpy.random" not in text, path


@pytest.mark.parametrize("env_id", ALL_IDS)
@pytest.mark.slow
def test_jit_vmap_batch_1024(env_id):
    env, params, codec = trial_and_codec(env_id)
    game = env.env

    @jax.jit
    def run(key):
        keys = jax.random.split(key, BATCH)
        _, gstate = jax.vmap(game.reset, in_axes=(0, None))(keys, params)
        _, tstate = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
        policy = jax.vmap(random_policy(env))
        gpolicy = jax.vmap(random_policy(game))

        def body(carry, t):
            gstate, tstate = carry
            ks = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
            _, gstate, greward, _, _, _ = jax.vmap(game.step, in_axes=(0, 0, 0, None))(ks, gstate, gpolicy(ks, gstate), params)
            obs, tstate, treward, _, _ = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))(ks, tstate, policy(ks, tstate), params)
            tokens, lengths = jax.vmap(codec.tokens)(obs)
            return (gstate, tstate), (greward, treward, tokens.max(), tokens.min(), lengths.max())

        _, out = jax.lax.scan(body, (gstate, tstate), jnp.arange(env.total_step_cap))
        return out

    greward, treward, tmax, tmin, lmax = run(jax.random.PRNGKey(0))
    assert greward.shape == (env.total_step_cap, BATCH)
    assert set(np.unique(np.asarray(greward))) <= {0.0, 1.0}
    assert set(np.unique(np.asarray(treward))) <= {0.0, 1.0}
    assert int(tmin.min()) >= 0 and int(tmax.max()) < codec.tokenizer.vocab_size and int(lmax.max()) <= codec.max_len
    again = run(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(again[1]), np.asarray(treward))


DETERMINISTIC = [i for i in ALL_IDS if envs.make(i)[0].deterministic]


@pytest.mark.parametrize("env_id", [slow_if_heavy(i) for i in DETERMINISTIC])
def test_winning_actions_of_episode_one_win_episode_two(env_id):
    replay = replay_episode_one(*envs.make_trial(env_id, reflection=False), jax.random.PRNGKey(7), 1024)
    won1, won2 = replay["won1"], replay["won2"]
    assert won1.mean() > 0.3, f"the oracle should win episode 1 of {env_id} often, won {won1.mean():.2f}"
    np.testing.assert_array_equal(won2[won1], True)


ANSWERED = [i for i in ALL_IDS if envs.make(i)[0].has_answer_action]


def test_only_the_single_answer_games_have_an_answer_action():
    games = {i.split(":")[-1].split("-")[0] for i in envs.registered() if envs.make(i)[0].has_answer_action}
    assert games == {"GuessTheNumber", "Wordle", "Mastermind", "Hangman"}
    env, _ = envs.make_trial("maze")
    assert not env.has_answer_action
    with pytest.raises(NotImplementedError, match="no single answer action"):
        env.answer_action(jnp.int32(0))


@pytest.mark.parametrize("env_id", ANSWERED)
def test_answer_action_wins_on_any_turn(env_id):
    """The answer action wins the first turn of episode 1, and of episode 2 after a losing first episode."""
    trial, params = envs.make_trial(env_id, reflection=False)
    keys = jax.random.split(jax.random.PRNGKey(3), 64)

    def play(key):
        k_task, k_reset, k_step = jax.random.split(key, 3)
        task = trial.sample_task(k_task, params)
        answer = trial.answer_action(task)
        _, state = trial.reset_to_task(k_reset, task, params)
        _, _, r_first, _, _ = trial.step_env(k_step, state, answer, params)
        # A losing first episode (valid actions other than the answer, until the episode ends), then the answer.
        def wrong(state, k):
            valid = trial.valid_actions(state).at[answer].set(False)
            action = jax.random.choice(k, valid.shape[0], p=valid / valid.sum())
            _, state, _, _, _ = trial.step_env(k, state, action, params)
            return state, state.episode_index
        state, episodes = jax.lax.scan(wrong, state, jax.random.split(k_step, trial.env.default_max_turns))
        _, _, r_later, _, _ = trial.step_env(k_step, state, answer, params)
        return r_first, r_later, episodes[-1]

    r_first, r_later, episode = jax.jit(jax.vmap(play))(keys)
    assert (np.asarray(r_first) == 1.0).all()
    assert (np.asarray(episode) >= 1).all(), "the wrong guesses should end episode 1"
    assert (np.asarray(r_later) == 1.0).all()


@functools.lru_cache(maxsize=None)
def jitted(env_id, reflection, repeat_opening=True):
    env, params, codec = trial_and_codec(env_id, reflection, repeat_opening)
    return jax.jit(env.reset), jax.jit(env.step_env), jax.jit(codec.render_tokens)


@given(
    env_id=st.sampled_from(ALL_IDS),
    seed=st.integers(0, 2**31 - 1),
    actions=st.lists(st.integers(-1, 10_000), min_size=1, max_size=40),
    reflection=st.booleans(),
    repeat_opening=st.booleans(),
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.slow
def test_random_actions_keep_invariants(env_id, seed, actions, reflection, repeat_opening):
    env, params, codec = trial_and_codec(env_id, reflection, repeat_opening)
    reset, step, render = jitted(env_id, reflection, repeat_opening)
    budget = context_budget(env, codec, 0)
    key = jax.random.PRNGKey(seed)
    _, state = reset(key, params)
    used = int(render(state)[1])
    task = jax.tree.map(np.asarray, state.inner.task)
    wins_per_episode = {}
    for t, raw in enumerate(actions):
        action = raw if raw < 0 else raw % (env.num_actions + 1)  # includes one out-of-range index
        before = state
        _, state, reward, done, info = step(jax.random.fold_in(key, t), state, jnp.int32(action), params)
        reward = float(reward)
        assert reward in (0.0, 1.0)
        assert bool(info["success"]) == (reward == 1.0)
        if reward:
            assert bool(info["episode_done"])
            k = int(info["episode_index"])
            wins_per_episode[k] = wins_per_episode.get(k, 0) + 1
            assert wins_per_episode[k] == 1, "at most one success per episode"
        steps_before = int(before.total_steps)
        counted = not bool(before.trial_done) and not bool(info["reflection"])
        expected_steps = steps_before + 1 if counted else steps_before
        assert int(state.total_steps) == expected_steps
        assert int(state.total_steps) <= env.total_step_cap
        assert bool(done) == (int(state.total_steps) == env.total_step_cap)
        assert int(state.successes) == sum(wins_per_episode.values())
        assert 0 <= int(state.inner.time) <= int(state.inner.max_turns)
        assert int(state.episode_index) >= int(before.episode_index)
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.inner.task), task)
        if int(state.inner.time) > 0 and env.env.opening_slots:
            opening = np.asarray(env.env.obs_pieces(state.inner))[list(env.env.opening_slots)]
            assert (opening == 0).all(), "a slot declared opening-only shows text after the opening"
        tokens, length = render(state)
        tokens = np.asarray(tokens)
        assert int(length) <= budget.chunk_len, "an observation exceeds the per-view bound"
        if not bool(before.trial_done):
            used += int(length)
            assert used <= budget.worst_case
        assert (tokens >= 0).all() and (tokens < codec.tokenizer.vocab_size).all()
        assert codec.decode(tokens, length) == env.render_text(state)


def test_trial_step_traces_once():
    import chex

    env, params, _ = trial_and_codec(ALL_IDS[0])
    step = jax.jit(chex.assert_max_traces(env.step_env, n=1))
    _, state = env.reset(jax.random.PRNGKey(0), params)
    for t in range(2 * env.total_step_cap):  # across episode boundaries and the end of the trial
        _, state, _, _, _ = step(jax.random.PRNGKey(t), state, jnp.int32(t % env.num_actions), params)
    chex.clear_trace_counter()
