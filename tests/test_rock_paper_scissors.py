"""Rock Paper Scissors: the task distribution, exact win rates of random and oracle play, ORBIT's rules (every
round played, only the round's result shown) and the verbose variant's (moves and score shown, early stop), the
opponent's strategy fixed across the episodes of a trial, text rendering."""

from math import comb

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import binomial_tolerance, collect_states, random_valid_policy, run_trials
from metarl_jax import envs
from metarl_jax.envs.base import LOST, WON
from metarl_jax.envs.rock_paper_scissors import RockPaperScissorsTask, opponent_move
from metarl_jax.evaluate import play_policy

ENV_ID, VERBOSE_ID = "rockpaperscissors", "rockpaperscissors-verbose"
TURNS = 5
NEED = 3
N = 4000
RESULTS = ("You win this round.\n", "You lose this round.\n", "This round is a draw.\n")


@pytest.fixture(scope="module")
def rps():
    return envs.make(ENV_ID)


@pytest.fixture(scope="module")
def verbose():
    return envs.make(VERBOSE_ID)


def p_at_least(p, n=TURNS, k=NEED):
    """P(Binomial(n, p) >= k), exactly."""
    return sum(comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))


def always(move):
    """The task of an opponent that always plays ``move``."""
    return RockPaperScissorsTask(dominant=jnp.asarray(move, jnp.int32), probs=jnp.eye(3, dtype=jnp.float32)[move])


def test_task_distribution_moments(rps):
    env, params = rps
    tasks = jax.jit(jax.vmap(lambda k: env.sample_task(k, params)))(jax.random.split(jax.random.PRNGKey(0), N))
    dom, probs = np.asarray(tasks.dominant), np.asarray(tasks.probs, np.float64)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5) and (probs >= 0).all()
    p_dom = probs[np.arange(N), dom]
    assert p_dom.min() >= 0.4 - 1e-6 and p_dom.max() <= 1.0 + 1e-6
    # 0.4 + 0.6 * Beta(2, 2): mean 0.7, variance 0.36 / 20 = 0.018.
    assert abs(p_dom.mean() - 0.7) < 4 * np.sqrt(0.018 / N)
    assert abs(p_dom.var() - 0.018) < 0.002
    # Dominant move uniform.
    freq = np.bincount(dom, minlength=3) / N
    assert np.abs(freq - 1 / 3).max() < binomial_tolerance(1 / 3, N)
    # Dirichlet(1, 1) split of the rest: the share of the next move is Uniform(0, 1).
    share = probs[np.arange(N), (dom + 1) % 3] / (1 - p_dom)
    assert abs(share.mean() - 0.5) < 4 * np.sqrt(1 / 12 / N)
    assert abs(share.var() - 1 / 12) < 0.006
    assert abs((share < 0.25).mean() - 0.25) < binomial_tolerance(0.25, N)


def test_opponent_draws_follow_its_strategy(rps):
    env, params = rps
    task = RockPaperScissorsTask(dominant=jnp.asarray(2, jnp.int32), probs=jnp.asarray([0.15, 0.05, 0.8], jnp.float32))
    _, s = env.reset_to_task(jax.random.PRNGKey(0), task, params)
    step = jax.jit(jax.vmap(lambda k: env.step_env(k, s, 0, params)[1].game.opponent))
    moves = np.asarray(step(jax.random.split(jax.random.PRNGKey(1), N)))
    freq = np.bincount(moves, minlength=3) / N
    for m, p in enumerate([0.15, 0.05, 0.8]):
        assert abs(freq[m] - p) < binomial_tolerance(p, N)


@pytest.mark.parametrize("env_id", [ENV_ID, VERBOSE_ID])
def test_uniform_random_play_wins_51_of_243(env_id):
    """Under both rule sets a match is won iff 3 of its 5 rounds are (the early stop only ends it sooner)."""
    env, params = envs.make(env_id)
    final, infos, rewards = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(2), N, TURNS)
    won = np.asarray(infos["success"]).any(axis=0)
    p = 51 / 243
    assert p == pytest.approx(p_at_least(1 / 3))
    print(f"{env_id}: uniform random success {won.mean():.4f}, exact {p:.4f}")
    assert abs(won.mean() - p) < binomial_tolerance(p, N)
    # Regardless of the task: the same rate against strongly and weakly biased opponents.
    p_dom = np.asarray(final.task.probs)[np.arange(N), np.asarray(final.task.dominant)]
    for part in (p_dom > 0.7, p_dom <= 0.7):
        assert abs(won[part].mean() - p) < binomial_tolerance(p, part.sum())


def test_oracle_matches_exact_per_task_rate(rps):
    env, params = rps
    oracle = lambda key, state: env.oracle_action(key, state)  # noqa: E731
    final, infos, _ = run_trials(env, params, oracle, jax.random.PRNGKey(3), N, TURNS)
    won = np.asarray(infos["success"]).any(axis=0)
    p_dom = np.asarray(final.task.probs, np.float64)[np.arange(N), np.asarray(final.task.dominant)]
    expected = np.mean([p_at_least(p) for p in p_dom])
    print(f"oracle success {won.mean():.4f}, exact per-task average {expected:.4f}")
    assert abs(won.mean() - expected) < binomial_tolerance(expected, N)
    # The oracle does better on the more biased opponents, as the per-task rate says.
    hi = p_dom > 0.7
    assert abs(won[hi].mean() - np.mean([p_at_least(p) for p in p_dom[hi]])) < binomial_tolerance(0.9, hi.sum())


