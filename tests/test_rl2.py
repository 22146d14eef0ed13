"""RL^2 baseline: it meta-learns a 2-armed bandit, its GRU memory crosses episode boundaries, training is
deterministic for a seed, and the update step compiles once.

One short training (module fixture) is shared by every test; the trainer for its config is cached, so the
determinism runs reuse the same compiled update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metarl_jax import baselines, envs
from metarl_jax.baselines.rl2 import RL2Config, evaluate_rl2, policy_logits, rl2_policy
from metarl_jax.baselines.rl2_train import make_trainer, train_rl2
from metarl_jax.evaluate import play_trials

BANDIT = "BernoulliBandit-misc"  # 20 one-pull episodes per trial; arms [0.1, 0.9] or [0.9, 0.1]
SEED, UPDATES, CAP = 0, 50, 20


@pytest.fixture(scope="module")
def trained():
    model, history = train_rl2(BANDIT, jax.random.PRNGKey(SEED), num_updates=UPDATES, log=None)
    return model, history


@pytest.fixture(scope="module")
def evaluated(trained):
    """512 bandit trials played by the trained RL^2 policy and by the random policy (same tasks and env draws)."""
    model, _ = trained
    key, n = jax.random.PRNGKey(7), 512
    trial, params = envs.make_trial(BANDIT)
    return evaluate_rl2(model, BANDIT, key, n), play_trials(trial, params, baselines.random_policy(trial), key, n)


def per_step_reward(out: dict) -> np.ndarray:
    """float[N]: each trial's mean reward per step."""
    return np.asarray(out["trial_return"]) / CAP


@pytest.mark.slow
def test_rl2_beats_random_on_the_bandit(trained, evaluated):
    """Random pulls pay 0.5 per step on average (the two arms' probabilities sum to 1). A policy that has
    meta-learned "stay after a payout, switch after nothing" earns about 0.85. Measured on 512 trials (same
    tasks and env draws for both), the standard error of the gap is about 0.008, so a 0.15 margin is well
    outside the noise but far below what a working RL^2 reaches (about +0.34 with this seed and budget)."""
    _, history = trained
    rl2, rand = (per_step_reward(out) for out in evaluated)
    n = len(rl2)
    se = np.hypot(rl2.std(), rand.std()) / np.sqrt(n)
    print(f"bandit reward per step: rl2 {rl2.mean():.3f}, random {rand.mean():.3f} (se of the gap {se:.4f})")
    assert abs(rand.mean() - 0.5) < 4 * rand.std() / np.sqrt(n)
    assert rl2.mean() > rand.mean() + 0.15
    assert 0.15 > 8 * se  # the margin is far outside the noise
    # Training itself improved: the last updates earn more than the first ones.
    first = np.mean([h["reward_per_step"] for h in history[:5]])
    last = np.mean([h["reward_per_step"] for h in history[-5:]])
    print(f"training reward per step: first 5 updates {first:.3f}, last 5 {last:.3f}")
    assert last > first + 0.15


@pytest.mark.slow
def test_trained_policy_adapts_to_the_previous_episode(evaluated):
    """Win-stay, lose-shift: the arm pulled in episode 2 depends on episode 1's outcome, which only the hidden
    state carries across the boundary (each episode is one pull). After a payout the arm is the good one
    with probability 0.9, after nothing with probability 0.1; random play repeats its arm half the time either
    way. With about 256 trials per outcome the standard error of each rate is about 0.03. The learned rates
    move with the CPU's float rounding (0.92 after a payout and 0.32 after nothing on one machine, where the
    lose-shift rate had been below 0.3 on another), so the check is on the gap between them, which random play
    does not have."""
    rl2, rand = evaluated

    def stay_rates(out):
        actions, paid = np.asarray(out["actions"]), np.asarray(out["success"])
        stay = actions[1] == actions[0]
        assert 100 < paid[0].sum() < len(stay) - 100  # both outcomes of episode 1 are well represented
        return stay[paid[0]].mean(), stay[~paid[0]].mean()

    (rl2_win, rl2_lose), (rand_win, rand_lose) = stay_rates(rl2), stay_rates(rand)
    print(f"P(same arm in episode 2 | paid) rl2 {rl2_win:.3f} random {rand_win:.3f}; "
          f"(| paid nothing) rl2 {rl2_lose:.3f} random {rand_lose:.3f}")
    assert rl2_win > 0.7 and rl2_win - rl2_lose > 0.4
    assert abs(rand_win - rand_lose) < 0.2


