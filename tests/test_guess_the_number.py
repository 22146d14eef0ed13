"""GuessTheNumber: rules, analytic success rates of random and binary-search play, text rendering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import binomial_tolerance, random_valid_policy, run_trials
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


# ---------------------------------------------------------------- text="terse"


@pytest.fixture(scope="module")
def terse_trials():
    from metarl_jax.text import WordTokenizer

    tok = WordTokenizer()
    out = {}
    for style in ("gem", "terse"):
        trial, params = envs.make_trial("game:GuessTheNumber-v0-hard", intro=False, repeat_opening=False, text=style)
        out[style] = (trial, params, Codec(trial, tok))
    return out


def play_trial_texts(trial, params, codec, actions):
    """Plays ``actions`` from one reset (secret 20); returns every observation's text, checked against the codec."""
    from metarl_jax.agents.context import context_budget

    budget = context_budget(trial, codec, 0)
    _, state = trial.reset_to_task(jax.random.PRNGKey(0), np.int32(19), params)
    texts, used = [], 0
    for t, action in enumerate([None] + list(actions)):
        if action is not None:
            _, state, *_ = trial.step_env(jax.random.PRNGKey(t), state, np.int32(action), params)
        tokens, length = codec.render_tokens(state)
        text = trial.render_text(state)
        assert codec.decode(np.asarray(tokens), int(length)) == text
        assert int(length) <= budget.chunk_len
        used += int(length)
        texts.append(text)
    assert used <= budget.worst_case
    return texts


def test_terse_text_renders_one_word_per_turn(terse_trials):
    trial, params, codec = terse_trials["terse"]
    # episode 1: seven wrong guesses (out of turns); episode 2: 30 (lower), 19 (correct); episode 3 starts
    texts = play_trial_texts(trial, params, codec, [0, 1, 2, 3, 4, 5, 6, 29, 19])
    assert texts[0] == "[Episode 1]\nA secret number lies between 1 and 50. You have 7 turns.\n"
    assert texts[1] == " higher\n"
    assert texts[7] == " out of turns\n\n[Episode 2]\n"  # the turn limit, then the next header (no rules again)
    assert texts[8] == " lower\n"
    assert texts[9] == " correct:20\n\n[Episode 3]\n"  # the found secret is restated


def test_terse_restated_secret_shows_only_on_the_winning_turn(terse_trials):
    from metarl_jax.agents.context import context_budget
    from metarl_jax.envs.guess_the_number import _CORRECT, _HIGHER, _LOWER, _REPEAT

    trial, params, codec = terse_trials["terse"]
    game = trial.env
    _, state = trial.reset_to_task(jax.random.PRNGKey(0), np.int32(30), params)  # secret 31
    for code in (_HIGHER, _LOWER, _REPEAT, _CORRECT):
        inner = state.inner.replace(time=jnp.int32(2), game=state.inner.game.replace(feedback=jnp.int32(code)))
        shown = [game.book.strings[int(i)] for i in np.asarray(game.obs_pieces(inner))[list(game.final_slots)]]
        assert shown == (["31", "\n"] if code == _CORRECT else ["", ""])
    # the prefill calls are sized for an ordinary turn: the longest feedback word, not the win's restated secret
    assert context_budget(trial, codec, 0).step_len == len(codec.tokenizer.encode(" already guessed\n"))


def test_terse_trial_has_a_third_of_the_tokens(terse_trials):
    rng = np.random.default_rng(0)
    actions = list(rng.permutation(50)[:7]) + list(rng.permutation(50)[:7]) + list(rng.permutation(50)[:7])
    counts = {}
    for style, (trial, params, codec) in terse_trials.items():
        texts = play_trial_texts(trial, params, codec, actions)
        counts[style] = sum(len(codec.tokenizer.encode(t)) for t in texts)
    assert counts["terse"] * 2.5 < counts["gem"], counts


def test_terse_is_refused_where_the_env_has_no_such_text():
    from metarl_jax.envs.guess_the_number import GuessTheNumber

    with pytest.raises(ValueError, match=r"renders text styles \['gem', 'terse'\], got text='short'"):
        GuessTheNumber(text="short")
    assert envs.env_class("rockpaperscissors").text_styles == ("gem",)
