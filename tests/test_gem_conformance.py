"""Rule conformance against GEM (PyPI ``gem-llm``), the Python implementation of the same games.

For GuessTheNumber (1..50, 7 turns), Mastermind (3 distinct digits of 1..6, 3 turns), Hangman (3 letters, 10
turns) and Wordle (5 letters, 10 turns), the same secret and the same action texts are played in our env and
in GEM's, a few hundred random sequences per game (numpy Generator, fixed seed). GEM's secret is set by hand
(``Cls.__new__`` and the attributes its ``reset`` would set): its Hangman and Wordle constructors call
``nltk.download``, which is unavailable offline, and its word secrets are upper case. Per step we compare the
success, the end of the episode, the truncation flag and the *content* of the feedback parsed from both texts
(numbers, higher/lower, peg counts, G/Y/X marks, revealed boards, repeated-guess and turn-limit messages).

Known differences, not compared:
  * rewards: GEM's are shaped (partial credit for pegs, greens, revealed letters, a distance bonus at the
    turn limit of GuessTheNumber); ours are 1 on a win, else 0. We compare success instead.
  * GEM sets ``terminated`` *and* ``truncated`` at the turn limit; we set only ``truncated``. We check
    ``ours.terminated == (gem.terminated and not gem.truncated)`` and ``ours.truncated == gem.truncated``.
  * wording and layout (GEM prints guesses as Python lists, Hangman's board under column headers, Wordle's
    marks as a list); GEM's Hangman win message names no turn. The opening rules text is not compared.
  * inputs outside our finite action sets (wrong lengths, out-of-range digits, non-words) are format errors
    for us and wasted turns for GEM; only our actions are played here.
"""

import re

import numpy as np
import pytest

from helpers import index_tree, play_actions
from metarl_jax import envs

pytestmark = pytest.mark.peer
pytest.importorskip("gem")

N_SEQUENCES = 300


def compare(env, params, tasks, actions, make_gem, parse_ours, parse_gem):
    """Plays every sequence in both envs and compares step by step. Returns the feedback kinds seen."""
    states, terminated, truncated, success = play_actions(env, params, tasks, actions, flags=True)
    kinds = set()
    for i in range(len(tasks)):
        gem_env = make_gem(i)
        for t in range(actions.shape[1]):
            text = env.action_text(int(actions[i, t]))
            obs, _, g_term, g_trunc, info = gem_env.step(text)
            ours = env.render_text(index_tree(states, (i, t)))
            where = f"sequence {i}, step {t + 1}, action {text}:\n  ours: {ours!r}\n  GEM:  {obs!r}"
            content = parse_ours(ours)
            assert content == parse_gem(obs, info), where
            assert bool(success[i, t]) == obs.startswith("Congratulations"), where
            assert bool(truncated[i, t]) == bool(g_trunc), where
            assert bool(terminated[i, t]) == (bool(g_term) and not bool(g_trunc)), where
            kinds.add(content[0])
            if g_term or g_trunc:
                break
    return kinds


def gem_object(cls, **attributes):
    obj = cls.__new__(cls)
    for name, value in attributes.items():
        setattr(obj, name, value)
    return obj


MAX = ("max turns",)


# ---------------------------------------------------------------- GuessTheNumber


def test_guess_the_number_matches_gem():
    from gem.envs.game_env.guess_the_number import GuessTheNumberEnv

    env, params = envs.make("game:GuessTheNumber-v0-hard")
    rng = np.random.default_rng(0)
    secrets = rng.integers(1, 51, N_SEQUENCES)
    actions = rng.integers(0, 50, (N_SEQUENCES, 7))
    pick = rng.random((N_SEQUENCES, 7))
    actions = np.where(pick < 0.1, (secrets - 1)[:, None], actions)
    actions[:, 1:] = np.where(pick[:, 1:] > 0.85, actions[:, :-1], actions[:, 1:])  # repeats

    def ours(text):
        if m := re.fullmatch(r"At turn (\d+), you guessed (\d+)\. The secret number is (higher|lower) than \2\.", text):
            return ("hint", int(m[1]), int(m[2]), m[3])
        if m := re.fullmatch(r"At turn (\d+), you guessed (\d+), which you already guessed before\.", text):
            return ("repeat", int(m[1]), int(m[2]))
        if m := re.fullmatch(r"Correct! The secret number is (\d+)\. You found it in (\d+) turns\.", text):
            return ("win", int(m[1]), int(m[2]))
        return MAX if text == "You have reached the maximum number of turns." else ("?", text)

    def gem(text, info):
        if m := re.fullmatch(r"At turn (\d+), you guessed (\d+), and the target number is (higher|lower) than \2\.", text):
            return ("hint", int(m[1]), int(m[2]), m[3])
        if m := re.fullmatch(r"At turn (\d+), you guessed (\d+), which has been already guessed before\.", text):
            return ("repeat", int(m[1]), int(m[2]))
        if m := re.fullmatch(r"Congratulations! You guessed the correct number (\d+) in (\d+) turns\.", text):
            return ("win", int(m[1]), int(m[2]))
        return MAX if text == "You have reached the maximum number of turns." else ("?", text)

    make_gem = lambda i: gem_object(
        GuessTheNumberEnv, min_number=1, max_number=50, max_turns=7, _is_random=False,
        game_number=int(secrets[i]), previous_guesses=set(), turn_count=0,
    )
    kinds = compare(env, params, secrets - 1, actions, make_gem, ours, gem)
    assert kinds == {"hint", "repeat", "win", "max turns"}


