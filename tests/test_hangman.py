"""Hangman: rules against a pure-Python reference, the word list, the oracle, the exact rate of random play,
text rendering, and the task persisting across the episodes of a trial."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (binomial_tolerance, index_tree, play_actions,
                     random_valid_policy, replay_episode_one, run_trials)
from metarl_jax import envs
from metarl_jax.envs.base import FORMAT_ERROR, OUT_OF_TURNS, RUNNING, WON
from metarl_jax.envs.words import load_words

ENV_ID = "game:Hangman-v0-easy"


@pytest.fixture(scope="module")
def game():
    return envs.make(ENV_ID)


def py_hangman(secret, guesses, max_turns=10):
    """Independent reference: per turn (status, clause, board), until the episode ends."""
    shown, out = set(), []
    for t, guess in enumerate(guesses, 1):
        if guess == secret:
            out.append((WON, "win", None))
            break
        if len(guess) > 1:
            clause = "wrong word"
        elif guess in shown:
            clause = "repeat"
        else:
            clause = "hit" if guess in secret else "miss"
            shown.add(guess)
        board = " ".join(c.upper() if c in shown else "_" for c in secret)
        if t == max_turns:
            out.append((OUT_OF_TURNS, "max turns", None))
            break
        out.append((RUNNING, clause, board))
    return out


CLAUSES = {"which is in the word.": "hit", "which is not in the word.": "miss",
           "which you already guessed before.": "repeat", "which is not the secret word.": "wrong word"}


def parse_text(text):
    """(clause, board) from an observation of ours."""
    if text.startswith("Correct!"):
        return "win", None
    if text == "You have reached the maximum number of turns.":
        return "max turns", None
    m = re.fullmatch(r"At turn \d+, you guessed the (?:letter|word) [A-Z]+, (.*)\nBoard: (.*)", text)
    return CLAUSES[m.group(1)], m.group(2)


# ---------------------------------------------------------------- rules


def test_word_list_and_actions(game):
    env, _ = game
    words = load_words(3)
    assert len(words) == 158 and words == sorted(set(words))
    assert all(re.fullmatch(r"[a-z]{3}", w) for w in words)
    assert env.num_actions == 26 + 158 and env.words == words
    assert env.action_text(4) == "\\boxed{e}" and env.action_text(26 + words.index("cat")) == "\\boxed{cat}"
    assert env.parse_action("\\boxed{ CAT }") == 26 + words.index("cat") and env.parse_action("\\boxed{E}") == 4
    assert env.parse_action("\\boxed{zzz}") == -1
    with pytest.raises(ValueError):
        load_words(4)


def test_scripted_episode(game):
    env, params = game
    step = jax.jit(env.step_env)
    _, s = env.reset_to_task(jax.random.PRNGKey(0), jnp.int32(env.words.index("cat")), params)
    assert env.render_text(s).endswith("\nBoard: _ _ _\n")
    texts = []
    for a in ["a", "a", "z", "dog", "c", "t"]:
        _, s, r, term, _ = step(jax.random.PRNGKey(0), s, env.parse_action("\\boxed{%s}" % a), params)
        assert float(r) == 0.0 and not bool(term)
        texts.append(env.render_text(s))
    assert texts == [
        "At turn 1, you guessed the letter A, which is in the word.\nBoard: _ A _",
        "At turn 2, you guessed the letter A, which you already guessed before.\nBoard: _ A _",
        "At turn 3, you guessed the letter Z, which is not in the word.\nBoard: _ A _",
        "At turn 4, you guessed the word DOG, which is not the secret word.\nBoard: _ A _",
        "At turn 5, you guessed the letter C, which is in the word.\nBoard: C A _",
        "At turn 6, you guessed the letter T, which is in the word.\nBoard: C A T",  # fully revealed: not a win
    ]
    _, s2, r, term, _ = step(jax.random.PRNGKey(0), s, env.parse_action("\\boxed{cat}"), params)
    assert int(s2.status) == WON and float(r) == 1.0 and bool(term)
    assert env.render_text(s2) == "Correct! The secret word is CAT. You guessed it in 7 turns."
    _, s3, _, term, _ = step(jax.random.PRNGKey(0), s, -1, params)
    assert int(s3.status) == FORMAT_ERROR and bool(term)


def test_rules_match_python_reference(game):
    env, params = game
    rng = np.random.default_rng(0)
    n, t_max = 300, 10
    tasks = rng.integers(0, env.num_words, n)
    actions = np.zeros((n, t_max), np.int64)
    for i, task in enumerate(tasks):
        secret = env.words[task]
        for t in range(t_max):
            u = rng.random()
            if u < 0.35:
                actions[i, t] = ord(secret[rng.integers(3)]) - ord("a")  # a letter of the secret (repeats likely)
            elif u < 0.75:
                actions[i, t] = rng.integers(26)
            elif u < 0.95:
                actions[i, t] = 26 + rng.integers(env.num_words)
            else:
                actions[i, t] = 26 + task
    states = jax.tree.map(np.asarray, play_actions(env, params, tasks, actions))
    for i, task in enumerate(tasks):
        expected = py_hangman(env.words[task], [env.action_contents[a] for a in actions[i]])
        for t, (status, clause, board) in enumerate(expected):
            state = index_tree(states, (i, t))
            assert int(state.status) == status
            assert parse_text(env.render_text(state)) == (clause, board)
        assert int(index_tree(states, (i, t_max - 1)).status) == expected[-1][0]


# ---------------------------------------------------------------- policies


def test_oracle_wins_every_word_at_turn_one(game):
    env, params = game
    tasks = np.arange(env.num_words)
    states = play_actions(env, params, tasks, (26 + tasks)[:, None])
    assert (np.asarray(states.status)[:, 0] == WON).all()
    _, infos, _ = run_trials(env, params, lambda k, s: env.oracle_action(k, s), jax.random.PRNGKey(1), 500, 1)
    assert np.asarray(infos["success"]).all()


def test_random_policy_matches_analytic_rate(game):
    env, params = game
    # Uniform over not-yet-guessed letters and words: every turn removes one of the 184 actions, and only the
    # secret word wins, so the episode is won iff the secret is among the first 10 of 184 draws without
    # replacement: 10 / 184.
    p = 10 / (26 + 158)
    _, infos, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(2), 4000, 10)
    rate = float(np.asarray(infos["success"]).any(axis=0).mean())
    assert abs(rate - p) < binomial_tolerance(p, 4000)


def test_same_task_across_episodes():
    replay = replay_episode_one(*envs.make_trial(ENV_ID), jax.random.PRNGKey(3), 128)
    assert replay["ended2"].all(), "episode 2 did not finish within the trial's step cap"
    assert replay["won1"].all() and replay["won2"].all()


# ---------------------------------------------------------------- text
