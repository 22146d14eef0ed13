"""The scripted episode player (the imitation phase's corpus): its win rates, that it learns nothing across
episodes, that its consistent set never rules out the secret, and that a rollout it drives plays its moves in
the model's token stream, and that the imitation step fits its moves."""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import slow_if_heavy

from metarl_jax import envs
from metarl_jax.agents import ActionTable
from metarl_jax.agents.context import context_budget
from metarl_jax.agents.rollout import RolloutSpec, rollout
from metarl_jax.algos.grpo import GRPOHyper, init_train_state, make_train_step
from metarl_jax.algos.scoring import teacher_forced
from metarl_jax.baselines import oracle_policy
from metarl_jax.baselines.players import episode_player
from metarl_jax.envs.base import RUNNING
from metarl_jax.evaluate import episode_wins, play_trials
from metarl_jax.models import Transformer, preset
from metarl_jax.tasks import build_task
from metarl_jax.text import Codec, WordTokenizer

TRIALS = 2000


@pytest.mark.parametrize("noise, expected", [(0.0, 0.71), (0.4, 0.46)])
def test_episode_player_wins_as_often_as_it_should_and_learns_nothing_across_episodes(noise, expected):
    """GuessTheNumber-hard (1..50, 7 turns): a uniform guess among the numbers this episode's feedback allows
    wins an episode with probability about 0.71 (0.46 with 40% uniform guesses; both from a NumPy simulation of
    the same player). Every episode starts afresh, so episodes 1 and 3 win equally often."""
    trial, params = envs.make_trial("game:GuessTheNumber-v0-hard", total_step_cap=21)
    played = play_trials(trial, params, episode_player(trial, noise), jax.random.PRNGKey(0), TRIALS)
    wins = episode_wins(played, 3).mean(axis=0)
    assert not played["invalid"].any()
    se = np.sqrt(expected * (1 - expected) / TRIALS)
    assert abs(wins[0] - expected) < 4 * se, wins
    assert abs(wins[2] - wins[0]) < 6 * se, wins


def test_consistent_actions_keep_the_secret_until_it_is_found():
    """While an episode runs, the secret is never ruled out, and the set shrinks as guesses are told higher or
    lower."""
    trial, params = envs.make_trial("game:GuessTheNumber-v0-hard", total_step_cap=21)
    player = episode_player(trial, 0.5)

    def check(key):
        _, state = trial.reset(key, params)

        def body(state, k):
            consistent = trial.consistent_actions(state)
            keeps = consistent[state.inner.task] | (state.inner.status != RUNNING)
            _, state, *_ = trial.step_env(k, state, player(k, state), params)
            return state, (keeps, consistent.sum())

        return jax.lax.scan(body, state, jax.random.split(key, 21))[1]

    keeps, sizes = jax.jit(jax.vmap(check))(jax.random.split(jax.random.PRNGKey(3), 64))
    assert bool(keeps.all())
    assert int(sizes[:, 0].min()) == 50 and int(sizes[:, 1].max()) < 50  # every number, then fewer


def test_a_game_without_consistent_actions_has_no_player():
    trial, _ = envs.make_trial("rockpaperscissors")
    with pytest.raises(ValueError, match="consistent_actions"):
        episode_player(trial)
    with pytest.raises(ValueError, match="noise"):
        episode_player(envs.make_trial("game:GuessTheNumber-v0-hard")[0], 1.5)


