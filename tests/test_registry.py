"""The registry: ids, overrides and clear errors for bad input."""

import pytest

from metarl_jax import envs

ORBIT_IDS = [
    "rockpaperscissors", "game:Minesweeper-v0-only-reveal", "game:Hangman-v0-easy", "game:Wordle-v0-hard",
    "game:Blackjack-v0", "maze", "game:Mastermind-v0-random", "game:GuessTheNumber-v0-easy",
    "game:GuessTheNumber-v0-hard", "BernoulliBandit-misc", "FrozenLake-misc",
]


def test_every_orbit_id_is_registered_with_three_episode_caps():
    assert set(ORBIT_IDS) <= set(envs.registered())
    for env_id in ORBIT_IDS:
        s = envs.spec(env_id)
        env, params = envs.make(env_id)
        assert env.name == env_id and int(params.max_turns) == s.max_turns == env.default_max_turns
        assert s.total_step_cap >= s.max_turns


# Our earlier rules of ORBIT games, kept under their own ids (each env module's docstring describes its variant).
VARIANTS = {"rockpaperscissors-verbose": "rockpaperscissors", "maze-goal-shown": "maze",
            "game:Blackjack-v0-table10": "game:Blackjack-v0"}


def test_variants_are_their_orbit_game_with_other_rules():
    for variant, orbit_id in VARIANTS.items():
        v, o = envs.spec(variant), envs.spec(orbit_id)
        assert v.split == "variant" and v.entry_point == o.entry_point
        assert (v.max_turns, v.total_step_cap) == (o.max_turns, o.total_step_cap)
        assert "rules" not in o.kwargs  # the ORBIT id takes the class's default rules, ORBIT's
    def flags(env):  # the rule switches of the three games
        return getattr(env, "verbose", None), getattr(env, "show_goal", None), getattr(env, "orbit", None)

    assert [flags(envs.make(i)[0]) for i in VARIANTS.values()] == [(False, None, None), (None, False, None),
                                                                  (None, None, True)]
    assert [flags(envs.make(i)[0]) for i in VARIANTS] == [(True, None, None), (None, True, None), (None, None, False)]
    assert [envs.make(i)[0].num_actions for i in ("game:Blackjack-v0", "game:Blackjack-v0-table10")] == [49, 11]


def test_unknown_id_suggests_the_closest():
    with pytest.raises(KeyError, match="did you mean 'game:Wordle-v0-hard'"):
        envs.make("game:Wordle-v0-hrad")


def test_override_of_params_and_structure():
    env, params = envs.make("game:GuessTheNumber-v0-hard", max_turns=5)
    assert int(params.max_turns) == 5 and env.default_max_turns == 5
    env, params = envs.make("game:GuessTheNumber-v0-hard", high=20)
    assert env.num_actions == 20 and env.action_text(19) == "\\boxed{20}"
    trial, params = envs.make_trial("game:GuessTheNumber-v0-hard", total_step_cap=14, max_turns=7)
    assert trial.total_step_cap == 14


def test_unknown_override_lists_the_accepted_names():
    with pytest.raises(TypeError, match="unknown override.*'board_size'.*max_turns"):
        envs.make("maze", board_size=9)


def test_bad_structure_is_refused_by_the_constructor():
    with pytest.raises(ValueError, match="low < high"):
        envs.make("game:GuessTheNumber-v0-hard", low=30, high=20)


def test_trial_cap_below_turns_is_refused():
    with pytest.raises(ValueError, match="total_step_cap=3 is below max_turns=9"):
        envs.make_trial("maze", total_step_cap=3)


def test_parse_action_is_total():
    env, _ = envs.make("game:Mastermind-v0-random")
    i = env.parse_action("thinking... \\boxed{1 2 3} no wait \\boxed{ 4  5 6 }")
    assert i >= 0 and env.action_text(i) == "\\boxed{4 5 6}"
    for junk in ["", "\\boxed{}", "\\boxed{7 7 7}", "boxed{1 2 3}", None, "\\boxed{1 2 3"]:
        assert env.parse_action(junk) == -1
    with pytest.raises(IndexError):
        env.action_text(env.num_actions)


def test_every_env_takes_the_text_style_it_declares():
    """Every env constructor accepts ``text`` and checks it against the class's ``text_styles``."""
    for env_id in ORBIT_IDS:
        styles = envs.env_class(env_id).text_styles
        assert "gem" in styles
        env, _ = envs.make(env_id, text="gem")
        assert env.text == "gem"
        for style in {"terse"} - set(styles):
            with pytest.raises(ValueError, match=f"renders text styles {styles_list(styles)}, got text='{style}'"):
                envs.make(env_id, text=style)
    assert envs.make("game:GuessTheNumber-v0-easy", text="terse")[0].text == "terse"


def styles_list(styles) -> str:
    return "\\[" + ", ".join(f"'{s}'" for s in styles) + "\\]"
