"""Mastermind: peg rule against a pure-Python reference, exact success rates of the oracle (host enumeration
over all codes) and of random play, scripted messages, text rendering, and the task persisting in a trial."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import adhoc_word_tokenizer, binomial_tolerance, index_tree, random_valid_policy, run_trials
from metarl_jax import envs
from metarl_jax.envs.base import FORMAT_ERROR, OUT_OF_TURNS, WON
from metarl_jax.envs.mastermind import pegs
from metarl_jax.text.codec import Codec

ENV_ID = "game:Mastermind-v0-random"


@pytest.fixture(scope="module")
def game():
    return envs.make(ENV_ID)


def py_pegs(guess, code):
    """GEM's two-pass rule, written independently: blacks first, then whites from the leftover digits."""
    black = sum(g == c for g, c in zip(guess, code))
    code_left = [c for g, c in zip(guess, code) if g != c]
    white = 0
    for g, c in zip(guess, code):
        if g != c and g in code_left:
            code_left.remove(g)
            white += 1
    return black, white


def host_oracle_outcomes(max_turns=3, length=3, digits=6):
    """For every code (lexicographic), whether 'guess the first code consistent with the feedback' wins."""
    codes = list(itertools.permutations(range(1, digits + 1), length))  # lexicographic for sorted input
    wins = []
    for secret in codes:
        history, won = [], False
        for _ in range(max_turns):
            guess = next(c for c in codes if all(py_pegs(g, c) == fb for g, fb in history))
            if guess == secret:
                won = True
                break
            history.append((guess, py_pegs(guess, secret)))
        wins.append(won)
    return codes, np.array(wins)


def oracle_policy(env):
    return lambda key, state: env.oracle_action(key, state)


def mixed_policy(env, p_format=0.05, p_oracle=0.25, p_repeat=0.15):
    """Format errors, oracle moves, repeats of the last action and uniform valid actions, mixed."""
    rand = random_valid_policy(env)

    def policy(key, state):
        k_u, k_r = jax.random.split(key)
        u = jax.random.uniform(k_u)
        return jnp.select(
            [u < p_format, u < p_format + p_oracle, (u < p_format + p_oracle + p_repeat) & (state.last_action >= 0)],
            [-1, env.oracle_action(key, state), state.last_action],
            rand(k_r, state),
        ).astype(jnp.int32)

    return policy


def collect_states(env, params, policy, key, num, steps):
    """All states of ``num`` episodes (reset, then ``steps`` steps): a pytree batched ``[num, steps + 1]``."""

    @jax.jit
    def run(key):
        def one(key):
            key, k0 = jax.random.split(key)
            _, state = env.reset(k0, params)

            def body(carry, _):
                key, state = carry
                key, k_act, k_step = jax.random.split(key, 3)
                _, state, _, _, _ = env.step_env(k_step, state, policy(k_act, state), params)
                return (key, state), state

            _, states = jax.lax.scan(body, (key, state), None, length=steps)
            return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), state, states)

        return jax.vmap(one)(jax.random.split(key, num))

    return run(key)


def replay_trial(env_id, num, key):
    """Trials of ``env_id``: the oracle plays episode 1, episode 2 replays its actions. Returns (won1, won2)."""
    trial, params = envs.make_trial(env_id)
    env, max_turns = trial.env, trial.env.default_max_turns

    @jax.jit
    def run(key):
        def one(key):
            key, k0 = jax.random.split(key)
            _, state = trial.reset(k0, params)

            def body(carry, _):
                key, state, buf = carry
                key, k_act, k_step = jax.random.split(key, 3)
                first = state.episode_index == 0
                t = jnp.minimum(state.inner.time, max_turns - 1)
                action = jnp.where(first, env.oracle_action(k_act, state.inner), buf[t])
                buf = jnp.where(first, buf.at[t].set(action), buf)
                _, state, _, _, info = trial.step_env(k_step, state, action, params)
                return (key, state, buf), info

            buf = jnp.full((max_turns,), -1, jnp.int32)
            _, infos = jax.lax.scan(body, (key, state, buf), None, length=trial.total_step_cap)
            won = lambda e: jnp.any(infos["episode_success"] & (infos["episode_index"] == e))
            ended = lambda e: jnp.any(infos["episode_done"] & (infos["episode_index"] == e))
            return won(0), won(1), ended(1)

        return jax.vmap(one)(jax.random.split(key, num))

    won1, won2, ended2 = map(np.asarray, run(key))
    assert ended2.all(), "episode 2 did not finish within the trial's step cap"
    return won1, won2


# ---------------------------------------------------------------- rules


def test_action_set_and_codes(game):
    env, params = game
    assert env.num_actions == 216 and env.num_codes == 120
    assert [tuple(c) for c in env.codes.tolist()] == list(itertools.permutations(range(1, 7), 3))
    assert env.action_text(0) == "\\boxed{1 1 1}" and env.action_text(215) == "\\boxed{6 6 6}"
    assert env.parse_action("my guess: \\boxed{ 2  5 1 }") == env.action_contents.index("2 5 1")
    assert env.parse_action("\\boxed{7 1 2}") == -1 and env.parse_action("\\boxed{1 2}") == -1
    for i in range(env.num_actions):
        assert env.parse_action(env.action_text(i)) == i


