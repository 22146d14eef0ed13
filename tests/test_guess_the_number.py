"""GuessTheNumber: rules, analytic success rates of random and binary-search play, text rendering."""

import jax
import numpy as np
import pytest

from helpers import adhoc_word_tokenizer, binomial_tolerance, random_valid_policy, render_roundtrip, run_trials
from metarl_jax import envs
from metarl_jax.text.codec import Codec


@pytest.fixture(scope="module")
def hard():
    return envs.make("game:GuessTheNumber-v0-hard")


def test_random_policy_matches_analytic_rate(hard):
    env, params = hard
    _, infos, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(0), 4000, 7)
    rate = float(np.asarray(infos["success"]).any(axis=0).mean())
    assert abs(rate - 7 / 50) < binomial_tolerance(7 / 50, 4000)


def test_binary_search_always_wins(hard):
    env, params = hard
    final, infos, rewards = run_trials(env, params, env.oracle_action, jax.random.PRNGKey(1), 2000, 7)
    assert np.asarray(infos["success"]).any(axis=0).all()
    assert np.asarray(rewards).sum(axis=0).max() == 1.0


def test_render_roundtrip_random_states(hard):
    env, params = hard
    codec = Codec(env, adhoc_word_tokenizer(env))
    final, _, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(2), 64, 3)
    assert len(render_roundtrip(env, codec, final)) == 64
