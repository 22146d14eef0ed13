"""Pure ``jnp`` loss functions for GRPO / PPO training on multi-episode trials.

Shapes: ``N`` = number of rollouts (``num_tasks * group_size``, rollouts of one task adjacent),
``L`` = transcript length in tokens, ``V`` = vocabulary size, ``T`` = env steps of a trial.
``action_mask`` marks the tokens the policy generated (the trained tokens); observation and
padding tokens are 0 and get exactly zero loss and zero gradient.

Aggregation "seq-mean-token-mean" (ORBIT / verl): mean over the action tokens of each sequence,
then mean over sequences. Choice made here: a sequence with no action tokens contributes 0 and is
excluded from the sequence mean (the denominator counts only sequences with >= 1 action token);
if no sequence has an action token the result is 0.
"""

from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

AGGREGATIONS = ("seq-mean-token-mean", "token-mean")


def normalise_over_groups(values: Array, group_size: int, eps: float = 1e-6, ddof: int = 0) -> Array:
    """GRPO's group normalisation along the leading axis: ``(x - group mean) / (group std + eps)``.

    Args:
      values: float[N, ...], N = num_tasks * group_size, each group's rows adjacent; trailing axes (e.g. the
        turns of a per-turn return) are normalised position by position.
      group_size: G, rows per group.
      eps: added to the group std.
      ddof: the std's delta degrees of freedom: 0 the population std, 1 the sample std (verl's ``torch.std``,
        which ORBIT trains with).
    Returns:
      float[N, ...]. Positions where a group's values are all equal get exactly 0 (also for G = 1 with ddof 1,
      where the sample std is undefined).
    """
    values = jnp.asarray(values, jnp.float32)
    n = values.shape[0]
    if n % group_size:
        raise ValueError(f"len(returns)={n} is not a multiple of group_size={group_size}")
    if ddof not in (0, 1):
        raise ValueError(f"ddof={ddof}: expected 0 (population std) or 1 (sample std)")
    r = values.reshape(n // group_size, group_size, *values.shape[1:])
    mean = r.mean(axis=1, keepdims=True)
    all_equal = r.max(axis=1, keepdims=True) == r.min(axis=1, keepdims=True)
    adv = (r - mean) / (r.std(axis=1, keepdims=True, ddof=ddof if group_size > 1 else 0) + eps)
    return jnp.where(all_equal, 0.0, adv).reshape(values.shape)


ADVANTAGE_GROUPS = ("turn", "episode_turn", "record")


def turn_keys(episode_index: Array, success: Array, episode_done: Array, played: Array, groups: str) -> Array:
    """int32[N, T, K]: which turns of a group's rows a turn's return-to-go is compared with (equal keys).

    Args:
      episode_index, success, episode_done, played: [N, T] per turn (``played``: an env step of the trial).
      groups: "turn" the turn's position in the trial (K = 1); "episode_turn" its episode index and its position in
        that episode (K = 2); "record" those and the record of the episodes before it, how many were won and whether
        the last one was (K = 4), so a search after a lost episode is compared with other searches after one, not
        with repeats of a found answer.
    Returns:
      int32[N, T, K]; every component is -1 on the turns not played.
    """
    n, t = episode_index.shape
    if groups not in ADVANTAGE_GROUPS:
        raise ValueError(f"unknown advantage groups {groups!r}; expected one of {ADVANTAGE_GROUPS}")
    if groups == "turn":
        keys = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (n, t))[..., None]
    else:
        def step(carry, x):
            turn, wins, last_won = carry
            won, done, live = x
            out = (turn, wins, last_won)
            turn = jnp.where(live, jnp.where(done, 0, turn + 1), turn)
            wins = wins + (live & won)
            last_won = jnp.where(live & done, won.astype(jnp.int32), last_won)
            return (turn, wins, last_won), out

        zero = jnp.zeros(n, jnp.int32)
        xs = (success.astype(bool).T, episode_done.astype(bool).T, played.astype(bool).T)
        _, history = lax.scan(step, (zero, zero, zero), xs)
        turn, wins, last_won = (h.T for h in history)
        keys = jnp.stack([episode_index.astype(jnp.int32), turn] + ([wins, last_won] if groups == "record" else []), -1)
    return jnp.where(jnp.asarray(played, bool)[..., None], keys, -1)


