"""Bernoulli bandit text game: parity with gymnax, exact success rates, the task fixed in a trial, text."""

from math import comb

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments.misc.bernoulli_bandit import BernoulliBandit

from helpers import binomial_tolerance, random_valid_policy, run_trials
from metarl_jax import envs
from metarl_jax.evaluate import play_policy


def at_least(k, n, p):
    """P(Binomial(n, p) >= k)."""
    return sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize("pulls,reward_prob", [(1, 0.1), (3, 0.3)])
def test_oracle_and_random_success_rates_are_exact(pulls, reward_prob):
    env, params = envs.make("BernoulliBandit-misc", max_turns=pulls, reward_prob=reward_prob)
    assert not env.deterministic
    need, best = (pulls + 1) // 2, max(reward_prob, 1 - reward_prob)
    n = 4000
    for policy, p in ((env.oracle_action, at_least(need, pulls, best)), (random_valid_policy(env), 0.5)):
        final, infos, rewards = run_trials(env, params, policy, jax.random.PRNGKey(pulls), n, pulls)
        won = np.asarray(infos["success"]).any(axis=0)
        assert abs(won.mean() - p) < binomial_tolerance(p, n)
        # Every episode lasts all its pulls and is decided on the last one.
        np.testing.assert_array_equal(np.asarray(final.time), pulls)
        assert set(np.unique(np.asarray(final.status))) <= {envs.WON, envs.LOST}
        np.testing.assert_array_equal(won, np.asarray(final.game.wins) >= need)


def test_task_and_rewards_are_gymnax_draws():
    env, params = envs.make("BernoulliBandit-misc", reward_prob=0.2)
    gx = BernoulliBandit()
    gx_params = gx.default_params.replace(reward_prob=0.2)
    keys = jax.random.split(jax.random.PRNGKey(0), 1000)
    ours = jax.vmap(env.sample_task, in_axes=(0, None))(keys, params)
    _, theirs = jax.vmap(gx.reset_env, in_axes=(0, None))(keys, gx_params)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs.reward_probs))
    assert 0.4 < float(np.mean(np.asarray(ours)[:, 0] == np.float32(0.2))) < 0.6
    # One pull of each arm with the same step key pays as gymnax's step_env does.
    _, state = jax.vmap(env.reset_to_task, in_axes=(0, 0, None))(keys, ours, params)
    for arm in (0, 1):
        step_keys = jax.random.split(jax.random.PRNGKey(arm + 1), 1000)
        actions = jnp.full((1000,), arm)
        _, _, reward, _, _ = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))(step_keys, state, actions, params)
        _, _, gx_reward, _, _ = jax.vmap(gx.step_env, in_axes=(0, 0, 0, None))(step_keys, theirs, actions, gx_params)
        np.testing.assert_array_equal(np.asarray(reward), np.asarray(gx_reward, np.float32))


def test_probabilities_stay_fixed_across_the_episodes_of_a_trial():
    """Always pulling arm 1 for a 20-episode trial: 20 pulls of ONE arm, so the payout count is bimodal."""
    trial, params = envs.make_trial("BernoulliBandit-misc")
    cap, n = trial.total_step_cap, 3000
    out = play_policy(trial, params, lambda key, state: jnp.int32(0), jax.random.PRNGKey(7), n, cap, keep_states=True)
    rewards, episode = np.asarray(out["rewards"]).T, np.asarray(out["infos"]["episode_index"]).T  # [trial, step]
    tasks = np.asarray(out["states"].inner.task)  # [trial, step]: the reset state, then after each step
    np.testing.assert_array_equal(episode, np.broadcast_to(np.arange(cap), episode.shape))  # one pull per episode
    np.testing.assert_array_equal(tasks, np.broadcast_to(tasks[:, :1], tasks.shape))
    paid = rewards.sum(axis=1)
    # Task fixed: Binomial(20, 0.1) or Binomial(20, 0.9), so 6..14 payouts are rare (they would be the bulk of
    # Binomial(20, 0.5) if the probabilities were redrawn every episode).
    p_mid = at_least(6, cap, 0.1) - at_least(15, cap, 0.1)
    mid = np.mean((paid >= 6) & (paid <= 14))
    assert abs(mid - p_mid) < binomial_tolerance(p_mid, n)
    good = tasks[:, 0, 0] > 0.5  # arm 1 is the 0.9 arm in this trial
    assert abs(good.mean() - 0.5) < binomial_tolerance(0.5, n)
    for mask, p in ((good, 0.9), (~good, 0.1)):  # mean payouts 18 and 2, standard error sqrt(20 * 0.09 / m)
        assert abs(paid[mask].mean() - cap * p) < 4 * np.sqrt(cap * p * (1 - p) / mask.sum())


def test_parse_action_takes_any_case_and_spacing_and_refuses_unknown_arms():
    env, _ = envs.make("BernoulliBandit-misc", max_turns=3)
    assert env.parse_action("\\boxed{ARM  2}") == 1 and env.parse_action("\\boxed{arm 3}") == -1
