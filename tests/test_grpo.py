"""The compiled GRPO step: traced once over 20 steps, finite metrics, parameters move; multi-task metrics;
the auxiliary answer loss is logged per task."""

import chex
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from metarl_jax.algos.grpo import GRPOHyper, draw_tasks, init_train_state, make_train_step, turn_advantages
from metarl_jax.models import Transformer, preset
from metarl_jax.tasks import build_task
from metarl_jax.text import WordTokenizer


@pytest.mark.slow
def test_train_step_compiles_once_and_updates():
    tok = WordTokenizer()
    tasks = [
        build_task(dict(env_id="game:GuessTheNumber-v0-easy", total_step_cap=4), tok, split="train", seed=0, num_tasks=16, intro=False),
        build_task(dict(env_id="game:Mastermind-v0-random", total_step_cap=3), tok, split="train", seed=0, num_tasks=16, intro=False),
    ]
    graphdef, model_state = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    optimizer = optax.adam(1e-3)
    hp = GRPOHyper.orbit(num_tasks=2, group_size=4, entropy_coef=0.01, kl_coef=0.1, answer_coef=0.5, answer_from="task")
    train_step = jax.jit(chex.assert_max_traces(make_train_step(graphdef, tasks, optimizer, hp), n=1), donate_argnums=0)
    state = init_train_state(model_state, optimizer, keep_reference=True)
    before = jax.tree.map(np.asarray, state.params)
    moved = False
    for i in range(20):
        state, metrics = train_step(state, jax.random.PRNGKey(i))
        assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
        for task in tasks:
            m = metrics[task.name]
            assert 0.0 <= float(m["mean_return"]) <= task.env.total_step_cap
            assert m["episode_success"].shape == (3,)
            assert float(m["kl"]) >= -1e-6 and float(m["entropy"]) > 0  # k3 KL is >= 0 up to rounding
            assert float(m["truncated"]) == 0.0  # the worst-case context never fills
            if i == 0:  # the untrained policy is near uniform over the valid actions; a Mastermind answer is
                # scored up to its first digit that departs from the sampled guess (a lower bound, see teacher_forced)
                log_a = np.log(task.env.num_actions)
                low = 0.5 * log_a if "GuessTheNumber" in task.name else 0.1
                assert low < float(m["answer_nll"]) < 1.5 * log_a
        moved = moved or float(metrics["grad_norm"]) > 0
    chex.clear_trace_counter()
    assert int(state.step) == 20
    assert moved, "some group must have had unequal returns, giving a gradient"
    after = jax.tree.map(np.asarray, state.params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)))
    ref = jax.tree.map(np.asarray, state.ref_params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(before))), "the reference is frozen"


class _Transcript:
    def __init__(self, rewards, episode_done, truncated=None):
        self.rewards = np.asarray(rewards, np.float32)
        self.episode_done = np.asarray(episode_done, bool)
        self.taken = np.ones_like(self.episode_done)
        self.reflection = np.zeros_like(self.episode_done)
        self.truncated = np.zeros(len(self.rewards), bool) if truncated is None else np.asarray(truncated, bool)


def test_turn_advantages_plain_and_discounted():
    # Two rollouts of one task: returns 2 and 0.
    tr = _Transcript([[1, 0, 1], [0, 0, 0]], [[1, 0, 1], [0, 0, 1]])
    plain = np.asarray(turn_advantages(tr, 2, GRPOHyper.orbit(group_size=2)))
    np.testing.assert_allclose(plain, [[1, 1, 1], [-1, -1, -1]], atol=1e-5)
    disc = np.asarray(turn_advantages(tr, 2, GRPOHyper.orbit(group_size=2, gamma_step=0.5, gamma_traj=0.25)))
    # Row 0 return-to-go: t2 = 1; t1 = 0 + 0.5 * 1 = 0.5; t0 = 1 + 0.25 * 0.5 = 1.125 (t0 ends an episode). Row 1: 0.
    # Normalised over the group at each turn: +1 where row 0 is above, -1 for row 1.
    np.testing.assert_allclose(disc, [[1, 1, 1], [-1, -1, -1]], atol=1e-4)
    equal = _Transcript([[1, 0], [1, 0]], [[1, 0], [1, 0]])
    np.testing.assert_allclose(np.asarray(turn_advantages(equal, 2, GRPOHyper.orbit(group_size=2))), 0.0)


