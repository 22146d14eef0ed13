"""Wordle: the two-pass G/Y/X rule against a pure-Python reference, scripted messages, the consistent-word
oracle against a host simulation over every secret, the exact rate of random play, text rendering, and the
task persisting across the episodes of a trial."""

import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (binomial_tolerance, oracle_success_per_task,
                     play_actions, random_valid_policy, replay_episode_one, run_trials)
from metarl_jax import envs
from metarl_jax.envs.base import FORMAT_ERROR, OUT_OF_TURNS, RUNNING, WON
from metarl_jax.envs.words import load_words
from metarl_jax.envs.wordle import MARKS, wordle_feedback

ENV_ID = "game:Wordle-v0-hard"


@pytest.fixture(scope="module")
def game():
    return envs.make(ENV_ID)


def py_feedback(guess: str, secret: str) -> str:
    """Reference marks: greens, then yellows left to right from the secret's unmatched letters."""
    marks = ["G" if g == s else "X" for g, s in zip(guess, secret)]
    pool = Counter(s for g, s in zip(guess, secret) if g != s)
    for i, g in enumerate(guess):
        if marks[i] != "G" and pool[g] > 0:
            marks[i] = "Y"
            pool[g] -= 1
    return "".join(marks)


def host_oracle_turns(words, max_turns=10):
    """For every secret: the turn at which 'guess the first word consistent with all marks' wins (0: never)."""
    turns = []
    for secret in words:
        candidates, won_at = list(words), 0
        for t in range(1, max_turns + 1):
            guess = candidates[0]
            if guess == secret:
                won_at = t
                break
            marks = py_feedback(guess, secret)
            candidates = [c for c in candidates if py_feedback(guess, c) == marks]
        turns.append(won_at)
    return np.array(turns)


def codes(words):
    return np.array([[ord(c) - ord("a") for c in w] for w in words], np.int32)


# ---------------------------------------------------------------- rules


def test_word_list_and_actions(game):
    env, _ = game
    words = load_words(5)
    assert len(words) == 595 and words == sorted(set(words)) and env.words == words
    assert all(re.fullmatch(r"[a-z]{5}", w) for w in words)
    assert sum(len(set(w)) < 5 for w in words) > 100  # plenty of words with repeated letters
    assert env.num_actions == 595 and env.action_text(words.index("apple")) == "\\boxed{apple}"
    assert env.parse_action("I say \\boxed{ Apple }") == words.index("apple") and env.parse_action("\\boxed{qqqqq}") == -1


def test_feedback_matches_python_reference(game):
    env, _ = game
    rng = np.random.default_rng(0)
    words = env.words
    pairs = [(words[i], words[j]) for i, j in rng.integers(0, len(words), (3000, 2))]
    pairs += [(w, w) for w in words[:50]]
    repeats = [w for w in words if len(set(w)) < 5]
    pairs += [(repeats[i], repeats[j]) for i, j in rng.integers(0, len(repeats), (1000, 2))]
    # Random strings over a 3-letter alphabet: many repeated letters on both sides.
    small = ["".join("abc"[k] for k in row) for row in rng.integers(0, 3, (6000, 5))]
    pairs += list(zip(small[:3000], small[3000:]))
    pairs += [("speed", "abide"), ("added", "dread"), ("eerie", "there"), ("llama", "hello")]
    guess, secret = codes([p[0] for p in pairs]), codes([p[1] for p in pairs])
    marks = np.asarray(jax.jit(wordle_feedback)(guess, secret))
    got = ["".join(MARKS[m] for m in row) for row in marks]
    assert got == [py_feedback(g, s) for g, s in pairs]
    assert got[-4:] == ["XXYXY", "YYXYG", "YXYXG", "YYXXX"]  # checked by hand


def test_scripted_episode(game):
    env, params = game
    step = jax.jit(env.step_env)
    k = jax.random.PRNGKey(0)
    _, s = env.reset_to_task(k, jnp.int32(env.words.index("apple")), params)
    a = lambda w: env.words.index(w)
    _, s, r, term, _ = step(k, s, a("added"), params)
    assert env.render_text(s) == "At turn 1, you guessed ADDED. Feedback:\nA D D E D\nG X X Y X"
    _, s, r, term, _ = step(k, s, a("added"), params)
    assert env.render_text(s) == "At turn 2, you guessed ADDED, which you already guessed before."
    assert float(r) == 0.0 and not bool(term)
    for w in ["about", "alive", "angle", "paper", "sleep", "apply", "party"]:
        _, s, r, term, _ = step(k, s, a(w), params)
    assert int(s.time) == 9 and int(s.status) == RUNNING
    _, s2, r, term, _ = step(k, s, a("apple"), params)  # a win on the last turn is a win
    assert int(s2.status) == WON and float(r) == 1.0 and bool(term)
    assert env.render_text(s2) == "Correct! The secret word is APPLE. You found it in 10 turns."
    _, s3, r, term, _ = step(k, s, a("about"), params)  # a repeat on the last turn
    assert int(s3.status) == OUT_OF_TURNS and float(r) == 0.0 and not bool(term)
    assert env.render_text(s3) == "You have reached the maximum number of turns."
    _, s4, _, term, _ = step(k, s, -1, params)
    assert int(s4.status) == FORMAT_ERROR and bool(term)


# ---------------------------------------------------------------- policies


def test_guessing_the_secret_wins_at_turn_one(game):
    env, params = game
    tasks = np.arange(env.num_words)
    states = play_actions(env, params, tasks, tasks[:, None])
    assert (np.asarray(states.status)[:, 0] == WON).all()


def test_oracle_matches_host_simulation_per_secret(game):
    env, params = game
    host = host_oracle_turns(env.words)
    won = oracle_success_per_task(env, params, np.arange(env.num_words), 10)
    np.testing.assert_array_equal(np.where(won.any(axis=1), won.argmax(axis=1) + 1, 0), host)
    # Exact: all 595 secrets are found within 10 turns, in 3.61 turns on average (one needs all 10).
    assert (host > 0).all() and abs(host.mean() - 3.605) < 0.01


def test_random_policy_matches_analytic_rate(game):
    env, params = game
    # Uniform over not-yet-guessed words: the secret is among the first 10 of 595 draws without replacement.
    p = 10 / 595
    _, infos, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(2), 4000, 10)
    rate = float(np.asarray(infos["success"]).any(axis=0).mean())
    assert abs(rate - p) < binomial_tolerance(p, 4000)


def test_same_task_across_episodes():
    replay = replay_episode_one(*envs.make_trial(ENV_ID), jax.random.PRNGKey(3), 64)
    assert replay["ended2"].all(), "episode 2 did not finish within the trial's step cap"
    won1, won2 = replay["won1"], replay["won2"]
    assert won1.mean() > 0.9
    np.testing.assert_array_equal(won2, won1)


# ---------------------------------------------------------------- text