# ---------------------------------------------------------------- Mastermind


def digits(s):
    return tuple(int(d) for d in re.findall(r"\d", s))


def test_mastermind_matches_gem():
    from gem.envs.game_env.mastermind import MastermindEnv

    env, params = envs.make("game:Mastermind-v0-random")
    rng = np.random.default_rng(1)
    tasks = rng.integers(0, env.num_codes, N_SEQUENCES)
    actions = rng.integers(0, env.num_actions, (N_SEQUENCES, 3))
    pick = rng.random((N_SEQUENCES, 3))
    actions = np.where(pick < 0.3, env.code_actions[rng.integers(0, env.num_codes, (N_SEQUENCES, 3))], actions)
    actions = np.where(pick > 0.85, env.code_actions[tasks][:, None], actions)
    actions[:, 1:] = np.where((pick[:, 1:] > 0.7) & (pick[:, 1:] <= 0.85), actions[:, :-1], actions[:, 1:])

    def ours(text):
        if m := re.fullmatch(r"At turn (\d+), you guessed ([\d ]+)\. Black pegs: (\d+), white pegs: (\d+)\.", text):
            return ("pegs", int(m[1]), digits(m[2]), int(m[3]), int(m[4]))
        if m := re.fullmatch(r"At turn (\d+), you guessed ([\d ]+), which you already guessed before\.", text):
            return ("repeat", int(m[1]), digits(m[2]))
        if m := re.fullmatch(r"Correct! The secret code is ([\d ]+)\. You cracked it in (\d+) turns\.", text):
            return ("win", digits(m[1]), int(m[2]))
        return MAX if text == "You have reached the maximum number of turns." else ("?", text)

    def gem(text, info):
        p = r"At turn (\d+), you guessed \[([\d, ]+)\]\. This guess receives (\d+) black peg\(s\) and (\d+) white peg\(s\)\."
        if m := re.fullmatch(p, text):
            return ("pegs", int(m[1]), digits(m[2]), int(m[3]), int(m[4]))
        if m := re.fullmatch(r"At turn (\d+), you guessed \[([\d, ]+)\], which has been already guessed before\.", text):
            return ("repeat", int(m[1]), digits(m[2]))
        if m := re.fullmatch(r"Congratulations! You guessed the correct code \[([\d, ]+)\] in (\d+) turns\.", text):
            return ("win", digits(m[1]), int(m[2]))
        return MAX if text == "You have reached the maximum number of turns." else ("?", text)

    make_gem = lambda i: gem_object(
        MastermindEnv, code_length=3, num_numbers=6, duplicate_numbers=False, max_turns=3, _is_random=False,
        game_code=[int(d) for d in env.codes[tasks[i]]], previous_guesses=set(), turn_count=0, milestone=0,
    )
    kinds = compare(env, params, tasks, actions, make_gem, ours, gem)
    assert kinds == {"pegs", "repeat", "win", "max turns"}


# ---------------------------------------------------------------- Hangman


