"""The compiled GRPO meta-training step: rollout, group advantages, PPO-clip loss, optax update, one jit.

``make_train_step(...)`` returns ``train_step(train_state, key) -> (train_state, metrics)``:

1. sample ``num_tasks`` tasks and replicate each ``group_size`` times (the GRPO group: same task, same
   trial start, independent sampling);
2. :func:`metarl_jax.rollout.rollout` plays every trial to its step cap;
3. the trial return (successful episodes) gives group-relative advantages on every action token;
4. a teacher-forced forward gives the log-probabilities; the PPO-clip loss (asymmetric clip,
   seq-mean-token-mean) is differentiated w.r.t. the parameters and applied with optax.

On-policy with one update per batch (ORBIT), so the ratio is 1 at the update; the clip matters once several
updates reuse a batch. Metrics are small scalars and per-episode-index success rates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from metarl_jax.algos.losses import group_advantages, ppo_clip_loss
from metarl_jax.rollout import rollout, teacher_forced_logp


@struct.dataclass
class TrainState:
    """params: the model's nnx.State; opt_state: optax state; step: int32[]."""

    params: nnx.State
    opt_state: optax.OptState
    step: jax.Array


def init_train_state(model_state, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(params=model_state, opt_state=optimizer.init(model_state), step=jnp.zeros((), jnp.int32))


def make_train_step(graphdef, env, env_params, codec, table, optimizer, num_tasks: int, group_size: int,
                    temperature: float = 1.0, top_p: float = 1.0, clip_low: float = 0.2, clip_high: float = 0.28,
                    num_episodes_logged: int = 3):
    """Builds the un-jitted train step (wrap it in ``jax.jit(..., donate_argnums=0)``)."""

    def train_step(state: TrainState, key):
        k_task, k_reset, k_roll = jax.random.split(key, 3)
        tasks = jax.vmap(lambda k: env.sample_task(k, env_params))(jax.random.split(k_task, num_tasks))
        tasks = jax.tree.map(lambda x: jnp.repeat(x, group_size, axis=0), tasks)
        batch = num_tasks * group_size
        _, trials = jax.vmap(env.reset_to_task, in_axes=(0, 0, None))(jax.random.split(k_reset, batch), tasks, env_params)
        transcript = rollout(graphdef, state.params, env, env_params, codec, table, k_roll, trials, temperature, top_p)
        returns = transcript.rewards.sum(axis=1)
        advantages = group_advantages(returns, group_size)
        old_logp = jax.lax.stop_gradient(transcript.logp)

        def loss_fn(params):
            logp = teacher_forced_logp(graphdef, params, transcript, table, temperature, top_p)
            return ppo_clip_loss(logp, old_logp, advantages, transcript.action_mask, clip_low, clip_high)

        (loss, loss_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        episode_success = jnp.stack([
            (transcript.success & (transcript.episode_index == k)).any(axis=1).mean() for k in range(num_episodes_logged)
        ])
        metrics = {
            "loss": loss,
            "mean_return": returns.mean(),
            "episode_success": episode_success,
            "grad_norm": optax.tree.norm(grads),
            **loss_metrics,
        }
        return TrainState(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return train_step
