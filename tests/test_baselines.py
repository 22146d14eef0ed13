"""Baseline correctness: random matches its analytic rate, the oracle solves what fits in the turn limit, the
online learners (UCB1, Thompson, opponent counts, Q-learning, elimination) learn across the episodes of a
trial from observable feedback only, and everything is deterministic for a seed.

Rollouts are cached per (env, policy, options) for the whole module, so each compiles once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import binomial_tolerance, slow_if_heavy

from metarl_jax import baselines, envs
from metarl_jax.baselines import OnlinePolicy, as_online
from metarl_jax.envs.frozen_lake import HOLE
from metarl_jax.envs.maze_layouts import UNREACHED, grid_bfs
from metarl_jax.evaluate import episode_wins, play_policy, play_trials

GTN_EASY, GTN_HARD = "game:GuessTheNumber-v0-easy", "game:GuessTheNumber-v0-hard"
MASTERMIND, BANDIT, RPS = "game:Mastermind-v0-random", "BernoulliBandit-misc", "rockpaperscissors"


@functools.cache
def trial_env(env_id: str, cap: int | None = None):
    return envs.make_trial(env_id, total_step_cap=cap)


@functools.cache
def played(env_id: str, policy: str, num: int, cap: int | None = None, seed: int = 0, keep_states: bool = False,
           options: tuple = ()):
    """A :func:`rollout` of ``num`` trials of ``env_id`` with the named baseline, as numpy (cached)."""
    trial, params = trial_env(env_id, cap)
    pol = baselines.make_policy(policy, trial, **dict(options))
    out = play_policy(trial, params, pol, jax.random.PRNGKey(seed), num, trial.total_step_cap, keep_states=keep_states)
    return jax.tree.map(np.asarray, out)


def wins(out: dict, num_episodes: int) -> np.ndarray:
    """bool[N, num_episodes]: episode k of each trial won."""
    return episode_wins({"success": out["infos"]["success"], "episode_index": out["infos"]["episode_index"]},
                           num_episodes)


# ---------------------------------------------------------------- random and oracle


def test_random_matches_its_analytic_rate_on_guess_the_number_easy():
    """GuessTheNumber-easy: secret uniform in 1..10, 4 turns, and the random policy guesses uniformly among the
    numbers not yet guessed this episode (the valid-action mask), whatever the feedback. Its 4 guesses are then
    the first 4 entries of a uniformly random ordering of the 10 numbers, and the secret's place in that ordering
    is uniform, so P(success) = 4/10 = 0.4 in every episode (each episode is at most 4 steps, so the 12-step cap
    always holds episodes 1-3, and episodes of a trial are independent given the secret)."""
    n = 512
    w = wins(played(GTN_EASY, "random", n), 3)
    tol = binomial_tolerance(0.4, n)  # 4 standard errors
    for k in range(3):
        assert abs(w[:, k].mean() - 0.4) < tol, (k, w[:, k].mean())
    assert abs(w.mean() - 0.4) < binomial_tolerance(0.4, w.size)


def test_random_matches_its_analytic_rate_on_the_bandit():
    """2-arm bandit with probabilities {0.1, 0.9}: a uniform pull pays with probability (0.1 + 0.9) / 2 = 0.5, and
    with one pull per episode that is the episode's success rate (50 episodes, 256 trials)."""
    out = played(BANDIT, "random", 256, cap=50)
    rate = out["infos"]["success"].mean()
    assert abs(rate - 0.5) < binomial_tolerance(0.5, out["infos"]["success"].size)


