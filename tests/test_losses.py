"""Hand-computed checks of metarl_jax.algos.losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax.algos import (
    broadcast_to_tokens,
    discounted_returns,
    entropy_bonus,
    group_advantages,
    kl_to_reference,
    ppo_clip_loss,
)
from metarl_jax.algos.losses import normalise_over_groups, normalise_over_keys, turn_keys


# ---------------------------------------------------------------- advantages


def test_group_advantages_groups_of_two():
    adv = group_advantages(jnp.array([0.0, 1.0, 2.0, 3.0]), group_size=2, eps=0.0)
    # each group: mean x.5, population std 0.5 -> (-0.5/0.5, 0.5/0.5)
    np.testing.assert_allclose(adv, [-1.0, 1.0, -1.0, 1.0], rtol=1e-6)
    adv_eps = group_advantages(jnp.array([0.0, 1.0, 2.0, 3.0]), group_size=2)
    np.testing.assert_allclose(adv_eps, np.array([-0.5, 0.5, -0.5, 0.5]) / (0.5 + 1e-6), rtol=1e-6)


def test_group_advantages_group_of_four():
    adv = group_advantages(jnp.array([0.0, 1.0, 2.0, 3.0]), group_size=4, eps=0.0)
    # mean 1.5; population var (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    std = math.sqrt(1.25)
    np.testing.assert_allclose(adv, np.array([-1.5, -0.5, 0.5, 1.5]) / std, rtol=1e-6)


def test_group_advantages_equal_returns_are_exactly_zero():
    adv = group_advantages(jnp.array([0.1, 0.1, 0.1, 2.0, 0.0, 1.0]), group_size=3)
    np.testing.assert_array_equal(np.asarray(adv[:3]), 0.0)
    assert np.all(np.isfinite(adv))
    assert float(adv[3]) > 0 and float(adv[4]) < 0


@pytest.mark.parametrize("ddof", [0, 1])
def test_group_advantages_std_against_numpy(ddof):
    """ddof 1 is verl's torch.std (ORBIT's advantage), ddof 0 the population std; float64 NumPy reference."""
    returns = np.random.default_rng(0).integers(0, 4, size=24).astype(np.float64)
    returns[8:16] = 2.0  # one group of equal returns
    adv = np.asarray(group_advantages(jnp.asarray(returns), group_size=8, ddof=ddof))
    for g in range(3):
        r = returns[8 * g:8 * g + 8]
        want = np.zeros(8) if r.min() == r.max() else (r - r.mean()) / (r.std(ddof=ddof) + 1e-6)
        np.testing.assert_allclose(adv[8 * g:8 * g + 8], want, atol=1e-6, rtol=0)
    assert not np.allclose(adv, np.asarray(group_advantages(jnp.asarray(returns), 8, ddof=1 - ddof)))


# Two rows, six turns. Row 0: episode 0 won on its 2nd turn, episode 1 won at once, episode 2 lost after 3 turns.
# Row 1: episode 0 lost after 3 turns, episode 1 won on its 2nd turn, then episode 2; its last turn is not played.
EPISODE = jnp.array([[0, 0, 1, 2, 2, 2], [0, 0, 0, 1, 1, 2]])
SUCCESS = jnp.array([[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0]], bool)
DONE = jnp.array([[0, 1, 1, 0, 0, 1], [0, 0, 1, 0, 1, 0]], bool)
PLAYED = jnp.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]], bool)


def test_turn_keys_by_hand():
    keys = np.asarray(turn_keys(EPISODE, SUCCESS, DONE, PLAYED, "record"))
    # (episode, turn in it, earlier episodes won, last episode won) per turn; -1 on the turn not played
    np.testing.assert_array_equal(keys[0], [[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 1], [2, 0, 2, 1], [2, 1, 2, 1],
                                            [2, 2, 2, 1]])
    np.testing.assert_array_equal(keys[1], [[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0],
                                            [-1, -1, -1, -1]])
    np.testing.assert_array_equal(np.asarray(turn_keys(EPISODE, SUCCESS, DONE, PLAYED, "episode_turn")),
                                  keys[..., :2])
    np.testing.assert_array_equal(np.asarray(turn_keys(EPISODE, SUCCESS, DONE, PLAYED, "turn"))[..., 0],
                                  [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, -1]])
    with pytest.raises(ValueError, match="advantage groups"):
        turn_keys(EPISODE, SUCCESS, DONE, PLAYED, "episode")


def test_normalise_over_turn_keys_is_the_per_position_normalisation():
    values = jax.random.normal(jax.random.PRNGKey(0), (8, 6))
    keys = turn_keys(jnp.zeros((8, 6), int), jnp.zeros((8, 6), bool), jnp.zeros((8, 6), bool),
                     jnp.ones((8, 6), bool), "turn")
    np.testing.assert_allclose(normalise_over_keys(values, keys, 4), normalise_over_groups(values, 4), atol=1e-6)


@pytest.mark.parametrize("ddof", [0, 1])
def test_normalise_over_keys_against_numpy(ddof):
    """Each turn against the group's turns with the same key; lone keys, equal values and unplayed turns get 0."""
    rng = np.random.default_rng(1)
    values = rng.integers(0, 3, size=(8, 5)).astype(np.float64)
    keys = rng.integers(0, 3, size=(8, 5, 2))
    keys[rng.random((8, 5)) < 0.2] = -1
    out = np.asarray(normalise_over_keys(jnp.asarray(values), jnp.asarray(keys), 4, ddof=ddof))
    lone = spread = 0
    for i in range(8):
        for t in range(5):
            group = range(4 * (i // 4), 4 * (i // 4) + 4)
            same = [values[j, s] for j in group for s in range(5) if keys[i, t, 0] >= 0
                    and (keys[j, s] == keys[i, t]).all()]
            if len(same) < 2 or min(same) == max(same):
                want, lone = 0.0, lone + 1
            else:
                want, spread = (values[i, t] - np.mean(same)) / (np.std(same, ddof=ddof) + 1e-6), spread + 1
            np.testing.assert_allclose(out[i, t], want, atol=1e-5, rtol=0)
    assert lone > 0 and spread > 0


def test_group_advantages_refuses_other_ddof():
    with pytest.raises(ValueError, match="ddof"):
        group_advantages(jnp.zeros(4), 2, ddof=2)


def test_broadcast_to_tokens():
    mask = jnp.array([[0, 1, 1, 0], [1, 0, 0, 1]], bool)
    out = broadcast_to_tokens(jnp.array([2.0, -3.0]), mask)
    np.testing.assert_array_equal(out, [[0, 2, 2, 0], [-3, 0, 0, -3]])


# ---------------------------------------------------------------- PPO clip

# One sequence: column 0 is an observation token (masked out, huge log-ratio), then 6 action tokens.
RATIOS = np.array([50.0, 1.5, 1.1, 0.5, 0.9, 1.5, 0.5])
ADVS = np.array([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0])
MASK = np.array([[False, True, True, True, True, True, True]])
# per-token loss -min(rA, clip(r, 0.8, 1.28) A):
#  r=1.5,A=+1 -> -1.28 (clipped)   r=1.1,A=+1 -> -1.1
#  r=0.5,A=-1 -> +0.8 (clipped)    r=0.9,A=-1 -> +0.9
#  r=1.5,A=-1 -> +1.5 (no clip on this side)   r=0.5,A=+1 -> -0.5 (no clip on this side)
TOKEN_LOSS = np.array([-1.28, -1.1, 0.8, 0.9, 1.5, -0.5])
# d loss_token / d logp = -r A where unclipped, 0 where clipped; divided by 6 action tokens
GRAD = np.array([0.0, 0.0, -1.1, 0.0, 0.9, 1.5, -0.5]) / 6.0


def _ppo_inputs():
    old = jnp.log(jnp.array([[0.01, 0.2, 0.3, 0.4, 0.5, 0.3, 0.6]]))
    logp = old + jnp.log(jnp.asarray(RATIOS))[None]
    return logp, old, jnp.asarray(ADVS)[None], jnp.asarray(MASK)


def test_ppo_asymmetric_clip_values_and_metrics():
    logp, old, adv, mask = _ppo_inputs()
    loss, m = ppo_clip_loss(logp, old, adv, mask)
    assert float(loss) == pytest.approx(TOKEN_LOSS.mean(), abs=1e-6)  # 0.32 / 6
    assert float(loss) == pytest.approx(0.32 / 6, abs=1e-6)
    assert float(m["clip_fraction"]) == pytest.approx(2 / 6, abs=1e-6)
    r = RATIOS[1:]
    assert float(m["ratio_mean"]) == pytest.approx(r.mean(), abs=1e-5)
    assert float(m["approx_kl"]) == pytest.approx(np.mean((r - 1) - np.log(r)), abs=1e-5)


def test_ppo_gradient_zero_beyond_clip_and_on_observation_tokens():
    logp, old, adv, mask = _ppo_inputs()
    g = jax.grad(lambda lp: ppo_clip_loss(lp, old, adv, mask)[0])(logp)
    np.testing.assert_allclose(g[0], GRAD, atol=1e-6)
    g = np.asarray(g[0])
    assert g[0] == 0.0  # observation token: exactly zero
    assert g[1] == 0.0 and g[3] == 0.0  # clipped at 1.28 (A>0) and at 0.8 (A<0)
    assert np.all(g[[2, 4, 5, 6]] != 0.0)


def test_dual_clip_against_reference():
    """Dual-clip (c = 3) against verl's formulation, written out in NumPy: for A < 0 the token loss is
    min(max(-rA, -clip(r)A), -cA); for A >= 0 it is the usual max(-rA, -clip(r)A)."""
    ratios = np.array([5.0, 2.0, 5.0, 0.5, 3.5])
    advs = np.array([-1.0, -1.0, 1.0, -1.0, -0.5])
    old = jnp.zeros((1, 5))
    logp = jnp.log(jnp.asarray(ratios))[None]
    mask = jnp.ones((1, 5), bool)
    base = np.maximum(-ratios * advs, -np.clip(ratios, 0.8, 1.28) * advs)
    want = np.where(advs < 0, np.minimum(base, -3.0 * advs), base)  # [3, 2, -1.28, 0.8, 1.5]
    loss, m = ppo_clip_loss(logp, old, jnp.asarray(advs)[None], mask, dual_clip=3.0)
    assert float(loss) == pytest.approx(want.mean(), abs=1e-6)
    assert float(m["dual_clip_fraction"]) == pytest.approx(2 / 5, abs=1e-6)
    # A token held at the dual-clip bound gets no gradient; r = 2 with A = -1 keeps -rA's.
    g = np.asarray(jax.grad(lambda lp: ppo_clip_loss(lp, old, jnp.asarray(advs)[None], mask, dual_clip=3.0)[0])(logp))[0]
    np.testing.assert_allclose(g, np.array([0.0, 2.0, 0.0, 0.0, 0.0]) / 5, atol=1e-6)
    off, m_off = ppo_clip_loss(logp, old, jnp.asarray(advs)[None], mask)
    assert float(off) == pytest.approx(base.mean(), abs=1e-6) and float(m_off["dual_clip_fraction"]) == 0.0
    # Inert at r = 1 (one on-policy update per batch).
    same = jnp.zeros((1, 5))
    np.testing.assert_allclose(ppo_clip_loss(same, old, jnp.asarray(advs)[None], mask, dual_clip=3.0)[0],
                               ppo_clip_loss(same, old, jnp.asarray(advs)[None], mask)[0], rtol=0, atol=0)


def test_ppo_clip_boundaries_1p28_and_0p8():
    old = jnp.zeros((1, 4))
    # ratios just inside / just outside the upper clip for A>0
    logp = jnp.log(jnp.array([[1.27, 1.29, 0.81, 0.79]]))
    adv = jnp.array([[1.0, 1.0, -1.0, -1.0]])
    mask = jnp.ones((1, 4), bool)
    g = jax.grad(lambda lp: ppo_clip_loss(lp, old, adv, mask)[0])(logp)
    np.testing.assert_allclose(g[0], np.array([-1.27, 0.0, 0.81, 0.0]) / 4, atol=1e-6)
    loss, m = ppo_clip_loss(logp, old, adv, mask)
    assert float(loss) == pytest.approx((-1.27 - 1.28 + 0.81 + 0.8) / 4, abs=1e-6)
    assert float(m["clip_fraction"]) == pytest.approx(0.5)


def test_ppo_seq_mean_token_mean_vs_token_mean():
    # ratio 1 everywhere -> per-token loss = -A.
    # seq 0: 1 action token, A=+1 -> -1;  seq 1: 3 action tokens, A=-1 -> +1 each;
    # seq 2: no action tokens (excluded from the sequence mean).
    logp = jnp.full((3, 4), -1.0)
    mask = jnp.array([[0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
    adv = jnp.array([1.0, -1.0, 5.0])  # [N] form
    seq, _ = ppo_clip_loss(logp, logp, adv, mask)
    tok, _ = ppo_clip_loss(logp, logp, adv, mask, aggregation="token-mean")
    assert float(seq) == pytest.approx((-1.0 + 1.0) / 2, abs=1e-7)  # 0.0
    assert float(tok) == pytest.approx((-1.0 + 3.0) / 4, abs=1e-7)  # 0.5
    # [N, L] advantages give the same result as [N]
    seq2, _ = ppo_clip_loss(logp, logp, broadcast_to_tokens(adv, mask), mask)
    assert float(seq2) == pytest.approx(float(seq), abs=1e-7)
    with pytest.raises(ValueError):
        ppo_clip_loss(logp, logp, adv, mask, aggregation="bogus")


def test_ppo_no_action_tokens_gives_zero():
    logp = jnp.zeros((2, 3))
    loss, m = ppo_clip_loss(logp, logp, jnp.ones(2), jnp.zeros((2, 3), bool))
    assert float(loss) == 0.0 and float(m["clip_fraction"]) == 0.0


# ---------------------------------------------------------------- KL / entropy


def test_kl_k3():
    logp = jnp.log(jnp.array([[0.5, 0.5, 0.9]]))
    mask = jnp.array([[True, True, False]])
    assert float(kl_to_reference(logp, logp, mask)) == 0.0
    ref = jnp.log(jnp.array([[0.25, 0.5, 0.01]]))  # last token masked out
    # token 0: d = log(0.5): 0.5 - log 0.5 - 1 = 0.193147; token 1: 0
    kl = kl_to_reference(logp, ref, mask)
    assert float(kl) == pytest.approx((0.5 + math.log(2) - 1) / 2, abs=1e-6)
    assert float(kl) > 0
    ref2 = jnp.log(jnp.array([[0.9, 0.7, 0.9]]))
    assert float(kl_to_reference(logp, ref2, mask)) > 0


def test_entropy_uniform_is_log_v():
    v = 7
    logits = jnp.zeros((2, 3, v))
    logits = logits.at[1, 2].set(jnp.array([100.0] + [0.0] * (v - 1)))  # peaked, but masked out
    mask = jnp.array([[1, 1, 0], [0, 1, 0]], bool)
    assert float(entropy_bonus(logits, mask)) == pytest.approx(math.log(v), abs=1e-5)
    # seq-mean-token-mean: seq 0 = (log 7 + 0) / 2, seq 1 = log 7 -> mean 0.75 log 7
    mask2 = jnp.array([[1, 0, 0], [0, 1, 1]], bool)
    logits2 = logits.at[0, 0].set(jnp.zeros(v))
    assert float(entropy_bonus(logits2, mask2)) == pytest.approx(
        (math.log(v) + (math.log(v) + 0.0) / 2) / 2, abs=1e-5
    )


# ---------------------------------------------------------------- discounted returns


def test_discounted_returns_two_episodes():
    rewards = jnp.array([[0.0, 1.0, 0.0, 0.0, 1.0]])
    done = jnp.array([[False, True, False, False, True]])
    out = discounted_returns(rewards, done, gamma_step=0.5, gamma_traj=0.25)
    # G4 = 1; G3 = 0.5*1; G2 = 0.5*0.5; G1 = 1 + 0.25*0.25 (ends episode 1); G0 = 0.5*1.0625
    np.testing.assert_allclose(out[0], [0.53125, 1.0625, 0.25, 0.5, 1.0], rtol=1e-6)


def test_discounted_returns_gamma_one_is_reverse_cumsum():
    rewards = jnp.array([[1.0, 2.0, 3.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    done = jnp.array([[False, True, False, False, True], [True, False, True, False, True]])
    out = discounted_returns(rewards, done, 1.0, 1.0)
    np.testing.assert_allclose(out, [[7, 6, 4, 1, 1], [1, 1, 1, 0, 0]])
    np.testing.assert_allclose(out, np.cumsum(np.asarray(rewards)[:, ::-1], axis=1)[:, ::-1])