def test_hangman_matches_gem():
    HangmanEnv = pytest.importorskip("gem.envs.game_env.hangman").HangmanEnv

    env, params = envs.make("game:Hangman-v0-easy")
    rng = np.random.default_rng(2)
    tasks = rng.integers(0, env.num_words, N_SEQUENCES)
    actions = np.zeros((N_SEQUENCES, 10), np.int64)
    for i, task in enumerate(tasks):
        secret = env.words[task]
        for t in range(10):
            u = rng.random()
            if u < 0.35:
                actions[i, t] = ord(secret[rng.integers(3)]) - ord("a")
            elif u < 0.75:
                actions[i, t] = rng.integers(26)
            elif u < 0.96:
                actions[i, t] = 26 + rng.integers(env.num_words)
            else:
                actions[i, t] = 26 + task
    clauses = {"which is in the word.": "hit", "which is not in the word.": "miss",
               "which you already guessed before.": "repeat", "which is not the secret word.": "wrong word"}

    def ours(text):
        if m := re.fullmatch(r"At turn (\d+), you guessed the (?:letter|word) ([A-Z]+), (.*)\nBoard: ([A-Z_ ]+)", text):
            return (clauses[m[3]], int(m[1]), m[2], m[4])
        if m := re.fullmatch(r"Correct! The secret word is ([A-Z]+)\. You guessed it in \d+ turns\.", text):
            return ("win", m[1])
        return MAX if text == "You have reached the maximum number of turns." else ("?", text)

    def gem(text, info):
        board_row = info["suffix"].split("\n")[2]  # grid header, then the row of cells
        board = " ".join(board_row.split())
        for kind, p in [
            ("hit", r"At turn (\d+), you successfully guessed a letter '([A-Z])' that is in the secret word\."),
            ("miss", r"At turn (\d+), you guessed a letter '([A-Z])' that is not in the secret word\."),
            ("repeat", r"At turn (\d+), you guessed '([A-Z])', which has been already guessed before\."),
            ("wrong word", r"At turn (\d+), You guessed '([A-Z]+)' which is incorrect\."),
        ]:
            if m := re.fullmatch(p, text):
                return (kind, int(m[1]), m[2], board)
        if m := re.fullmatch(r"Congratulations! You guessed the word '([A-Z]+)' correctly!", text):
            return ("win", m[1])
        return MAX if text == "You have reached the maximum number of turns." else ("?", text)

    make_gem = lambda i: gem_object(
        HangmanEnv, word_length=3, hardcore=False, max_turns=10, _is_random=False,
        secret_word=env.words[tasks[i]].upper(), board=["_"] * 3, guessed_letters=set(), turn_count=0,
    )
    kinds = compare(env, params, tasks, actions, make_gem, ours, gem)
    assert kinds == {"hit", "miss", "repeat", "wrong word", "win", "max turns"}


# ---------------------------------------------------------------- Wordle


def test_wordle_matches_gem():
    WordleEnv = pytest.importorskip("gem.envs.game_env.wordle").WordleEnv

    env, params = envs.make("game:Wordle-v0-hard")
    rng = np.random.default_rng(3)
    tasks = rng.integers(0, env.num_words, N_SEQUENCES)
    actions = rng.integers(0, env.num_words, (N_SEQUENCES, 10))
    # Words that share letters with the secret (same first letter) exercise the duplicate-letter rule.
    by_first = {}
    for j, w in enumerate(env.words):
        by_first.setdefault(w[0], []).append(j)
    pick = rng.random((N_SEQUENCES, 10))
    for i, task in enumerate(tasks):
        near = by_first[env.words[task][0]]
        for t in range(10):
            if pick[i, t] < 0.4:
                actions[i, t] = near[rng.integers(len(near))]
            elif pick[i, t] < 0.5 and t > 0:
                actions[i, t] = actions[i, t - 1]
            elif pick[i, t] > 0.95:
                actions[i, t] = task

    def ours(text):
        if m := re.fullmatch(r"At turn (\d+), you guessed ([A-Z]+)\. Feedback:\n([A-Z ]+)\n([GYX ]+)", text):
            assert m[3] == " ".join(m[2]), text
            return ("marks", int(m[1]), m[2], m[4].replace(" ", ""))
        if m := re.fullmatch(r"At turn (\d+), you guessed ([A-Z]+), which you already guessed before\.", text):
            return ("repeat", int(m[1]), m[2])
        if m := re.fullmatch(r"Correct! The secret word is ([A-Z]+)\. You found it in (\d+) turns\.", text):
            return ("win", m[1], int(m[2]))
        return MAX if text == "You have reached the maximum number of turns." else ("?", text)

    def gem(text, info):
        if m := re.fullmatch(r"At turn (\d+), you guessed ([A-Z]+)\nFeedback:\n([A-Z]+)\n(\[.*\])", text):
            assert m[3] == m[2], text
            return ("marks", int(m[1]), m[2], "".join(re.findall(r"'([GYX])'", m[4])))
        if m := re.fullmatch(r"At turn (\d+), you guessed ([A-Z]+), which has been already guessed before\.", text):
            return ("repeat", int(m[1]), m[2])
        if m := re.fullmatch(r"Congratulations! You guessed the secret word ([A-Z]+) in (\d+) turns\.", text):
            return ("win", m[1], int(m[2]))
        return MAX if text == "You have reached the maximum number of turns." else ("?", text)

    make_gem = lambda i: gem_object(
        WordleEnv, word_length=5, only_real_words=True, max_turns=10, _is_random=False,
        secret_word=env.words[tasks[i]].upper(), previous_guesses=set(), milestones=[0] * 5, turn_count=0,
    )
    kinds = compare(env, params, tasks, actions, make_gem, ours, gem)
    assert kinds == {"marks", "repeat", "win", "max turns"}
