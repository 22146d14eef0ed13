"""The multi-episode wrapper: same task per trial, step cap, rewards, headers, reflection, auto-reset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_valid_policy, run_trials
from metarl_jax import envs
from metarl_jax.envs.multi_episode import VIEW_AFTER_REFLECT, VIEW_BOUNDARY, VIEW_REFLECT, VIEW_START

ENV_ID = "game:GuessTheNumber-v0-hard"  # 7 turns per episode, cap 21


def secret_guesser(env):
    """Guesses the secret at once: wins every episode in one step."""
    return lambda key, state: state.inner.task.astype(jnp.int32)


def play(env, params, actions, key=0):
    """Steps one trial through ``actions`` on the host; returns the list of (state, reward, info, text)."""
    step = jax.jit(env.step_env)
    key = jax.random.PRNGKey(key)
    _, state = env.reset(key, params)
    out = [(state, 0.0, None, env.render_text(state))]
    for a in actions:
        key, k = jax.random.split(key)
        _, state, reward, _, info = step(k, state, jnp.int32(a), params)
        out.append((state, float(reward), {k_: np.asarray(v) for k_, v in info.items()}, env.render_text(state)))
    return out


@pytest.fixture(scope="module")
def trial():
    return envs.make_trial(ENV_ID)


def test_trial_ends_exactly_at_cap_and_task_is_fixed(trial):
    env, params = trial
    final, infos, rewards = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(0), 256, 21)
    done = np.asarray(infos["trial_done"])
    assert not done[:-1].any() and done[-1].all()
    np.testing.assert_array_equal(np.asarray(infos["total_steps"]), np.arange(1, 22)[:, None].repeat(256, 1))
    # The return is the number of successful episodes, and successes end episodes.
    np.testing.assert_array_equal(np.asarray(rewards).sum(0), np.asarray(final.successes))
    assert (np.asarray(infos["episode_done"])[np.asarray(infos["success"])]).all()
    # Episode indices never decrease and advance exactly after an episode ends.
    idx = np.asarray(infos["episode_index"])
    ended = np.asarray(infos["episode_done"])
    np.testing.assert_array_equal(idx[1:] - idx[:-1], ended[:-1].astype(int))


def test_same_task_in_every_episode(trial):
    env, params = trial
    step = jax.jit(jax.vmap(env.step_env, in_axes=(0, 0, 0, None)))
    keys = jax.random.split(jax.random.PRNGKey(1), 64)
    _, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    task0 = np.asarray(state.inner.task)
    policy = jax.jit(jax.vmap(random_valid_policy(env)))
    for t in range(21):
        keys = jax.vmap(lambda k: jax.random.split(k)[0])(keys)
        _, state, _, _, _ = step(keys, state, policy(keys, state), params)
        np.testing.assert_array_equal(np.asarray(state.inner.task), task0)
    assert int(np.asarray(state.episode_index).max()) >= 2


def test_quick_successes_earn_extra_episodes(trial):
    env, params = trial
    final, infos, rewards = run_trials(env, params, secret_guesser(env), jax.random.PRNGKey(2), 16, 21)
    np.testing.assert_array_equal(np.asarray(rewards).sum(0), 21.0)
    np.testing.assert_array_equal(np.asarray(infos["episode_index"])[:, 0], np.arange(21))


def test_episode_headers_and_boundary_text(trial):
    env, params = trial
    secret = int(env.reset(jax.random.PRNGKey(0), params)[1].inner.task)
    wrong = (secret + 1) % 50
    # Episode 1: out of turns after 7 wrong guesses; episode 2: won at once; then one more wrong guess.
    actions = [wrong] * 7 + [secret, wrong]
    states = play(env, params, actions)
    first_text = states[0][3]
    assert first_text.startswith("You will play the same game for several episodes")
    assert "[Episode 1] New episode begins.\nYou are playing Guess The Number." in first_text
    s7, r7, info7, text7 = states[7]
    assert text7.startswith("You have reached the maximum number of turns.\n[Episode 2] New episode begins.\n")
    assert int(s7.view) == VIEW_BOUNDARY and r7 == 0.0 and bool(info7["episode_done"]) and not info7["success"]
    s8, r8, info8, text8 = states[8]
    assert r8 == 1.0 and bool(info8["success"]) and int(info8["episode_index"]) == 1
    assert text8.startswith(f"Correct! The secret number is {secret + 1}.") and "[Episode 3]" in text8
    # Guesses are remembered within an episode only: the repeat in episode 3 is a fresh guess.
    direction = "higher" if secret > wrong else "lower"
    assert states[9][3] == f"At turn 1, you guessed {wrong + 1}. The secret number is {direction} than {wrong + 1}."


def test_reflection_turns_count_no_step_and_ignore_the_action():
    env, params = envs.make_trial(ENV_ID, reflection=True)
    secret = int(env.reset(jax.random.PRNGKey(0), params)[1].inner.task)
    states = play(env, params, [secret, 0, secret])
    s1, r1, info1, text1 = states[1]
    assert r1 == 1.0 and int(s1.view) == VIEW_REFLECT and int(s1.total_steps) == 1
    assert text1.startswith("Correct!") and "[Episode" not in text1
    assert "reflect step by step" in text1 and "<remark> </remark>" in text1  # ORBIT's request, our words
    s2, r2, info2, text2 = states[2]  # the reflection turn: action 0 ignored
    assert r2 == 0.0 and bool(info2["reflection"]) and int(s2.total_steps) == 1 and int(s2.view) == VIEW_AFTER_REFLECT
    assert text2.startswith("[Episode 2] New episode begins.\nYou are playing Guess The Number.")
    assert int(s2.inner.time) == 0 and not np.asarray(s2.inner.game.guessed).any()
    s3, r3, info3, _ = states[3]
    assert r3 == 1.0 and int(info3["episode_index"]) == 1 and int(s3.successes) == 2


def test_lamer_trial_stops_at_the_first_success_worth_gamma_to_the_k():
    """LaMer's variant (ORBIT's lamer_multi_episode_env.py): a failed episode, a reflection turn (only failed
    episodes get one), then a success in episode 2 that earns 0.6 ** 1 and ends the trial; ORBIT's trial goes on."""
    env, params = envs.make_trial(ENV_ID, reflection=True, lamer_gamma=0.6)
    secret = int(env.reset(jax.random.PRNGKey(0), params)[1].inner.task)
    wrong = (secret + 1) % 50
    actions = [wrong] * 7 + [0, secret, secret]
    states = play(env, params, actions)
    s7, r7, info7, text7 = states[7]  # the seventh wrong guess ends episode 1: failed
    assert r7 == 0.0 and bool(info7["episode_done"]) and int(s7.view) == VIEW_REFLECT and "<remark>" in text7
    s8, r8, info8, _ = states[8]
    assert bool(info8["reflection"]) and r8 == 0.0
    s9, r9, info9, _ = states[9]
    assert bool(info9["success"]) and int(info9["episode_index"]) == 1 and abs(r9 - 0.6) < 1e-6
    assert bool(s9.trial_done) and bool(info9["trial_done"]) and int(s9.total_steps) == 8 < env.total_step_cap
    assert states[10][1] == 0.0 and bool(states[10][0].trial_done)  # a finished trial does not move
    plain, _ = envs.make_trial(ENV_ID, reflection=True)
    after = play(plain, params, actions)
    assert after[9][1] == 1.0 and not bool(after[9][0].trial_done)
    with pytest.raises(ValueError, match="lamer_gamma"):
        envs.make_trial(ENV_ID, lamer_gamma=1.5)


