"""Render conformance, one suite over the registry: for every registered env and every text style it declares,
the token rendering of each sampled state (``Codec.render_tokens``, inside jit) decodes to the env's
``render_text``. A new env is covered as soon as it is registered.

The states come from whole episodes, each played by one of three policies drawn per rollout (one compiled program
per env): a mix (format errors, a few oracle moves, repeats, uniform valid actions), uniform play over every action
id with format errors, and the oracle. ``COVERAGE`` names, per env,
the statuses and text fragments the sample must include, so that a sample missing a kind of observation fails
instead of passing on the easy ones; a newly registered env needs its entry.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import HEAVY_ENVS, adhoc_word_tokenizer, collect_states, mixed_policy, render_roundtrip
from metarl_jax import envs
from metarl_jax.baselines.online import OnlinePolicy
from metarl_jax.envs import registry
from metarl_jax.envs.base import FORMAT_ERROR, LOST, OUT_OF_TURNS, RUNNING, WON
from metarl_jax.text import Codec

ROWS = 32  # rollouts per policy (on average)

# env id -> (statuses, text fragments) the sampled states must show
COVERAGE = {
    "BernoulliBandit-misc": ({RUNNING, WON, LOST}, ("two-armed bandit", "arm 1 and it paid 1.",
                                                    "arm 2 and it paid nothing.", "a success.", "a failure.",
                                                    "at least 2 of them")),
    "game:Blackjack-v0": ({RUNNING, WON, LOST, OUT_OF_TURNS, FORMAT_ERROR}, ()),
    "game:Blackjack-v0-table10": ({RUNNING, WON, LOST, OUT_OF_TURNS, FORMAT_ERROR}, ()),
    "FrozenLake-misc": ({RUNNING, WON, LOST}, ("You are crossing", "and are now at", "bumped into the edge",
                                               "fell into a hole", "reached the goal")),
    "FrozenLake-misc slippery": ({RUNNING, WON, LOST}, ("but slipped", "The ice is slippery", "fell into a hole",
                                                        "reached the goal")),
    "game:GuessTheNumber-v0-easy": ({RUNNING, WON, OUT_OF_TURNS, FORMAT_ERROR}, ()),
    "game:GuessTheNumber-v0-hard": ({RUNNING, WON, OUT_OF_TURNS, FORMAT_ERROR}, ()),
    "game:Hangman-v0-easy": ({RUNNING, WON, OUT_OF_TURNS, FORMAT_ERROR},
                             ("which is in the word.", "which is not in the word.", "which you already guessed before.",
                              "which is not the secret word.", "You have reached the maximum number of turns.")),
    "game:Mastermind-v0-random": ({RUNNING, WON, OUT_OF_TURNS, FORMAT_ERROR}, ("Correct!", "already", "Black")),
    "game:Mastermind-v0-two-digits": ({RUNNING, WON, OUT_OF_TURNS, FORMAT_ERROR}, ("Correct!", "already", "Black")),
    "maze": ({RUNNING, WON, OUT_OF_TURNS}, ("The goal is hidden", "you moved", "but hit a wall.", "reached the goal!",
                                            "maximum number of turns")),
    "maze-goal-shown": ({RUNNING, WON, OUT_OF_TURNS}, ("The goal is at", ": the goal", "you moved", "but hit a wall.")),
    "game:Minesweeper-v0-only-reveal": ({RUNNING, WON, LOST, OUT_OF_TURNS, FORMAT_ERROR}, ()),
    "rockpaperscissors": ({RUNNING, WON, LOST, FORMAT_ERROR}, ()),
    "rockpaperscissors-verbose": ({RUNNING, WON, LOST, FORMAT_ERROR}, ()),
    "game:Wordle-v0-hard": ({RUNNING, WON, FORMAT_ERROR}, ("already", "Feedback")),
}
# env id -> the text fragments the sampled states must show in the terse style (the statuses are COVERAGE's)
TERSE_FRAGMENTS = {
    "game:Blackjack-v0": (" total ", " bust\n", " against ", " win\n", " lose\n", " taken, ", " out of turns\n",
                          "The dealer's face-down card was "),
    "game:Blackjack-v0-table10": (" total ", " bust\n", " against ", " win\n", " lose\n", " taken, total ",
                                  " out of turns\n"),
    "game:Hangman-v0-easy": (" in _", " not in _", " already guessed _", " wrong _", " correct\n", " out of turns\n"),
    "game:Mastermind-v0-random": (" black ", " already guessed\n", " correct\n", " out of turns\n"),
    "game:Mastermind-v0-two-digits": (" black ", " already guessed\n", " correct\n", " out of turns\n"),
    "game:Wordle-v0-hard": (" G", " Y", " X", " already guessed\n", " correct\n"),
    "maze": ("The goal is hidden.", " wall", " safe", " goal\n", " reached the goal\n", " out of turns\n"),
    "maze-goal-shown": ("The goal is at (", " rows and ", " wall", " safe", " reached the goal\n"),
}
# Cases beyond the registered defaults: (coverage name, env id, make overrides)
VARIANTS = {
    "BernoulliBandit-misc": ("BernoulliBandit-misc", dict(max_turns=3)),
    "FrozenLake-misc slippery": ("FrozenLake-misc", dict(is_slippery=True, max_turns=30)),
}
CASES = [(name, style) for name in sorted(set(registry.registered()) | set(VARIANTS))
         for style in registry.env_class(VARIANTS.get(name, (name,))[0]).text_styles]
if os.environ.get("METARL_TEST_ENVS"):  # id1,id2: only these envs, while developing one
    CASES = [(n, s) for n, s in CASES if VARIANTS.get(n, (n,))[0] in os.environ["METARL_TEST_ENVS"].split(",")]

# Cases that add little to the default suite's coverage (the same renderer in another variant or style): slow suite.
SLOW_CASES = {("game:GuessTheNumber-v0-easy", "gem"), ("game:Mastermind-v0-two-digits", "gem"),
              ("game:Mastermind-v0-two-digits", "terse"), ("rockpaperscissors-verbose", "gem")}


def smallest_card_policy(env):
    """Blackjack: always the smallest card left. Four hits rarely bust, so the episode runs out of turns."""
    return lambda key, state: jnp.argmin(jnp.where(state.game.taken, 99, jnp.minimum(state.task.table % 13 + 1, 10)))


# env id -> a policy that reaches what the three shared ones do not
EXTRA_POLICY = {"game:Blackjack-v0": smallest_card_policy, "game:Blackjack-v0-table10": smallest_card_policy}


def one_per_rollout(policies) -> OnlinePolicy:
    """Each rollout draws one of ``policies`` when it starts (kept in its memory) and plays it throughout."""
    return OnlinePolicy(init=lambda key, state: jax.random.randint(key, (), 0, len(policies)),
                        act=lambda key, which, state: jax.lax.switch(which, [lambda k, s, p=p: jnp.asarray(
                            p(k, s), jnp.int32) for p in policies], key, state),
                        update=lambda which, *_: which)


def sloppy_policy(env):
    """Any action id, a repeat or a no-op included, and now and then a format error (-1)."""
    return lambda key, state: jax.random.randint(key, (), -1, env.num_actions).astype(jnp.int32)


def oracle_policy(env):
    return lambda key, state: jnp.asarray(env.oracle_action(key, state), jnp.int32)


def case(name: str, style: str):
    """One (coverage name, style) case, in the slow suite when its env is heavy or the case is in SLOW_CASES."""
    slow = VARIANTS.get(name, (name,))[0] in HEAVY_ENVS or (name, style) in SLOW_CASES
    return pytest.param(name, style, marks=[pytest.mark.slow] if slow else [], id=f"{name}-{style}")


@pytest.mark.parametrize("name,style", [case(n, s) for n, s in CASES])
def test_every_sampled_state_renders_to_tokens_that_decode_to_its_text(name, style):
    env_id, overrides = VARIANTS.get(name, (name, {}))
    env, params = envs.make(env_id, **overrides, **({"text": style} if style != "gem" else {}))
    codec = Codec(env, adhoc_word_tokenizer(env))
    steps = int(params.max_turns) + 1  # past the turn limit: the out-of-turns ending is rendered too
    statuses, texts = set(), []
    policies = [mixed_policy(env, p_format=0.03, p_oracle=0.08), sloppy_policy(env), oracle_policy(env)]
    policies += [EXTRA_POLICY[name](env)] if name in EXTRA_POLICY else []
    states = collect_states(env, params, one_per_rollout(policies), jax.random.PRNGKey(0), ROWS * len(policies), steps)
    for state, text in render_roundtrip(env, codec, states, batch_dims=2):
        statuses.add(int(state.status))
        texts.append(text)
    need_statuses, fragments = COVERAGE[name]
    fragments = TERSE_FRAGMENTS.get(name, ()) if style == "terse" else fragments
    assert need_statuses <= statuses, f"statuses {sorted(statuses)} miss {sorted(need_statuses - statuses)}"
    missing = [f for f in fragments if not any(f in t for t in texts)]
    assert not missing, f"no sampled text shows {missing}"
    assert len(set(texts)) > 1 and all(np.char.str_len(texts) > 0)


def test_every_registered_env_has_a_coverage_entry():
    missing = set(registry.registered()) - set(COVERAGE)
    assert not missing, f"add the statuses and text fragments {sorted(missing)} must show to COVERAGE"