def test_a_scripted_rollout_plays_the_players_moves_and_scores_them_under_the_model():
    """With the oracle (binary search) as the player, an untrained model's rollout wins every episode of -easy
    (12 steps: 3 episodes or more);
    the recorded valid masks are the env's, so the teacher-forced log-probability of the forced moves is the
    untrained model's (about uniform over the valid numbers), not 0. The model does not run: the rollout's
    program has no matrix product."""
    trial, params = envs.make_trial("game:GuessTheNumber-v0-easy", total_step_cap=12, intro=False, text="terse")
    tok = WordTokenizer()
    codec, table = Codec(trial, tok), ActionTable(trial, tok)
    budget = context_budget(trial, codec, table.max_len)
    graphdef, state = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    _, trials = jax.vmap(trial.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), 8), params)
    spec = RolloutSpec(env=trial, env_params=params, codec=codec, table=table, budget=budget,
                       context_len=budget.worst_case)
    play = lambda st, k, t: rollout(graphdef, st, spec, k, t, player=oracle_policy(trial))
    assert "dot_general" not in str(jax.make_jaxpr(play)(state, jax.random.PRNGKey(1), trials))
    tr = jax.jit(play)(state, jax.random.PRNGKey(1), trials)
    won, ended = np.asarray(tr.success).sum(axis=1), np.asarray(tr.episode_done).sum(axis=1)
    assert (won == ended).all() and (won >= 3).all(), (won, ended)  # binary search wins -easy within 4 turns
    assert (np.asarray(tr.logp) == 0).all()  # the decoder had no choice
    assert np.asarray(tr.valid)[:, 0].all()  # the first turn's mask is the env's: every number
    scored = teacher_forced(graphdef, state, tr, table)
    per_action = -np.asarray(scored.logp).sum(axis=2)[np.asarray(tr.taken)]
    assert np.all(per_action > 0.5 * np.log(2)) and np.all(per_action < 3 * np.log(10)), per_action


@pytest.mark.slow
def test_the_imitation_step_learns_the_players_moves():
    """``make_train_step(players=...)``: the rollouts play the player's moves and the update fits them. With the
    oracle (binary search, deterministic) as the player, 60 steps take the imitation loss well below the untrained
    model's, which is about uniform over the valid numbers (noisy per step: means of the first 3 and the last 10);
    the step is named apart from the RL step."""
    tok = WordTokenizer()
    task = build_task(dict(env_id="game:GuessTheNumber-v0-easy", total_step_cap=8), tok, split="train", seed=0,
                      num_tasks=16, intro=False, text="terse")
    graphdef, model_state = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    optimizer = optax.adam(1e-2)
    step = make_train_step(graphdef, [task], optimizer, GRPOHyper(num_tasks=4, group_size=2, answer_coef=0.0),
                           players=[oracle_policy(task.env)])
    assert step.__name__ == "imitation_step"
    step = jax.jit(step, donate_argnums=0)
    state = init_train_state(model_state, optimizer)
    nll = []
    for i in range(60):
        state, metrics = step(state, jax.random.PRNGKey(i))
        m = metrics[task.name]
        nll.append(float(m["imitation_nll"]))
        assert float(m["episode_success"][0]) == 1.0  # the oracle plays, whatever the model would
    assert np.mean(nll[-10:]) < 0.4 * np.mean(nll[:3]), nll


def test_the_imitation_loss_does_not_depend_on_the_rl_sampling_settings():
    """The imitation step fits the players' moves with the plain next-token loss (temperature 1, top-p 1), like a
    language model's pretraining: the same step and key give the same loss and the same weights whatever the RL
    phase's sampling temperature and top-p. Scored with them instead, the untrained model's loss is 0.4417 at
    temperature 0.5 and top-p 0.9 against 0.4432 plain, and the weights differ."""
    tok = WordTokenizer()
    task = build_task(dict(env_id="game:GuessTheNumber-v0-easy", total_step_cap=4), tok, split="train", seed=0,
                      num_tasks=4, intro=False, text="terse")
    graphdef, model_state = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    optimizer = optax.sgd(1.0)
    state = init_train_state(model_state, optimizer)
    out = {}
    for temperature, top_p in ((1.0, 1.0), (0.5, 0.9)):
        hp = GRPOHyper(num_tasks=2, group_size=2, answer_coef=0.0, temperature=temperature, top_p=top_p)
        step = jax.jit(make_train_step(graphdef, [task], optimizer, hp, players=[episode_player(task.env, 0.25)]))
        new_state, metrics = step(state, jax.random.PRNGKey(3))
        out[temperature] = (float(metrics[task.name]["imitation_nll"]), jax.tree.leaves(new_state.params))
    (nll_plain, params_plain), (nll_other, params_other) = out[1.0], out[0.5]
    assert nll_plain > 0.1 and nll_other == nll_plain, (nll_plain, nll_other)
    assert all(np.array_equal(a, b) for a, b in zip(params_plain, params_other))