def test_orbit_rules_play_every_round_and_score_the_match_at_the_end(rps):
    """ORBIT: the match is scored after round 5 only, even when 3 wins (or 3 losses) come earlier."""
    env, params = rps
    final, infos, rewards = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(4), 2000, TURNS)
    status, time, wins = (np.asarray(x) for x in (final.status, final.time, final.game.wins))
    assert (time == TURNS).all() and set(np.unique(status)) == {WON, LOST}
    np.testing.assert_array_equal(status == WON, wins >= NEED)
    assert np.asarray(rewards)[:-1].sum() == 0  # no reward before the last round
    # Scripted: against an opponent that always plays rock, paper wins every round; the match is still running
    # after 3 wins and is won at round 5; scissors loses every round and the match is lost at round 5 only.
    for action, end in ((1, WON), (2, LOST)):
        _, s = env.reset_to_task(jax.random.PRNGKey(0), always(0), params)
        for t in range(TURNS):
            assert int(s.status) == 0, t
            _, s, r, term, _ = env.step_env(jax.random.PRNGKey(t), s, action, params)
            assert bool(term) == (t == TURNS - 1) and float(r) == float(t == TURNS - 1 and end == WON)
        assert int(s.status) == end


def test_orbit_feedback_is_the_round_result_only(rps):
    """After the opening every observation is exactly one of the three result sentences: no move, no score, no
    match verdict; and the sentence is the round's true result."""
    env, params = rps
    states = collect_states(env, params, random_valid_policy(env), jax.random.PRNGKey(5), 64, TURNS)
    texts = set()
    for i in range(64):
        for t in range(1, TURNS + 1):
            s = jax.tree.map(lambda x: np.asarray(x[i, t]), states)
            text = env.render_text(s)
            opponent, action = int(s.game.opponent), int(s.last_action)
            result = 0 if action == (opponent + 1) % 3 else 2 if action == opponent else 1
            assert text == RESULTS[result]
            assert int(opponent_move(jnp.int32(action), jnp.int32(s.game.result))) == opponent
            texts.add(text)
    assert texts == set(RESULTS)
    # The pieces an observation after the opening can show: the three sentences and nothing else.
    later = {env.pieces[i] for s in env.later_layout for g in s for i in g.ids}
    assert later - set(RESULTS) <= {"At turn ", ", you did not provide a valid action.",
                                    "You have reached the maximum number of turns."} | {str(i) for i in range(101)}
    opening = env.render_text(env.reset(jax.random.PRNGKey(0), params)[1])
    assert "for 5 rounds" in opening and "at least 3 of the rounds" in opening and "only" in opening


def test_verbose_variant_shows_moves_and_score_and_stops_when_decided(verbose):
    env, params = verbose
    final, infos, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(4), 2000, TURNS)
    status, time, wins = (np.asarray(x) for x in (final.status, final.time, final.game.wins))
    assert set(np.unique(status)) == {WON, LOST}  # never truncated
    assert (wins[status == WON] == NEED).all()
    lost = status == LOST
    assert (wins[lost] + TURNS - time[lost] == NEED - 1).all()  # stopped the turn it became hopeless
    assert (time[status == LOST] < TURNS).any()  # early stops do happen
    # Scripted: against an opponent that always plays rock, scissors loses at round 3, paper wins at round 3.
    for action, end in ((2, LOST), (1, WON)):
        _, s = env.reset_to_task(jax.random.PRNGKey(0), always(0), params)
        for t in range(3):
            _, s, r, term, _ = env.step_env(jax.random.PRNGKey(t), s, action, params)
        assert int(s.status) == end and bool(term) and float(r) == float(end == WON)
        text = env.render_text(s)
        move = ["rock", "paper", "scissors"][action]
        score = "you 3, opponent 0" if end == WON else "you 0, opponent 3"
        assert text.startswith(f"Round 3: you played {move}, the opponent played rock.") and score in text
        assert ("you win the match" in text) == (end == WON) and ("you lose the match" in text) == (end == LOST)


def test_opponent_strategy_fixed_across_episodes():
    trial, params = envs.make_trial(ENV_ID)
    out = play_policy(trial, params, random_valid_policy(trial), jax.random.PRNGKey(5), 200, trial.total_step_cap,
                  keep_states=True)
    task = out["states"].inner.task  # [trial, step]
    probs, dom, ep = np.asarray(task.probs), np.asarray(task.dominant), np.asarray(out["infos"]["episode_index"])
    assert (ep.max(0) == 2).all()  # ORBIT's rules: 5 rounds an episode, so exactly 3 episodes in 15 steps
    assert (probs == probs[:, :1]).all() and (dom == dom[:, :1]).all()  # the same opponent in every episode
    assert len(np.unique(probs[:, 0, 0])) == 200  # but a different one in every trial