def test_truncated_trials_return_zero_in_orbits_mode():
    """Row 1 earned 1 before its context filled up: kept, it ties row 0; with truncated_return="zero" (ORBIT) its
    return is 0, below row 0's, and row 2's (0, not truncated) equals it."""
    tr = _Transcript([[1, 0], [1, 0], [0, 0], [0, 0]], [[1, 0]] * 4, truncated=[False, True, False, False])
    keep = np.asarray(turn_advantages(tr, 4, GRPOHyper.orbit(group_size=4)))[:, 0]
    zero = np.asarray(turn_advantages(tr, 4, GRPOHyper.orbit(group_size=4, truncated_return="zero")))[:, 0]
    np.testing.assert_allclose(keep, [1, 1, -1, -1], atol=1e-5)
    np.testing.assert_allclose(zero, np.array([3, -1, -1, -1]) / np.sqrt(3), atol=1e-5)


def test_epoch_sampling_visits_every_task_once_per_epoch():
    """ORBIT's order (verl's shuffled sampler, drop_last): 10 tasks, 3 a step -> epochs of 3 steps that take 9
    distinct tasks; another epoch, another order; the same seed and step, the same draw (the key plays no part);
    "replacement" repeats tasks within an epoch's worth of draws."""
    hp = GRPOHyper(num_tasks=3, task_sampling="epochs", order_seed=7)
    draw = jax.jit(lambda step: draw_tasks(jax.random.PRNGKey(step), 10, hp, step))
    epochs = [np.concatenate([np.asarray(draw(e * 3 + i)) for i in range(3)]) for e in range(3)]
    for picks in epochs:
        assert len(set(picks.tolist())) == 9 and picks.min() >= 0 and picks.max() < 10
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(np.asarray(draw(4)), epochs[1][3:6])
    other = GRPOHyper(num_tasks=3, task_sampling="epochs", order_seed=8)
    assert not np.array_equal(np.asarray(draw_tasks(None, 10, other, 0)), epochs[0][:3])
    free = np.concatenate([np.asarray(draw_tasks(jax.random.PRNGKey(s), 10, GRPOHyper(num_tasks=3), s)) for s in range(3)])
    assert len(set(free.tolist())) < 9  # with replacement 9 distinct draws of 10 have probability 4e-4


@pytest.mark.slow  # about a minute on 2 cores
def test_meta_learner_objects_train_and_evaluate():
    import metarl_jax

    tok = WordTokenizer()
    tasks = [build_task(dict(env_id="game:GuessTheNumber-v0-easy", total_step_cap=4), tok, split="train", seed=0,
                        num_tasks=8, intro=False)]
    graphdef, params = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    learner = metarl_jax.InContextLearner(graphdef, params)
    meta = metarl_jax.CrossEpisodeMetaLearner(learner, tasks, optax.adam(1e-2), GRPOHyper.orbit(num_tasks=2, group_size=4))
    state = meta.init_state()
    for i in range(3):
        state, metrics = meta.step(state, jax.random.PRNGKey(i))
    trained = meta.learner_from(state)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(learner.params)))
    (row,) = trained.evaluate(tasks, jax.random.PRNGKey(0), num_episodes=1)
    assert row.num_trials == 8 and 0.0 <= row.episode_rates[0] <= 1.0