def test_the_imitation_phase_has_its_own_learning_rate_then_rl_warms_up_again():
    from metarl_jax.algos.optim import make_schedule

    rate = make_schedule(3e-4, warmup_steps=10, imitation_steps=100, imitation_rate=3e-3)
    assert np.allclose([float(rate(i)) for i in (0, 5, 50, 99, 100, 105, 110, 500)],
                       [0, 1.5e-3, 3e-3, 3e-3, 0, 1.5e-4, 3e-4, 3e-4])
    assert make_schedule(3e-3, warmup_steps=0) == 3e-3  # no phase, no warm-up: a constant


@pytest.mark.parametrize("single_episode", [False, True])
def test_the_imitation_corpus_can_play_independent_games_back_to_back(single_episode):
    """``config.pretrain.new_task_each_episode``: the imitation phase's trials draw a secret per episode (both
    runs of a comparison imitate that corpus), while the RL phase's trials keep one task (ORBIT's) or one
    episode (the baseline's). Host side only: nothing is compiled."""
    from metarl_jax import build
    from metarl_jax.configs import tiny

    config = tiny.get_config()
    config.single_episode = single_episode
    config.pretrain.steps, config.answer_coef, config.pretrain.new_task_each_episode = 2, 0.0, True
    run = build.build_run(config)
    assert [t.env.new_task_each_episode for t in run.pretrain_tasks] == [True] * len(config.train_tasks)
    assert [t.env.max_episodes for t in run.pretrain_tasks] == [0] * len(config.train_tasks)
    assert not any(t.env.new_task_each_episode for t in run.train_tasks)
    assert [t.env.max_episodes for t in run.train_tasks] == [int(single_episode)] * len(config.train_tasks)


@pytest.mark.parametrize("independent", [False, True])
def test_train_max_episodes_ends_the_training_trials_only(independent):
    """``config.train_max_episodes`` ends the training trials after that many episodes; the held-out trials and an
    imitation corpus of independent games keep the step cap (ORBIT's trial), and the baseline's trials stay one
    episode. Host side only: nothing is compiled."""
    from metarl_jax import build
    from metarl_jax.configs import tiny

    config = tiny.get_config()
    config.pretrain.steps, config.answer_coef, config.train_max_episodes = 2, 0.0, 3
    config.pretrain.new_task_each_episode = independent
    run = build.build_run(config)
    assert [t.env.max_episodes for t in run.train_tasks] == [3]
    assert [t.env.max_episodes for t in run.eval_tasks] == [0]
    assert [t.env.max_episodes for t in run.pretrain_tasks] == [0 if independent else 3]  # else: the train tasks
    config.single_episode = True
    assert [t.env.max_episodes for t in build.build_run(config).train_tasks] == [1]


def test_the_imitation_phase_has_its_own_observation_loss_weight(monkeypatch, tmp_path):
    """``config.pretrain.observation_coef`` weighs the imitation steps' observation loss and
    ``config.observation_coef`` the RL steps': :func:`metarl_jax.train.train_and_evaluate` builds each step with its
    phase's weight. The steps are recorded, not compiled."""
    from metarl_jax import build, train
    from metarl_jax.configs import tiny

    config = tiny.get_config()
    config.pretrain.steps, config.answer_coef = 2, 0.0
    config.observation_coef, config.pretrain.observation_coef = 3.0, 0.5
    run = build.build_run(config)
    assert (run.hyper.observation_coef, run.pretrain_hyper.observation_coef) == (3.0, 0.5)
    assert dataclasses.replace(run.pretrain_hyper, observation_coef=3.0) == run.hyper  # nothing else differs

    built = []

    class Stop(Exception):
        pass

    def record(graphdef, tasks, optimizer, hp, *args, players=None, **kwargs):
        built.append((players is not None, hp.observation_coef))
        if players is not None:
            raise Stop
        return None

    monkeypatch.setattr(train, "make_sharded_train_step", record)
    monkeypatch.setattr(train, "compile_before_running", lambda step, what: step)
    with pytest.raises(Stop):
        train.train_and_evaluate(config, str(tmp_path / "run"), quiet=True)
    assert built == [(False, 3.0), (True, 0.5)]


