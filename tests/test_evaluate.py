"""metarl_jax.evaluate: confidence intervals on a synthetic policy of known success probability, determinism,
the step statistics (episode length, invalid actions), regret against the oracle, and the report files."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax import baselines, envs
from metarl_jax.evaluate import (SuccessRow, add_regret, episode_transitions, play_trials, summarize,
                                 write_report)

ENV = "game:GuessTheNumber-v0-easy"  # 1..10, 4 turns per episode, 3 episodes


def synthetic_rollout(rng, p: float, trials: int, episodes: int) -> dict:
    """One step per episode, won with probability p: success / episode_index [T, N], trial_return [N]."""
    success = rng.random((episodes, trials)) < p
    index = np.repeat(np.arange(episodes)[:, None], trials, axis=1)
    return {"success": success, "episode_index": index, "trial_return": success.sum(0).astype(float)}


def test_wilson_intervals_cover_the_true_rate_about_95_percent():
    rng = np.random.default_rng(0)
    for p in (0.1, 0.5, 0.8):
        covered = []
        for _ in range(400):
            row = summarize("synthetic", "coin", synthetic_rollout(rng, p, 256, 3), 3)
            covered += [lo <= p <= hi for lo, hi in row.episode_ci]
        assert 0.93 <= np.mean(covered) <= 0.97, (p, np.mean(covered))
        # any success and the mean return follow from independent episodes
        assert abs(row.any_success - (1 - (1 - p) ** 3)) < 0.1
        assert abs(row.mean_return - 3 * p) < 0.3


@pytest.fixture(scope="module")
def trial():
    return envs.make_trial(ENV)


@pytest.mark.slow
def test_evaluation_is_deterministic_for_a_seed(trial):
    env, params = trial
    policy = baselines.make_policy("random", env)
    rows = [summarize(ENV, "random", play_trials(env, params, policy, jax.random.PRNGKey(seed), 64), 3).as_dict()
            for seed in (3, 3, 4)]
    assert rows[0] == rows[1]
    assert rows[0] != rows[2]


def test_episode_length_and_invalid_rate_of_a_policy_that_repeats_itself(trial):
    """Always guessing 1: the first guess is valid, the three repeats of an episode are not, unless the secret is
    1 (then every episode is won in one move)."""
    env, params = trial
    played = play_trials(env, params, lambda key, state: jnp.int32(0), jax.random.PRNGKey(0), 128)
    row = summarize(ENV, "always-1", played, 3)
    lucky = played["success"].any(axis=0)  # secret 1
    moves = env.total_step_cap * 128
    expected_invalid = (~lucky).sum() * (env.total_step_cap * 3 // 4) / moves
    assert 0 < lucky.sum() < 128
    assert row.invalid_rate == pytest.approx(expected_invalid)
    episodes = lucky.sum() * env.total_step_cap + (~lucky).sum() * 3
    assert row.episode_length == pytest.approx(moves / episodes)
    oracle = summarize(ENV, "oracle", play_trials(env, params, baselines.make_policy("oracle", env), jax.random.PRNGKey(0), 128), 3)
    assert oracle.invalid_rate == 0 and oracle.episode_rates == [1.0, 1.0, 1.0]
    add_regret([row, oracle], {ENV: oracle.episode_rates})
    assert oracle.regret == 0
    assert row.regret == pytest.approx(3 - sum(row.episode_rates)) and row.regret > 2


def test_report_files_round_trip(tmp_path, trial):
    env, params = trial
    row = summarize(ENV, "random", play_trials(env, params, baselines.make_policy("random", env), jax.random.PRNGKey(0), 32), 3)
    table = write_report([row], str(tmp_path / "report"), "title")
    assert "episode length" in table and "invalid actions" in table
    assert [SuccessRow.from_dict(d) for d in json.load(open(tmp_path / "report.json"))] == [row]
    lines = open(tmp_path / "report.csv").read().splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"{ENV},random,32,")
    assert (tmp_path / "report.md").read_text().startswith("# title")


def test_episode_transitions_split_each_episode_by_the_record_before_it():
    """Four trials: a copier (WWW), a learner from a loss (LWW), a learner who forgets (WLW) and a non-learner
    (LLL). Episode 2 after a win: 1 of 2 trials; after a loss: 1 of 2; episode 3 after LL: 0 of 1; a record
    no trial has: no rate."""
    wins = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 1], [0, 0, 0]], bool)
    found = episode_transitions(wins)
    assert found["2 | W"] == (0.5, 2) and found["2 | L"] == (0.5, 2)
    assert found["3 | WW"] == (1.0, 1) and found["3 | LW"] == (1.0, 1) and found["3 | WL"] == (1.0, 1)
    assert found["3 | LL"] == (0.0, 1)
    assert len(found) == 2 + 4
    assert episode_transitions(wins[[0, 3]])["3 | WL"] == (None, 0)
