"""RL algorithms: GRPO advantages, PPO-clip loss, KL / entropy terms and discounted returns."""

from metarl_jax.algos.losses import (
    broadcast_to_tokens,
    discounted_returns,
    entropy_bonus,
    group_advantages,
    kl_to_reference,
    masked_seq_mean_token_mean,
    masked_token_mean,
    ppo_clip_loss,
)

__all__ = [
    "broadcast_to_tokens",
    "discounted_returns",
    "entropy_bonus",
    "group_advantages",
    "kl_to_reference",
    "masked_seq_mean_token_mean",
    "masked_token_mean",
    "ppo_clip_loss",
]