def test_hidden_state_is_kept_across_episodes(trained):
    """Two histories that differ only in episode 1 (3-pull episodes: arm 1 three times vs arm 2 three times),
    then identical episode-2 observations, actions and rewards: the episode-2 logits still differ, and the
    memory after the boundary is not what a fresh (reset) memory would be."""
    model, _ = trained
    trial, params = envs.make_trial(BANDIT, max_turns=3, total_step_cap=9)
    policy = rl2_policy(model, trial)
    actions_a, actions_b = [0, 0, 0, 0, 1], [1, 1, 1]  # episode 2 of history A begins after 3 pulls

    @jax.jit
    def run(key):
        keys = jax.random.split(key, 8)
        _, s0 = trial.reset(keys[0], params)

        def play(actions):
            """States s0..s_k and rewards of playing ``actions`` from s0 (the same step keys for every history)."""
            states, rewards = [s0], []
            for t, a in enumerate(actions):
                _, s, r, _, _ = trial.step_env(keys[t + 1], states[-1], jnp.int32(a), params)
                states.append(s)
                rewards.append(r)
            return states, rewards

        states_a, rewards_a = play(actions_a)
        states_b, rewards_b = play(actions_b)
        boundary = states_a[3]

        def memory_after_episode_1(states, actions, rewards):
            m = policy.init(keys[0], s0)
            for t in range(2):
                m = policy.update(m, states[t], jnp.int32(actions[t]), rewards[t], states[t + 1])
            # The step that ends episode 1 leads to the same episode-2 opening in both histories.
            return policy.update(m, states[2], jnp.int32(actions[2]), rewards[2], boundary)

        mem_a = memory_after_episode_1(states_a, actions_a, rewards_a)
        mem_b = memory_after_episode_1(states_b, actions_b, rewards_b)
        fresh = policy.init(keys[0], boundary)  # what resetting the hidden state at the boundary would give
        out = {"episode_index": jnp.stack([s.episode_index for s in states_a]), "reset_gap": jnp.abs(mem_a.h - fresh.h).max(),
               "memory_gap": jnp.abs(mem_a.h - mem_b.h).max(), "logit_gaps": []}
        for t in (3, 4):  # episode 2: identical inputs for both histories
            la = jax.nn.log_softmax(policy_logits(model, trial, mem_a, states_a[t]))
            lb = jax.nn.log_softmax(policy_logits(model, trial, mem_b, states_a[t]))
            out["logit_gaps"].append(jnp.abs(la - lb).max())
            a = jnp.int32(actions_a[t])
            mem_a = policy.update(mem_a, states_a[t], a, rewards_a[t], states_a[t + 1])
            mem_b = policy.update(mem_b, states_a[t], a, rewards_a[t], states_a[t + 1])
        return out

    out = jax.tree.map(np.asarray, run(jax.random.PRNGKey(11)))
    print({k: v for k, v in out.items() if k != "episode_index"})
    assert out["episode_index"].tolist() == [0, 0, 0, 1, 1, 1]
    assert out["reset_gap"] > 1e-3
    assert out["memory_gap"] > 1e-3
    assert min(out["logit_gaps"]) > 1e-3


def test_training_is_deterministic_for_a_seed(trained):
    _, history = trained
    m1, h1 = train_rl2(BANDIT, jax.random.PRNGKey(SEED), num_updates=2, log=None)
    m2, h2 = train_rl2(BANDIT, jax.random.PRNGKey(SEED), num_updates=2, log=None)
    m3, h3 = train_rl2(BANDIT, jax.random.PRNGKey(SEED + 1), num_updates=2, log=None)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
    assert strip(h1) == strip(h2) == strip(history[:2])
    p1, p2, p3 = (jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(m))) for m in (m1, m2, m3))
    assert all(np.array_equal(a, b) for a, b in zip(p1, p2))
    assert not all(np.array_equal(a, b) for a, b in zip(p1, p3))  # another seed trains differently
    assert strip(h1) != strip(h3)


def test_update_compiles_once(trained):
    """The fixture's 50 updates and the determinism runs all used one trace of the cached trainer's update."""
    trainer = make_trainer(RL2Config(env_id=BANDIT))
    before = trainer.num_traces
    ts = trainer.init(jax.random.PRNGKey(5))
    for _ in range(3):
        ts, metrics = trainer.update(ts)
    assert int(ts.step) == 3
    assert before == 1 and trainer.num_traces == 1
    assert set(metrics) >= {"trial_return", "episode_success", "policy_loss", "value_loss", "entropy"}


def test_unknown_env_id_raises_value_error():
    with pytest.raises(ValueError, match="unknown env id"):
        train_rl2("GuessTheNumbr", jax.random.PRNGKey(0), num_updates=1, log=None)
    with pytest.raises(ValueError, match="multiple of minibatches"):
        RL2Config(env_id=BANDIT, num_trials=10, minibatches=4)