@pytest.mark.parametrize("env_id", [GTN_EASY, GTN_HARD, slow_if_heavy("maze"), "game:Hangman-v0-easy"])
def test_oracle_wins_every_episode_where_the_game_is_solvable_in_the_turn_limit(env_id):
    """Binary search finds 1..10 in 4 and 1..50 in 6 <= 7 guesses; the maze's shortest path (7 or 8 moves) fits
    in 9 turns; Hangman's oracle names the word. So every episode that starts within the cap is won."""
    trial, _ = trial_env(env_id)
    out = played(env_id, "oracle", 64)
    episodes = trial.total_step_cap // trial.env.default_max_turns
    assert wins(out, episodes).all()
    ended = out["infos"]["episode_done"]
    np.testing.assert_array_equal(out["infos"]["success"][ended], True)  # no episode ended in failure


def test_oracle_on_frozen_lake_wins_exactly_when_the_goal_is_within_the_turn_limit():
    """Random 4x4 lakes: the oracle walks a shortest path, so it wins an episode iff the start->goal distance
    around the holes is at most max_turns (8); holes can make it longer."""
    trial, _ = trial_env("FrozenLake-misc")
    out = played("FrozenLake-misc", "oracle", 128)
    maps = out["final"].inner.task  # [N, 4, 4]
    dist = jax.vmap(lambda m: grid_bfs(m != HOLE, jnp.zeros((2,), jnp.int32))[-1, -1])(maps)
    solvable = np.asarray(dist) <= trial.env.default_max_turns
    assert (np.asarray(dist) < UNREACHED).all()
    w = wins(out, 3)
    np.testing.assert_array_equal(w, np.broadcast_to(solvable[:, None], w.shape))


# ---------------------------------------------------------------- bandit learners


def bandit_regret(out: dict) -> np.ndarray:
    """float[T]: the mean (over trials) cumulative pseudo-regret sum_t (max_a p_a - p_{a_t})."""
    probs = out["final"].inner.task  # [N, 2], fixed for the trial
    taken = np.take_along_axis(probs, out["actions"].T, axis=1)  # [N, T]
    return np.cumsum((probs.max(axis=1, keepdims=True) - taken).mean(axis=0))


def growth_exponent(regret: np.ndarray, start: int = 10) -> float:
    """The slope of log R(t) against log t for t = start..T (1 for linear growth)."""
    t = np.arange(1, len(regret) + 1)
    return float(np.polyfit(np.log(t[start - 1:]), np.log(regret[start - 1:]), 1)[0])


@pytest.mark.parametrize("policy", ["ucb1", "thompson"])
def test_bandit_learners_have_sublinear_regret_over_50_episodes(policy):
    """2-arm Bernoulli bandit (gap 0.8), 50 one-pull episodes, 256 trials: the learner's regret in episodes 26-50
    is far below that of episodes 1-25, and log-regret grows with slope well below 1 in log t, while the random
    policy's regret is linear (slope ~1), which shows the check can fail."""
    # Measured (seeds 0-5): UCB1 regret 3.2 in episodes 1-25, 1.35 in 26-50, slope 0.56-0.58; Thompson 1.8, 0.2,
    # slope 0.14-0.17; random 10.1, 10.0, slope 0.99.
    regret = bandit_regret(played(BANDIT, policy, 256, cap=50))
    first, last = regret[24], regret[-1] - regret[24]
    assert last < 0.6 * first, (first, last)
    assert growth_exponent(regret) < 0.7, growth_exponent(regret)
    random_regret = bandit_regret(played(BANDIT, "random", 256, cap=50))
    assert growth_exponent(random_regret) > 0.9
    assert regret[-1] < 0.5 * random_regret[-1]


def test_opponent_counts_learns_the_rock_paper_scissors_opponent():
    """A random move wins a round with probability 1/3 whatever the opponent does, so random play wins an
    episode (3 round wins within 5 rounds) with P(Binomial(5, 1/3) >= 3) = 51/243 = 0.21. Counting the
    opponent's moves across the trial and countering the most frequent one does better, more so in later
    episodes."""
    w = wins(played(RPS, "opponent_counts", 256), 3)
    rates = w.mean(axis=0)
    assert rates[0] > 51 / 243 + 0.1, rates
    assert rates[1:].mean() > rates[0], rates


# ---------------------------------------------------------------- elimination


