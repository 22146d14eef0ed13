"""The GRPO loss on a recorded batch against a slow NumPy reference written from the method's definition.

A batch is recorded from a real multi-episode rollout (Blackjack, 2 tasks x 4 rollouts, constrained decoding),
so the masks are the rollout's own: its actions have different token lengths, so rows have different numbers of
action tokens and the shorter actions' padding is masked.
The policy is then scored under *other* parameters (the recorded ones plus noise), so the importance ratios
differ from 1 and both sides of the asymmetric clip are hit. The reference loops over rows and tokens in float64:

* advantage of row i: (R_i - mean of its group) / (std of its group + 1e-6), 0 when the group's returns are
  all equal, R_i the row's summed reward; the std is the population std, or with ``advantage_std_ddof=1`` the
  sample std (ORBIT's, through verl);
* per action token: -min(r A, clip(r, 1 - 0.2, 1 + 0.28) A), r = exp(logp - logp_old);
* "seq-mean-token-mean": the mean over each row's action tokens, then over the rows that have one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metarl_jax.agents.rollout import rollout
from metarl_jax.algos.grpo import GRPOHyper, turn_advantages
from metarl_jax.algos.losses import ppo_clip_loss
from metarl_jax.algos.scoring import teacher_forced
from metarl_jax.models import Transformer, preset
from metarl_jax.tasks import build_task
from metarl_jax.text import WordTokenizer

GROUP, TASKS = 4, 2


@pytest.fixture(scope="module")
def recorded():
    """(transcript, advantages [B, T], logp under the noisy parameters [B, T, A])."""
    tok = WordTokenizer()
    task = build_task(dict(env_id="game:Blackjack-v0", total_step_cap=6), tok, split="train", seed=0,
                      num_tasks=8, intro=False)
    graphdef, params = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(3)))
    keys = jnp.repeat(task.task_keys[:TASKS], GROUP, axis=0)
    tasks = jax.vmap(lambda k: task.env.sample_task(k, task.env_params))(keys)
    _, trials = jax.vmap(task.env.reset_to_task, in_axes=(0, 0, None))(
        jax.random.split(jax.random.PRNGKey(1), TASKS * GROUP), tasks, task.env_params)
    tr = jax.jit(lambda p, k, s: rollout(graphdef, p, task, k, s))(params, jax.random.PRNGKey(2), trials)
    noise = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(4), x.shape, x.dtype), params)
    scored = jax.jit(lambda p: teacher_forced(graphdef, p, tr, task.table, 1.0, 1.0))(noise)
    adv = turn_advantages(tr, GROUP, GRPOHyper.orbit(num_tasks=TASKS, group_size=GROUP))
    return tr, np.asarray(adv), np.asarray(scored.logp)


def reference_advantages(returns, group, ddof=0):
    out = np.zeros(len(returns))
    for start in range(0, len(returns), group):
        r = np.asarray(returns[start:start + group], np.float64)
        if r.max() == r.min():
            continue
        mean = sum(r) / group
        std = (sum((x - mean) ** 2 for x in r) / (group - ddof)) ** 0.5
        for j in range(group):
            out[start + j] = (r[j] - mean) / (std + 1e-6)
    return out


def reference_loss(logp, old_logp, mask, row_adv, clip_low=0.2, clip_high=0.28):
    row_means = []
    for i in range(logp.shape[0]):
        terms = []
        for t in range(logp.shape[1]):
            if mask[i, t]:
                ratio = np.exp(np.float64(logp[i, t]) - np.float64(old_logp[i, t]))
                clipped = min(max(ratio, 1.0 - clip_low), 1.0 + clip_high)
                terms.append(-min(ratio * row_adv[i], clipped * row_adv[i]))
        if terms:
            row_means.append(sum(terms) / len(terms))
    return sum(row_means) / len(row_means) if row_means else 0.0


def test_recorded_batch_exercises_the_masks_and_the_clip(recorded):
    """The batch is a real test: groups with unequal returns, rows of different action-token counts, masked
    tokens, and ratios beyond both clip bounds."""
    tr, adv, logp = recorded
    mask = np.asarray(tr.action_mask).reshape(len(adv), -1)
    returns = np.asarray(tr.rewards).sum(axis=1)
    assert len(set(returns[:GROUP])) > 1 or len(set(returns[GROUP:])) > 1
    assert 0 < mask.sum() < mask.size and len(set(mask.sum(axis=1))) > 1
    ratio = np.exp(logp.reshape(mask.shape) - np.asarray(tr.logp).reshape(mask.shape))[mask]
    assert (ratio > 1.28).any() and (ratio < 0.8).any()


def test_advantages_match_the_reference(recorded):
    tr, adv, _ = recorded
    returns = np.asarray(tr.rewards).sum(axis=1)
    np.testing.assert_allclose(adv, np.broadcast_to(reference_advantages(returns, GROUP)[:, None], adv.shape),
                               atol=1e-6, rtol=0)


def test_sample_std_advantages_match_the_reference(recorded):
    """ORBIT's advantage (verl: torch.std, the sample std) on the recorded batch."""
    tr, adv, _ = recorded
    sample = np.asarray(turn_advantages(tr, GROUP, GRPOHyper.orbit(num_tasks=TASKS, group_size=GROUP, advantage_std_ddof=1)))
    returns = np.asarray(tr.rewards).sum(axis=1)
    np.testing.assert_allclose(sample, np.broadcast_to(reference_advantages(returns, GROUP, ddof=1)[:, None], adv.shape),
                               atol=1e-6, rtol=0)
    assert np.abs(sample).max() < np.abs(adv).max()  # the sample std is the larger one