def test_rl_phase_starts_from_the_prior_with_the_remaining_steps():
    """``metarl_jax.prior.rl_phase``: the run's RL steps only (``num_steps - pretrain.steps``), from the exported
    prior, with no imitation phase of its own; the given config is left as it was."""
    from metarl_jax.configs import default
    from metarl_jax.prior import rl_phase

    config = default.get_config("single")
    config.model.overrides.num_layers = 3  # the prior's shape: its export carries it, so the RL phase drops it
    rl = rl_phase(config, "/runs/imitation/model")
    assert (rl.num_steps, rl.pretrain.steps, rl.model.pretrained_dir) == (600, 0, "/runs/imitation/model")
    assert rl.single_episode and (config.num_steps, config.pretrain.steps, config.model.pretrained_dir) == (1100, 500, "")
    assert dict(rl.model.overrides) == {} and dict(config.model.overrides) == {"num_layers": 3}


def _mastermind_allowed(env, state) -> np.ndarray:
    """Brute force: the codes under which every guess of this episode gets the pegs it got under the secret."""
    secret = env.codes[int(state.task)]

    def pegs_of(guess, code):
        black = sum(int(a == b) for a, b in zip(guess, code))
        return black, sum(min(list(guess).count(d), list(code).count(d)) for d in set(guess)) - black

    made = [env.guesses[i] for i in np.flatnonzero(state.game.guessed)]
    return np.array([all(pegs_of(g, c) == pegs_of(g, secret) for g in made) for c in env.codes])


def _wordle_allowed(env, state) -> np.ndarray:
    """Brute force: the words under which every guess of this episode gets the marks it got under the secret."""
    from metarl_jax.envs.wordle import wordle_feedback

    letters, allowed = env.word_letters, np.ones(env.num_words, bool)
    for g in np.flatnonzero(state.game.guessed):
        shown = np.asarray(wordle_feedback(letters[g], letters[int(state.task)]))
        allowed &= (np.asarray(wordle_feedback(letters[g][None], letters)) == shown).all(-1)  # marks under each word
    return allowed


def _hangman_allowed(env, state) -> np.ndarray:
    """Brute force: the words in which every letter guessed this episode sits at the places it sits in the secret."""
    secret, guessed = env.words[int(state.task)], np.flatnonzero(state.game.guessed_letters)
    where = lambda word, c: [i for i, x in enumerate(word) if x == c]  # noqa: E731
    return np.array([all(where(w, chr(97 + c)) == where(secret, chr(97 + c)) for c in guessed) for w in env.words])


@pytest.mark.parametrize("env_id, allowed_fn", [("game:Mastermind-v0-random", _mastermind_allowed),
                                                slow_if_heavy("game:Wordle-v0-hard", _wordle_allowed),
                                                ("game:Hangman-v0-easy", _hangman_allowed)])
def test_consistent_actions_of_the_word_and_code_games_match_a_brute_force(env_id, allowed_fn):
    """Mastermind, Wordle, Hangman: on states the scripted player reaches, the secrets the env's feedback allows
    equal a brute-force recount from this episode's guesses; the secret is always among them; and the consistent
    actions are those secrets' guesses not made yet (Hangman: the revealing letters while several words are
    allowed, then the one word)."""
    from helpers import collect_states

    env, params = envs.make(env_id, text="terse")
    states = jax.device_get(collect_states(env, params, episode_player(env, 0.3), jax.random.PRNGKey(1), 10, 6))
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), states)
    allowed_of = env.consistent_words if hasattr(env, "consistent_words") else env.consistent_codes
    checked = 0
    for i in range(len(flat.status)):
        state = jax.tree.map(lambda x: x[i], flat)
        if int(state.status) != RUNNING:
            continue
        allowed = np.asarray(allowed_of(state))
        np.testing.assert_array_equal(allowed, allowed_fn(env, state))
        assert allowed[int(state.task)]
        consistent = np.asarray(env.consistent_actions(state))
        if env_id.startswith("game:Hangman"):
            assert consistent.any() and (consistent[:26].any() != (allowed.sum() == 1))
            assert not consistent[26:].any() or allowed.sum() == 1
        else:
            guess_of_secret = np.asarray(env.answer_action(np.arange(len(allowed), dtype=np.int32)))
            expected = np.zeros(env.num_actions, bool)
            expected[guess_of_secret[allowed]] = True
            np.testing.assert_array_equal(consistent, expected & ~np.asarray(state.game.guessed))
        checked += 1
    assert checked >= 25