def test_format_error_ends_the_episode():
    env, params = envs.make_trial(ENV_ID)
    states = play(env, params, [-1, 3])
    s1, r1, info1, text1 = states[1]
    assert r1 == 0.0 and bool(info1["episode_done"]) and not info1["success"]
    assert text1.startswith("At turn 1, you did not provide a valid action.\n[Episode 2] New episode begins.")
    assert int(s1.prev.status) == envs.FORMAT_ERROR


def test_gymnax_step_auto_resets_to_a_new_trial(trial):
    env, params = trial
    step = jax.jit(env.step)
    key = jax.random.PRNGKey(3)
    _, state = env.reset(key, params)
    for t in range(21):
        key, k = jax.random.split(key)
        _, state, _, terminated, truncated, info = step(k, state, 0, params)
    assert bool(terminated) and not bool(truncated)
    assert int(state.total_steps) == 0 and int(state.view) == VIEW_START and int(state.episode_index) == 0


def test_step_cap_below_turns_per_episode_is_rejected():
    env, _ = envs.make(ENV_ID)
    with pytest.raises(ValueError, match="total_step_cap=5 is below max_turns=7"):
        envs.MultiEpisode(env, total_step_cap=5)


def test_finished_trial_does_not_move(trial):
    env, params = trial
    states = play(env, params, [0] * 23)
    assert int(states[21][0].total_steps) == 21
    for s, r, info, _ in states[22:]:
        assert r == 0.0 and int(s.total_steps) == 21 and bool(info["trial_done"])