def test_elimination_carries_the_consistent_interval_across_episodes():
    """GuessTheNumber-hard (1..50, 7 turns, 21 steps). With a random consistent guess, episode 1 is sometimes
    lost; the interval found then carries over, so episode 2 and 3 are won more often and reach 1.0. With the
    median guess (binary search) every episode is won, and from episode 2 on in one guess: the trial return is
    then 1 + (21 - length of episode 1) >= 16."""
    w = wins(played(GTN_HARD, "elimination_random", 256), 3)
    rates = w.mean(axis=0)
    assert rates[0] < 0.9, rates
    assert rates[1] > rates[0] and rates[2] > rates[0], rates
    assert max(rates[1], rates[2]) == 1.0, rates

    out = played(GTN_HARD, "elimination", 64)
    assert wins(out, 3).all()
    assert (out["rewards"].sum(axis=0) >= 16).all()


def test_learners_skip_reflection_turns():
    """With a reflection turn between episodes (its action is ignored and shows no feedback), elimination's
    memory still carries over: binary search wins episode 1 and then every later episode in one guess."""
    trial, params = envs.make_trial(GTN_HARD, reflection=True)
    out = jax.tree.map(np.asarray, play_policy(trial, params, baselines.make_policy("elimination", trial),
                                           jax.random.PRNGKey(0), 64, 2 * trial.total_step_cap))
    info = out["infos"]
    counted = np.diff(info["total_steps"], axis=0, prepend=0) > 0  # [T, N]: counted steps (no reflection, cap)
    assert wins(out, 4).all()
    first_len = ((info["episode_index"] == 0) & counted).sum(axis=0)  # [N]
    later = counted & (info["episode_index"] > 0)
    # After episode 1 every counted step wins its episode (one guess each).
    np.testing.assert_array_equal(info["success"][later], True)
    np.testing.assert_array_equal(out["final"].successes, 1 + trial.total_step_cap - first_len)


def test_elimination_on_mastermind_learns_the_code_across_episodes():
    """Mastermind (3 distinct digits of 1..6, 3 turns per episode): 3 guesses rarely crack the code, but the
    codes consistent with every peg seen so far in the trial shrink across episodes, so episode 3 is always won."""
    rates = wins(played(MASTERMIND, "elimination", 256), 3).mean(axis=0)
    assert rates[0] < 0.6, rates
    assert rates[1] > rates[0] + 0.3, rates
    assert rates[2] == 1.0, rates


# ---------------------------------------------------------------- Q-learning


@pytest.mark.parametrize("env_id", ["FrozenLake-misc", slow_if_heavy("maze")])
def test_q_learning_improves_across_episodes(env_id):
    """The maze / lake is fixed for the trial: the Q-table learns where the holes and dead ends are (and, in
    ``maze``, whose goal is never told, where the goal is), so later episodes succeed more often than the first
    (256 trials; the gap is several standard errors)."""
    rates = wins(played(env_id, "q_learning", 256), 3).mean(axis=0)
    # Measured: FrozenLake 0.37, 0.43, 0.50; maze 0.27, 0.47, 0.77 (episodes 1-3).
    assert rates[1:].mean() > rates[0], rates
    assert rates[2] > rates[0] + 0.06, rates


@pytest.mark.slow
def test_q_learning_uses_the_goal_only_where_it_is_shown():
    """``maze-goal-shown`` tells the goal's position, and the default goal-distance optimism uses it: episode 1 is
    won far more often than with the constant optimism that ``maze`` (goal never told) must use, which refuses
    the goal-distance one."""
    # Measured: 0.69, 0.74, 0.76 with the goal's distance; 0.06, 0.11, 0.18 with the constant.
    informed = wins(played("maze-goal-shown", "q_learning", 256), 3).mean(axis=0)
    constant = wins(played("maze-goal-shown", "q_learning", 256, options=(("init", "constant"),)), 3).mean(axis=0)
    assert informed[0] > constant[0] + 0.4, (informed, constant)
    with pytest.raises(ValueError, match="'maze' never shows"):
        baselines.make_policy("q_learning", trial_env("maze")[0], init="goal_distance")