def normalise_over_keys(values: Array, keys: Array, group_size: int, eps: float = 1e-6, ddof: int = 0) -> Array:
    """GRPO's group normalisation of per-turn values, each turn against the turns of its group's rows that share
    its key: ``(x - mean) / (std + eps)`` over those turns.

    Args:
      values: float[N, T], N = num_tasks * group_size, each group's rows adjacent.
      keys: int32[N, T, K] (:func:`turn_keys`); a turn whose first component is -1 is neither normalised nor
        compared (it gets 0).
      group_size, eps, ddof: as in :func:`normalise_over_groups`.
    Returns:
      float[N, T]. A turn whose matching turns all hold the same value (a lone one included) gets exactly 0.
    """
    values = jnp.asarray(values, jnp.float32)
    n, t = values.shape
    if n % group_size:
        raise ValueError(f"len(returns)={n} is not a multiple of group_size={group_size}")
    v = values.reshape(n // group_size, group_size * t)
    k = keys.reshape(*v.shape, keys.shape[-1])
    live = k[..., 0] >= 0
    same = (k[:, :, None] == k[:, None, :]).all(-1) & live[:, :, None] & live[:, None, :]  # [groups, G*T, G*T]
    count = same.sum(-1)
    mean = jnp.where(same, v[:, None, :], 0.0).sum(-1) / jnp.maximum(count, 1)
    square = jnp.where(same, (v[:, None, :] - mean[..., None]) ** 2, 0.0).sum(-1)
    std = jnp.sqrt(square / jnp.maximum(count - ddof, 1))
    spread = jnp.where(same, v[:, None, :], -jnp.inf).max(-1) > jnp.where(same, v[:, None, :], jnp.inf).min(-1)
    adv = jnp.where(live & spread, (v - mean) / (std + eps), 0.0)
    return adv.reshape(n, t)


def group_advantages(returns: Array, group_size: int, eps: float = 1e-6, ddof: int = 0) -> Array:
    """GRPO group-relative advantage of each rollout's return.

    Args:
      returns: float[N], N = num_tasks * group_size, each group's rollouts adjacent.
      group_size: G, rollouts per task.
      eps: added to the group std.
      ddof: 0 the population std, 1 the sample std (ORBIT's, through verl).
    Returns:
      float[N]: (R - group mean) / (group std + eps). A group whose returns are all equal gets exactly 0.
    """
    return normalise_over_groups(returns, group_size, eps, ddof)


def broadcast_to_tokens(adv: Array, action_mask: Array) -> Array:
    """Put each rollout's advantage on its action tokens.

    Args:
      adv: float[N].
      action_mask: [N, L] (bool or 0/1).
    Returns:
      float[N, L]: adv[i] where action_mask[i, t], else 0.
    """
    mask = jnp.asarray(action_mask).astype(bool)
    return jnp.where(mask, jnp.asarray(adv, jnp.float32)[:, None], 0.0)


def masked_seq_mean_token_mean(values: Array, action_mask: Array, num_sequences=None) -> Array:
    """float[N, L] -> scalar: per-sequence mean over masked tokens, then mean over sequences
    that have at least one masked token (0 if none).

    ``num_sequences`` (optional) replaces the count of such sequences in the denominator: a row micro-batch
    of a larger batch passes the whole batch's count, so that the micro-batches' results add up to the
    whole batch's."""
    mask = jnp.asarray(action_mask).astype(jnp.float32)
    values = jnp.where(mask > 0, values, 0.0)
    tok_count = mask.sum(axis=-1)  # [N]
    seq_mean = values.sum(axis=-1) / jnp.maximum(tok_count, 1.0)  # [N]; 0 when no tokens
    n_seq = (tok_count > 0).astype(jnp.float32).sum() if num_sequences is None else num_sequences
    return seq_mean.sum() / jnp.maximum(n_seq, 1.0)


def masked_token_mean(values: Array, action_mask: Array, num_tokens=None) -> Array:
    """float[N, L] -> scalar: mean over all masked tokens of the batch (0 if none); ``num_tokens``
    (optional) replaces the count of masked tokens in the denominator (see :func:`masked_seq_mean_token_mean`)."""
    mask = jnp.asarray(action_mask).astype(jnp.float32)
    values = jnp.where(mask > 0, values, 0.0)
    return values.sum() / jnp.maximum(mask.sum() if num_tokens is None else num_tokens, 1.0)


def _aggregate(values: Array, action_mask: Array, aggregation: str, num_sequences=None, num_tokens=None) -> Array:
    if aggregation == "seq-mean-token-mean":
        return masked_seq_mean_token_mean(values, action_mask, num_sequences)
    if aggregation == "token-mean":
        return masked_token_mean(values, action_mask, num_tokens)
    raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")


def ppo_clip_loss(
    logp: Array,
    old_logp: Array,
    advantages: Array,
    action_mask: Array,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    aggregation: str = "seq-mean-token-mean",
    num_sequences=None,
    num_tokens=None,
    dual_clip: float = 0.0,
) -> Tuple[Array, Dict[str, Array]]:
    """PPO clipped surrogate with an asymmetric clip range.

    Args:
      logp: float[N, L], log-probs of the taken tokens under the current policy.
      old_logp: float[N, L], log-probs under the behaviour policy (treated as constant).
      advantages: float[N, L] or float[N] (broadcast over tokens).
      action_mask: [N, L]; only these tokens are trained.
      clip_low, clip_high: ratio clipped to [1 - clip_low, 1 + clip_high].
      aggregation: "seq-mean-token-mean" (see module docstring) or "token-mean".
      num_sequences, num_tokens: optional denominators for a row micro-batch of a larger batch (the whole
        batch's sequences with an action token, and its action tokens), so that the micro-batches' losses
        and metrics add up to the whole batch's.
      dual_clip: c > 1 bounds a negative advantage's token loss by -c A (dual-clip PPO, Ye et al. 2020; verl's
        ``clip_ratio_c``, 3.0), so a token whose ratio has grown far cannot push the loss without limit; 0: off.
        Inert while r <= c, i.e. always with one update per batch (r = 1).
    Returns:
      (loss scalar, metrics) where per-token loss = -min(r A, clip(r) A), r = exp(logp - old_logp), then
      min(that, -c A) where A < 0 under dual-clip;
      metrics: clip_fraction (share of action tokens where the clipped term is the active one and
      differs from the unclipped one), dual_clip_fraction (share where the dual-clip bound is active),
      approx_kl (mean of (r - 1) - log r), ratio_mean; the metrics are token means over action tokens and
      carry no gradient.
    """
    mask = jnp.asarray(action_mask).astype(bool)
    old_logp = lax.stop_gradient(old_logp)
    adv = jnp.asarray(advantages, jnp.float32)
    if adv.ndim == 1:
        adv = adv[:, None]
    adv = jnp.broadcast_to(adv, logp.shape)
    # Mask the log-ratio before exp so masked tokens cannot produce inf / nan gradients.
    log_ratio = jnp.where(mask, logp - old_logp, 0.0)
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -jnp.minimum(unclipped, clipped)
    dual_bound = -dual_clip * adv
    dual_active = (adv < 0) & (per_token > dual_bound) if dual_clip else jnp.zeros_like(mask)
    per_token = jnp.where(dual_active, dual_bound, per_token)
    loss = _aggregate(per_token, mask, aggregation, num_sequences, num_tokens)

    sg_ratio = lax.stop_gradient(ratio)
    sg_log_ratio = lax.stop_gradient(log_ratio)
    is_clipped = (lax.stop_gradient(clipped) < lax.stop_gradient(unclipped)).astype(jnp.float32)
    metrics = {
        "clip_fraction": masked_token_mean(is_clipped, mask, num_tokens),
        "dual_clip_fraction": masked_token_mean(lax.stop_gradient(dual_active).astype(jnp.float32), mask, num_tokens),
        "approx_kl": masked_token_mean((sg_ratio - 1.0) - sg_log_ratio, mask, num_tokens),
        "ratio_mean": masked_token_mean(sg_ratio, mask, num_tokens),
    }
    return loss, metrics


def kl_to_reference(logp: Array, ref_logp: Array, action_mask: Array, num_sequences=None) -> Array:
    """k3 estimator of KL(pi || ref): exp(d) - d - 1 with d = ref_logp - logp (>= 0).

    Args: logp, ref_logp float[N, L]; action_mask [N, L]; num_sequences as in :func:`masked_seq_mean_token_mean`.
    Returns a scalar (seq-mean-token-mean).
    """
    mask = jnp.asarray(action_mask).astype(bool)
    d = jnp.where(mask, lax.stop_gradient(ref_logp) - logp, 0.0)
    k3 = jnp.exp(d) - d - 1.0
    return masked_seq_mean_token_mean(k3, mask, num_sequences)


def entropy_bonus(logits: Array, action_mask: Array) -> Array:
    """Mean token entropy of softmax(logits).

    Args: logits float[N, L, V]; action_mask [N, L]. Returns a scalar (seq-mean-token-mean).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ent = -(jnp.exp(logp) * logp).sum(axis=-1)  # [N, L]
    return masked_seq_mean_token_mean(ent, action_mask)


def discounted_returns(
    rewards: Array, episode_done: Array, gamma_step: float, gamma_traj: float
) -> Array:
    """LaMer cross-episode discounted return over the env steps of a trial.

    G_t = r_t + g_t * G_{t+1} (G_T = 0), g_t = gamma_traj if step t ends an episode
    (episode_done[:, t]) else gamma_step. With gamma_step = gamma_traj = 1 this is the reverse
    cumulative sum of rewards.

    Args:
      rewards: float[N, T].
      episode_done: bool[N, T].
    Returns:
      float[N, T].
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    done = jnp.asarray(episode_done).astype(bool)
    g = jnp.where(done, jnp.float32(gamma_traj), jnp.float32(gamma_step))

    def step(carry, x):
        r_t, g_t = x
        ret = r_t + g_t * carry
        return ret, ret

    _, out = lax.scan(step, jnp.zeros(rewards.shape[0], jnp.float32), (rewards.T, g.T), reverse=True)
    return out.T