@pytest.mark.parametrize("max_episodes, expected_episodes", [(0, 7), (1, 1), (2, 2)])
def test_max_episodes_ends_the_trial_even_with_steps_left(max_episodes, expected_episodes):
    """A player who wins every episode in one step plays 7 episodes in a 7-step trial, unless ``max_episodes``
    ends it first (1: the single-episode baseline's trial, which must not show a second episode after an early
    win)."""
    env, params = envs.make_trial(ENV_ID, total_step_cap=7, max_episodes=max_episodes)
    _, state = env.reset(jax.random.PRNGKey(0), params)
    secret = int(state.inner.task)
    steps = play(env, params, [secret] * 7)
    dones = [bool(info["trial_done"]) for _, _, info, _ in steps[1:]]
    rewards = [r for _, r, _, _ in steps[1:]]
    assert dones.index(True) == expected_episodes - 1
    assert sum(rewards) == expected_episodes
    with pytest.raises(ValueError, match="max_episodes"):
        envs.make_trial(ENV_ID, max_episodes=-1)


def test_new_task_each_episode_draws_a_fresh_secret_for_every_episode():
    """``new_task_each_episode``: a player who wins every episode by naming its secret sees a new secret in each
    of the 7 one-step episodes (most of them differ from the first), where ORBIT's trial keeps one."""
    for independent in (False, True):
        env, params = envs.make_trial(ENV_ID, total_step_cap=7, new_task_each_episode=independent)
        step = jax.jit(env.step_env)
        key = jax.random.PRNGKey(3)
        _, state = env.reset(key, params)
        secrets = []
        for _ in range(7):
            secrets.append(int(state.inner.task))
            key, k = jax.random.split(key)
            _, state, reward, _, _ = step(k, state, state.inner.task, params)
            assert float(reward) == 1.0
        assert len(set(secrets)) >= (5 if independent else 1) and (len(set(secrets)) == 1) == (not independent)


def test_a_corpus_of_independent_games_repeats_an_opening_that_shows_the_task():
    """Host side (nothing compiled): the GEM Blackjack's opening deals the hands, so its corpus of independent
    games repeats it even with ``repeat_opening=False``; ORBIT's trial of the same game and the openings that
    show only rules do not."""
    def repeats(env_id, text, new_task):
        trial, _ = envs.make_trial(env_id, text=text, repeat_opening=False, new_task_each_episode=new_task)
        return trial.repeat_opening

    assert repeats("game:Blackjack-v0", "gem", True) and repeats("maze-goal-shown", "terse", True)
    assert not repeats("game:Blackjack-v0", "gem", False)
    assert not any(repeats(e, "terse", True) for e in ("game:Blackjack-v0", ENV_ID, "maze"))


@pytest.mark.slow
def test_an_opening_hidden_after_the_first_episode_shows_no_task():
    """``repeat_opening=False`` hides the opening slots after the first episode, which hides nothing only where
    they show no task: every env's opening slots are the same for 16 tasks unless it declares
    ``opening_shows_task``, and a corpus of independent games (``new_task_each_episode``) then repeats them. The
    GEM Blackjack's opening deals the hands; the terse one keeps them out of its opening slots."""
    from metarl_jax.envs import registry

    shows = set()
    for name in registry.registered():
        for style in registry.env_class(name).text_styles:
            env, params = envs.make(name, text=style)
            obs, _ = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), 16), params)
            opening = np.asarray(obs)[:, list(env.opening_slots)]
            if env.opening_shows_task:
                shows.add((name, style))
            else:
                assert (opening == opening[0]).all(), (name, style)
            corpus, _ = envs.make_trial(name, text=style, repeat_opening=False, new_task_each_episode=True)
            assert corpus.repeat_opening == env.opening_shows_task, (name, style)
    assert {("game:Blackjack-v0", "gem"), ("maze-goal-shown", "terse")} <= shows
    assert ("game:Blackjack-v0", "terse") not in shows
