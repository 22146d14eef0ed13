"""The GRPO step against the analytic policy gradient, on a two-armed bandit played as a one-turn text game.

Every task has the better arm first (arm 1 pays with probability 0.9, arm 2 with 0.1), and a trial is one pull,
so the policy sees the same context in every row and chooses between two actions: its distribution is
pi = P(arm 1) = sigmoid(z), z the log-odds. With plain SGD (learning rate eta) and the step's loss (PPO-clip at
ratio 1, GRPO advantages, the mean over each row's n action tokens, then over the G rows), the expected change
of the parameters is

    E[delta theta] = eta / (G n) * E[sum_i A_i s_i] * grad z,   s_i = 1 - pi (arm 1 chosen) or -pi (arm 2),

because grad log pi(arm 1) = (1 - pi) grad z and grad log pi(arm 2) = -pi grad z. E[sum_i A_i s_i] is computed
here exactly, by enumerating the 4^G (action, reward) outcomes of a group with the group-normalised advantage
A_i = (R_i - mean) / (std + 1e-6) (0 when the group's returns are equal). To first order the expected change
of pi is then pi (1 - pi) * eta / (G n) * E[sum A s] * |grad z|^2, which must match the mean change over many
independent steps; over several steps in a row, pi must rise in expectation at every step.
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from metarl_jax.agents.rollout import rollout
from metarl_jax.algos.grpo import GRPOHyper, init_train_state, make_train_step
from metarl_jax.algos.scoring import teacher_forced
from metarl_jax.models import Transformer, preset
from metarl_jax.tasks import build_task
from metarl_jax.text import WordTokenizer

GROUP = 4
PAY = (0.9, 0.1)  # the arms' reward probabilities in every task kept


def expected_sum_of_advantage_times_score(pi: float, group: int = GROUP) -> float:
    """E[sum_i A_i s_i] over a group's (action, reward) outcomes, enumerated exactly."""
    outcomes = [(arm, paid) for arm in (0, 1) for paid in (0, 1)]
    prob = {(arm, paid): (pi if arm == 0 else 1 - pi) * (PAY[arm] if paid else 1 - PAY[arm]) for arm, paid in outcomes}
    total = 0.0
    for group_outcome in itertools.product(outcomes, repeat=group):
        p = np.prod([prob[o] for o in group_outcome])
        returns = np.array([paid for _, paid in group_outcome], np.float64)
        if returns.max() == returns.min():
            continue  # all advantages 0
        adv = (returns - returns.mean()) / (returns.std() + 1e-6)
        score = np.array([(1 - pi) if arm == 0 else -pi for arm, _ in group_outcome])
        total += p * float(adv @ score)
    return total


@pytest.fixture(scope="module")
def bandit():
    tok = WordTokenizer()
    task = build_task(dict(env_id="BernoulliBandit-misc", total_step_cap=1), tok, split="train", seed=0,
                      num_tasks=64, intro=False)
    probs = np.asarray(jax.vmap(lambda k: task.env.sample_task(k, task.env_params))(task.task_keys))
    keep = np.flatnonzero(probs[:, 0] > probs[:, 1])
    np.testing.assert_allclose(probs[keep], np.broadcast_to(PAY, (len(keep), 2)), atol=1e-6)
    task = dataclasses.replace(task, task_keys=task.task_keys[keep])
    graphdef, params = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    # One recorded row: the context every trial starts from and the action it took. Its teacher-forced
    # log-probability gives pi exactly (two valid actions: the other's probability is the complement).
    tasks = jax.vmap(lambda k: task.env.sample_task(k, task.env_params))(task.task_keys[:1])
    _, trials = jax.vmap(task.env.reset_to_task, in_axes=(0, 0, None))(jax.random.split(jax.random.PRNGKey(0), 1),
                                                                        tasks, task.env_params)
    row = rollout(graphdef, params, task, jax.random.PRNGKey(1), trials)
    assert bool(np.asarray(row.valid)[0, 0].sum() == 2)
    chose_first = int(np.asarray(row.actions)[0, 0]) == 0
    n_tokens = int(np.asarray(row.action_mask)[0, 0].sum())

    def log_odds(p):
        logp_taken = teacher_forced(graphdef, p, row, task.table, 1.0, 1.0).logp[0, 0].sum()
        other = jnp.log1p(-jnp.exp(logp_taken))
        return logp_taken - other if chose_first else other - logp_taken

    return task, graphdef, params, jax.jit(log_odds), jax.jit(jax.grad(log_odds)), n_tokens


def make_step(task, graphdef, lr):
    hp = GRPOHyper.orbit(num_tasks=1, group_size=GROUP, temperature=1.0, top_p=1.0)
    optimizer = optax.sgd(lr)
    return optimizer, jax.jit(make_train_step(graphdef, [task], optimizer, hp))


@pytest.mark.slow
def test_one_step_moves_pi_at_the_analytic_rate(bandit):
    """The mean change of pi over 300 independent steps from the same parameters matches the first-order
    prediction of the exact expected GRPO update, within 3 standard errors (and 20%)."""
    task, graphdef, params, log_odds, grad_log_odds, n_tokens = bandit
    pi = float(jax.nn.sigmoid(log_odds(params)))
    assert 0.2 < pi < 0.8  # a fresh model: both arms are played
    grad_sq = float(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grad_log_odds(params))))
    lr = 0.02 / grad_sq  # a step of ~0.02 in log-odds at most: first order holds
    optimizer, step = make_step(task, graphdef, lr)
    state = init_train_state(params, optimizer)
    e_sum = expected_sum_of_advantage_times_score(pi)
    assert e_sum > 0  # the better arm's advantage is positive in expectation
    predicted = pi * (1 - pi) * lr / (GROUP * n_tokens) * e_sum * grad_sq
    changes = np.array([float(jax.nn.sigmoid(log_odds(step(state, jax.random.PRNGKey(i))[0].params))) - pi
                        for i in range(300)])
    mean, se = changes.mean(), changes.std(ddof=1) / np.sqrt(len(changes))
    assert abs(mean - predicted) < 3 * se and abs(mean - predicted) < 0.2 * predicted, (mean, se, predicted)


@pytest.mark.slow
def test_pi_rises_in_expectation_at_every_step(bandit):
    """Eight steps in a row, averaged over 24 seeds: the mean probability of the better arm rises at every step."""
    task, graphdef, params, log_odds, grad_log_odds, _ = bandit
    grad_sq = float(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grad_log_odds(params))))
    optimizer, step = make_step(task, graphdef, 1.0 / grad_sq)
    curves = []
    for seed in range(24):
        state, curve = init_train_state(params, optimizer), [float(jax.nn.sigmoid(log_odds(params)))]
        for i in range(8):
            state, _ = step(state, jax.random.fold_in(jax.random.PRNGKey(seed), i))
            curve.append(float(jax.nn.sigmoid(log_odds(state.params))))
        curves.append(curve)
    mean = np.mean(curves, axis=0)
    assert (np.diff(mean) > 0).all(), mean
    assert mean[-1] > mean[0] + 0.1, mean