@pytest.mark.slow  # about a minute on 2 cores
def test_update_epochs_reuse_the_batch():
    """With update_epochs=2 the step plays the same rollout (same first, on-policy loss) and then takes a
    second, off-policy update on it: the params move further, and the step is still traced once. With
    policy_coef=0 the same batch moves nothing."""
    tok = WordTokenizer()
    tasks = [build_task(dict(env_id="game:GuessTheNumber-v0-easy", total_step_cap=4), tok, split="train", seed=0,
                        num_tasks=8, intro=False)]
    graphdef, model_state = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    optimizer = optax.sgd(0.5)
    results = {}
    for epochs in (1, 2):
        chex.clear_trace_counter()  # chex counts traces per code location: each epochs setting is a new step
        hp = GRPOHyper.orbit(num_tasks=2, group_size=4, update_epochs=epochs)
        step = jax.jit(chex.assert_max_traces(make_train_step(graphdef, tasks, optimizer, hp), n=1))
        state = init_train_state(model_state, optimizer)
        for i in range(3):  # the first key whose groups give a gradient
            new, metrics = step(state, jax.random.PRNGKey(i))
            if float(metrics["grad_norm"]) > 0:
                break
        env = metrics[tasks[0].name]
        if epochs == 1:
            assert "approx_kl_per_epoch" not in env
        else:  # every epoch's drift from the sampler: none in the on-policy first, some after an update
            for key in ("approx_kl", "clip_fraction", "ratio_mean"):
                assert env[f"{key}_per_epoch"].shape == (2,) and env[f"{key}_per_epoch"][0] == env[key]
            assert abs(float(env["approx_kl_per_epoch"][0])) < 1e-5 and float(env["approx_kl_per_epoch"][1]) > 1e-4
            assert float(env["ratio_mean_per_epoch"][1]) != pytest.approx(1.0, abs=1e-5)
        new2, _ = step(state, jax.random.PRNGKey(i))  # no retrace on a second call
        results[epochs] = (float(metrics["loss"]), jax.tree.leaves(new.params), jax.tree.leaves(new2.params), i)
    chex.clear_trace_counter()
    (loss1, p1, _, i1), (loss2, p2, p2b, i2) = results[1], results[2]
    assert i1 == i2 and loss1 == loss2, "same rollout, same first (on-policy) update"
    start = jax.tree.leaves(model_state)
    moved1 = sum(float(np.abs(np.asarray(a) - np.asarray(s)).sum()) for a, s in zip(p1, start))
    moved2 = sum(float(np.abs(np.asarray(a) - np.asarray(s)).sum()) for a, s in zip(p2, start))
    assert moved2 > moved1 > 0
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(p2, p2b)), "deterministic"

    # policy_coef=0 switches the policy gradient off: on the same batch, whose groups gave a gradient above,
    # no other term is on, so nothing moves.
    off = jax.jit(make_train_step(graphdef, tasks, optimizer, GRPOHyper.orbit(num_tasks=2, group_size=4, policy_coef=0.0)))
    still, metrics = off(init_train_state(model_state, optimizer), jax.random.PRNGKey(i1))
    assert float(metrics["grad_norm"]) == 0.0 and float(metrics["loss"]) == 0.0
    assert all(np.array_equal(np.asarray(a), np.asarray(s)) for a, s in zip(jax.tree.leaves(still.params), start))


def test_hindsight_answers_come_from_the_rows_own_wins():
    """The hindsight target is the action of each row's first won turn (-1 without a win); ``answer_turns``
    scores no turn of a row without one, and the turns where its answer is valid otherwise."""
    from types import SimpleNamespace

    from metarl_jax.algos.scoring import answer_turns, hindsight_answers

    success = np.array([[0, 0, 1, 0, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 1, 0]], bool)
    taken = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    actions = np.arange(20, dtype=np.int32).reshape(4, 5) % 7
    tr = SimpleNamespace(success=success, taken=taken, actions=actions)
    answers = np.asarray(hindsight_answers(tr))
    assert answers.tolist() == [actions[0, 2], -1, actions[2, 0], -1]  # row 3's win is on a turn not taken
    valid = np.ones((4, 5, 7), bool)
    valid[0, 1, answers[0]] = False  # row 0's answer was not a valid action at turn 1
    tr = SimpleNamespace(valid=valid, action_mask=np.broadcast_to(taken[:, :, None], (4, 5, 3)))
    scored = np.asarray(answer_turns(tr, answers))
    assert scored[0].tolist() == [True, False, True, True, True]
    assert not scored[1].any() and not scored[3].any() and scored[2].all()