# ---------------------------------------------------------------- interface, observability, determinism


@pytest.mark.parametrize("env_id,policy", [(GTN_HARD, "elimination_random"), (MASTERMIND, "elimination"),
                                           pytest.param(RPS, "opponent_counts", marks=pytest.mark.slow),
                                           pytest.param(BANDIT, "thompson", marks=pytest.mark.slow)])
def test_online_learners_read_only_observable_feedback(env_id, policy):
    """Replaying a trial's steps through ``update`` with every state's hidden task swapped for another trial's
    gives the same memory, and ``act`` the same actions: the learners never read the task. The replayed memory
    also equals the one the rollout carried (the rollout feeds ``update`` exactly these transitions)."""
    trial, _ = trial_env(env_id, 50 if env_id == BANDIT else None)
    pol = baselines.make_policy(policy, trial)
    out = played(env_id, policy, 16, cap=50 if env_id == BANDIT else None, keep_states=True)
    states, actions, rewards = out["states"], out["actions"].T, out["rewards"].T  # [N, T+1], [N, T], [N, T]
    swapped = states.replace(
        inner=states.inner.replace(task=jax.tree.map(lambda x: np.roll(x, 1, axis=0), states.inner.task)),
        prev=states.prev.replace(task=jax.tree.map(lambda x: np.roll(x, 3, axis=0), states.prev.task)),
    )

    @jax.jit
    def replay(states):
        def one(states, actions, rewards):
            at = lambda t: jax.tree.map(lambda x: x[t], states)
            memory = pol.init(jax.random.PRNGKey(0), at(0))

            def body(memory, t):
                chosen = pol.act(jax.random.PRNGKey(t), memory, at(t))
                return pol.update(memory, at(t), actions[t], rewards[t], at(t + 1)), chosen

            return jax.lax.scan(body, memory, jnp.arange(actions.shape[0]))

        return jax.vmap(one)(states, actions, rewards)

    memory, chosen = jax.tree.map(np.asarray, replay(states))
    memory_swapped, chosen_swapped = jax.tree.map(np.asarray, replay(swapped))
    assert not np.array_equal(np.asarray(jax.tree.leaves(swapped.inner.task)[0]),
                              np.asarray(jax.tree.leaves(states.inner.task)[0]))
    jax.tree.map(np.testing.assert_array_equal, memory_swapped, memory)
    np.testing.assert_array_equal(chosen_swapped, chosen)
    jax.tree.map(np.testing.assert_array_equal, memory, out["memory"])


@pytest.mark.slow
def test_same_seed_same_results_and_other_seed_differs():
    """Online and stateless policies alike: one seed, one result; another seed, other tasks and draws."""
    trial, params = trial_env(BANDIT, 50)
    for policy in ("thompson", "random"):
        a = played(BANDIT, policy, 256, cap=50)
        pol = baselines.make_policy(policy, trial)
        run = jax.jit(lambda key, pol=pol: play_policy(trial, params, pol, key, 256, 50))  # one compile, two seeds
        b, c = (jax.tree.map(np.asarray, run(jax.random.PRNGKey(seed))) for seed in (0, 1))
        np.testing.assert_array_equal(b["actions"], a["actions"])
        np.testing.assert_array_equal(b["infos"]["success"], a["infos"]["success"])
        np.testing.assert_array_equal(b["rewards"], a["rewards"])
        assert not np.array_equal(c["actions"], a["actions"])


def test_online_and_stateless_policies_see_the_same_tasks_for_a_seed():
    """The online learner's init key is folded out of the reset key, so a seed draws the same tasks whichever
    policy plays (paired comparisons across methods)."""
    random_tasks = played(GTN_HARD, "random", 256)["final"].inner.task
    learner_tasks = played(GTN_HARD, "elimination_random", 256)["final"].inner.task
    np.testing.assert_array_equal(learner_tasks, random_tasks)