def test_pegs_match_python_reference_on_all_pairs(game):
    env, _ = game
    b, w = jax.jit(lambda g, c: pegs(g[:, None], c[None], 6))(env.guesses, env.codes)
    b, w = np.asarray(b), np.asarray(w)
    for i, g in enumerate(env.guesses.tolist()):
        for j, c in enumerate(env.codes.tolist()):
            assert (b[i, j], w[i, j]) == py_pegs(g, c), (g, c)


def test_scripted_episode_messages(game):
    env, params = game
    step = jax.jit(env.step_env)
    secret = env.codes.tolist().index([2, 4, 6])
    _, s = env.reset_to_task(jax.random.PRNGKey(0), jnp.int32(secret), params)
    k = jax.random.PRNGKey(1)
    a = env.parse_action
    _, s, r, term, _ = step(k, s, a("\\boxed{6 4 2}"), params)
    assert env.render_text(s) == "At turn 1, you guessed 6 4 2. Black pegs: 1, white pegs: 2."
    _, s, r, term, _ = step(k, s, a("\\boxed{6 4 2}"), params)
    assert env.render_text(s) == "At turn 2, you guessed 6 4 2, which you already guessed before."
    _, s2, r2, term2, _ = step(k, s, a("\\boxed{2 4 6}"), params)  # a win on the last turn is a win
    assert int(s2.status) == WON and float(r2) == 1.0 and bool(term2)
    assert env.render_text(s2) == "Correct! The secret code is 2 4 6. You cracked it in 3 turns."
    _, s3, r3, term3, _ = step(k, s, a("\\boxed{1 1 1}"), params)
    assert int(s3.status) == OUT_OF_TURNS and float(r3) == 0.0 and not bool(term3)
    assert bool(env.is_truncated(s3, params))
    assert env.render_text(s3) == "You have reached the maximum number of turns."
    _, s4, _, term4, _ = step(k, s, -1, params)
    assert int(s4.status) == FORMAT_ERROR and bool(term4)


# ---------------------------------------------------------------- policies


def test_oracle_matches_host_enumeration_per_code(game):
    env, params = game
    codes, host_wins = host_oracle_outcomes()

    @jax.jit
    def play_all(tasks):
        def one(task):
            _, s = env.reset_to_task(jax.random.PRNGKey(0), task, params)

            def body(s, _):
                _, s, _, _, info = env.step_env(jax.random.PRNGKey(0), s, env.oracle_action(None, s), params)
                return s, info["success"]

            return jax.lax.scan(body, s, None, length=3)[1].any()

        return jax.vmap(one)(tasks)

    wins = np.asarray(play_all(jnp.arange(env.num_codes, dtype=jnp.int32)))
    np.testing.assert_array_equal(wins, host_wins)
    # Exact: 41 / 120 codes are found within 3 turns by the first-consistent-code strategy.
    assert 0.2 < host_wins.mean() < 0.8


def test_oracle_rate_on_random_tasks(game):
    env, params = game
    _, host_wins = host_oracle_outcomes()
    _, infos, _ = run_trials(env, params, oracle_policy(env), jax.random.PRNGKey(3), 2000, 3)
    rate = float(np.asarray(infos["success"]).any(axis=0).mean())
    p = float(host_wins.mean())
    assert abs(rate - p) < binomial_tolerance(p, 2000)


def test_random_policy_matches_analytic_rate(game):
    env, params = game
    # Uniform over not-yet-guessed guesses: the secret is among the first 3 of 216 distinct draws.
    _, infos, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(4), 4000, 3)
    rate = float(np.asarray(infos["success"]).any(axis=0).mean())
    assert abs(rate - 3 / 216) < binomial_tolerance(3 / 216, 4000)


def test_same_task_across_episodes():
    won1, won2 = replay_trial(ENV_ID, 256, jax.random.PRNGKey(5))
    assert won1.any() and (~won1).any()
    np.testing.assert_array_equal(won2, won1)  # same code: the replayed guesses get the same pegs


# ---------------------------------------------------------------- text


def test_render_roundtrip_random_states(game):
    env, params = game
    codec = Codec(env, adhoc_word_tokenizer(env))
    states = collect_states(env, params, mixed_policy(env), jax.random.PRNGKey(6), 48, 3)
    flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), states)
    toks, lens = jax.jit(jax.vmap(codec.render_tokens))(flat)
    seen = set()
    for i in range(toks.shape[0]):
        state = index_tree(flat, i)
        text = env.render_text(state)
        assert codec.decode(toks[i], lens[i]) == text
        seen.add(text.split(" ")[0] if int(state.time) else "opening")
        seen.add("repeat" if "already" in text else "pegs" if "Black" in text else "other")
    assert {"opening", "Correct!", "You", "At", "repeat", "pegs"} <= seen, seen