def test_ppo_loss_matches_the_reference(recorded):
    """The loss as the train step builds it (per-turn advantages put on each turn's action tokens, flattened
    over turns) equals the reference within 1e-6."""
    tr, adv, logp = recorded
    rows = adv.shape[0]
    mask = np.asarray(tr.action_mask).reshape(rows, -1)
    old = np.asarray(tr.logp).reshape(rows, -1)
    tok_adv = np.broadcast_to(adv[:, :, None], np.asarray(tr.action_tokens).shape).reshape(rows, -1)
    loss, _ = ppo_clip_loss(jnp.asarray(logp.reshape(rows, -1)), jnp.asarray(old), jnp.asarray(tok_adv),
                            jnp.asarray(mask))
    expected = reference_loss(logp.reshape(rows, -1), old, mask, adv[:, 0])
    assert abs(float(loss) - expected) < 1e-6, (float(loss), expected)


def reference_record_advantages(tr, group, gamma_step, gamma_traj):
    """LaMer's discounted return-to-go of each played turn, normalised over the group's played turns with the same
    episode, turn in it, number of earlier episodes won and last episode's outcome (``advantage_groups="record"``)."""
    rewards, done, won, episode = (np.asarray(x) for x in (tr.rewards, tr.episode_done, tr.success, tr.episode_index))
    played = np.asarray(tr.taken) & ~np.asarray(tr.reflection)
    rows, turns = rewards.shape
    ret, keys = np.zeros((rows, turns)), {}
    for i in range(rows):
        g = 0.0
        for t in reversed(range(turns)):
            g = rewards[i, t] + (gamma_traj if done[i, t] else gamma_step) * g
            ret[i, t] = g
        turn = wins = last_won = 0
        for t in range(turns):
            if played[i, t]:
                keys[i, t] = (episode[i, t], turn, wins, last_won)
                turn, wins = (0 if done[i, t] else turn + 1), wins + int(won[i, t])
                last_won = int(won[i, t]) if done[i, t] else last_won
    out = np.zeros((rows, turns))
    for (i, t), key in keys.items():
        same = [ret[j, s] for (j, s), other in keys.items() if j // group == i // group and other == key]
        if min(same) < max(same):
            out[i, t] = (ret[i, t] - np.mean(same)) / (np.std(same) + 1e-6)
    return out, keys


def test_record_advantages_match_the_reference(recorded):
    """``advantage_groups="record"`` on the recorded multi-episode batch: each turn compared only with the group's
    turns of the same episode, turn and record of earlier wins."""
    tr = recorded[0]
    hp = GRPOHyper(num_tasks=TASKS, group_size=GROUP, advantage_groups="record")
    want, keys = reference_record_advantages(tr, GROUP, hp.gamma_step, hp.gamma_traj)
    assert len({key[2:] for key in keys.values()}) > 2  # records with and without earlier wins
    np.testing.assert_allclose(np.asarray(turn_advantages(tr, GROUP, hp)), want, atol=1e-5, rtol=0)
    per_turn = np.asarray(turn_advantages(tr, GROUP, GRPOHyper(num_tasks=TASKS, group_size=GROUP)))
    assert not np.allclose(per_turn, want, atol=1e-3)