@pytest.mark.slow
def test_stateless_policies_keep_their_rollout_and_gain_no_memory():
    """A stateless policy plays exactly as before (as_online wraps it with an empty memory and the same keys)."""
    trial, params = trial_env(GTN_EASY)
    policy = baselines.random_policy(trial)
    wrapped = as_online(policy)
    assert isinstance(wrapped, OnlinePolicy) and as_online(wrapped) is wrapped
    out = played(GTN_EASY, "random", 512)
    assert "memory" not in out
    # The actions the rollout reports are the ones the states record.
    states = play_policy(trial, params, policy, jax.random.PRNGKey(0), 8, trial.total_step_cap, keep_states=True)
    after = jax.tree.map(np.asarray, states["states"])
    ended = np.asarray(states["infos"]["episode_done"]).T  # [8, T]
    last = np.where(ended, after.prev.last_action[:, 1:], after.inner.last_action[:, 1:])
    np.testing.assert_array_equal(last, np.asarray(states["actions"]).T)
    table = play_trials(trial, params, policy, jax.random.PRNGKey(0), 8)  # the same 8 trials, summarized
    np.testing.assert_array_equal(table["actions"], np.asarray(states["actions"]))
    np.testing.assert_array_equal(table["success"], np.asarray(states["infos"]["success"]))
    np.testing.assert_array_equal(table["trial_return"], np.asarray(states["rewards"]).sum(axis=0))


def test_registry_names_supported_envs_and_rejects_others():
    assert set(baselines.ONLINE_POLICIES) <= set(baselines.policy_names())
    assert baselines.supported_envs("q_learning") == ["maze", "FrozenLake-misc", "maze-goal-shown"]
    mastermind_variants = {MASTERMIND, "game:Mastermind-v0-two-digits"}
    assert set(baselines.supported_envs("elimination")) == mastermind_variants | {GTN_EASY, GTN_HARD}
    assert BANDIT in baselines.supported_envs("ucb1") and RPS in baselines.supported_envs("thompson")
    maze, _ = trial_env("maze")
    assert baselines.supports("q_learning", maze) and not baselines.supports("ucb1", maze)
    with pytest.raises(ValueError, match="supported envs: rockpaperscissors, BernoulliBandit-misc"):
        baselines.make_policy("ucb1", maze)
    with pytest.raises(ValueError, match="unknown policy"):
        baselines.make_policy("nope", maze)
    with pytest.raises(ValueError, match="choice"):
        baselines.make_policy("elimination", trial_env(GTN_HARD)[0], choice="last")


def test_play_baselines_plays_the_configs_trial_shape():
    """``--baselines`` plays the config's trials (turns per episode, step cap), not the registry's: with 2 turns
    an episode and 3 episodes of -hard, random play's episodes last at most 2 moves and win about 2/50."""
    from metarl_jax.baselines.table import play_baselines

    entry = dict(env_id="game:GuessTheNumber-v0-hard", max_turns_per_episode=2, total_step_cap=6)
    (row,), table = play_baselines([entry], ["random"], num_trials=512, seed=0, log=lambda *_: None)
    assert len(row.episode_rates) == 3 and row.num_trials == 512
    assert 1.0 <= row.episode_length <= 2.0
    assert all(r < 0.1 for r in row.episode_rates)  # the registry's 7 turns would win about 7/50 an episode
    (default,), _ = play_baselines(["game:GuessTheNumber-v0-hard"], ["random"], num_trials=512, seed=0,
                                   num_episodes=3, log=lambda *_: None)
    assert default.episode_length > 3.0 and default.episode_rates[0] > 0.1
    with pytest.raises(Exception, match="did you mean"):
        play_baselines(["game:GuessTheNumber-v0-hardd"], ["random"], log=lambda *_: None)