@pytest.mark.slow
def test_the_maze_player_never_bumps_and_steps_into_a_goal_it_sees():
    """Maze: the scripted player moves only where no wall is shown, and into the goal once it is next to it."""
    from helpers import collect_states
    from metarl_jax.envs.base import WON
    from metarl_jax.envs.maze import _GOAL

    env, params = envs.make("maze", text="terse")
    states = collect_states(env, params, episode_player(env), jax.random.PRNGKey(2), 512, 9)
    around = jax.vmap(jax.vmap(lambda s: env._neighbours(s.task, s.game.pos)))(states)  # [N, 10, 4]
    running = np.asarray(states.status[:, :-1]) == RUNNING
    sees_goal = (np.asarray(around[:, :-1]) == _GOAL).any(-1) & running
    pos = np.asarray(states.game.pos)
    moved = (pos[:, 1:] != pos[:, :-1]).any(-1)
    assert (np.asarray(states.status[:, 1:])[sees_goal] == WON).all()
    assert moved[running & ~sees_goal].all()
    assert sees_goal.sum() >= 3 and (running & ~sees_goal).sum() > 1000


def _blackjack_player_win_rate(trials: int, rng) -> float:
    """NumPy simulation of the Blackjack player on ORBIT's deal with 4 turns: hit uniformly among the untaken
    positions below a total of 18, stand from 18 on; a bust, a stand that does not beat the dealer or four turns
    without a stand lose."""
    from metarl_jax.envs.cards import DEALER_PAIRS, host_total

    wins = 0
    for _ in range(trials):
        pair = DEALER_PAIRS[rng.integers(len(DEALER_PAIRS))]
        rest = rng.permutation(np.setdiff1d(np.arange(52), pair))
        hand, table = list(rest[:2]), list(rest[2:])
        for _turn in range(4):
            if host_total(hand) >= 18:
                wins += host_total(hand) > host_total(pair)
                break
            hand.append(table.pop(rng.integers(len(table))))
            if host_total(hand) > 21:
                break
    return wins / trials


def test_the_blackjack_player_never_stands_below_18_and_always_stands_from_18():
    """Blackjack's consistent actions: below 18 a stand is a sure loss (the dealer holds 17 to 21 and a tie
    loses), so every untaken position and no stand; from 18 on, the stand only. Eager, on hand-made states."""
    from metarl_jax.envs.cards import hand_total

    env, params = envs.make("game:Blackjack-v0")
    _, state = env.reset(jax.random.PRNGKey(0), params)
    hands = [(12, False, [3]), (7, True, [0, 47]), (17, False, []), (8, True, [5]), (21, False, [])]
    for hard, has_ace, taken in hands:
        game = state.game.replace(hard=np.int32(hard), has_ace=np.bool_(has_ace),
                                  taken=np.isin(np.arange(48), taken))
        consistent = np.asarray(env.consistent_actions(state.replace(game=game)))
        total = int(hand_total(hard, has_ace))
        if total < 18:
            assert not consistent[48] and consistent[:48].sum() == 48 - len(taken) and not consistent[taken].any()
        else:
            assert consistent[48] and not consistent[:48].any()


@pytest.mark.slow
def test_the_blackjack_player_wins_as_often_as_a_numpy_simulation_of_it():
    """The scripted Blackjack player (noise 0, ORBIT's deal, 4 turns) wins an episode as often as an independent
    NumPy simulation of the same rule (about 0.31), and its episodes do not get better across a trial."""
    trial, params = envs.make_trial("game:Blackjack-v0", total_step_cap=12)
    played = play_trials(trial, params, episode_player(trial, 0.0), jax.random.PRNGKey(0), TRIALS)
    wins = episode_wins(played, 3).mean(axis=0)
    expected = _blackjack_player_win_rate(20_000, np.random.default_rng(0))
    se = np.sqrt(expected * (1 - expected) / TRIALS)
    assert 0.2 < expected < 0.4 and abs(wins[0] - expected) < 4 * se, (wins, expected)
    assert abs(wins[2] - wins[0]) < 6 * se, wins
