"""Meta-training of the RL^2 baseline (:mod:`metarl_jax.baselines.rl2`) with PPO on multi-episode trials.

Training (:func:`train_rl2`, :func:`make_trainer`): each update rolls out ``num_trials`` whole trials (the
trial's step cap, one ``lax.scan``, vmapped over trials), computes GAE advantages over the trial (the trial
ends at the cap, so the bootstrap value there is 0), and runs ``epochs`` x ``minibatches`` PPO-clip epochs in
which each minibatch of trials is replayed from the zero hidden state (truncation-free BPTT over the whole
trial). Rollout and update are one jitted function, traced once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from metarl_jax.baselines.rl2 import (RL2Config, RL2Net, make_env, masked_logits, new_episode_flag, rl2_tokenizer)
from metarl_jax.text import Codec


class RL2TrainState(NamedTuple):
    """RL^2 training state: ``params`` (the network's nnx.State), ``opt_state``, ``key`` (PRNG key),
    ``step`` int32[] updates done."""

    params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array


class Steps(NamedTuple):
    """One batch of rollouts, each field ``[N, T, ...]`` (trial first)."""

    tokens: jax.Array  # int32[N, T, L] observation tokens
    length: jax.Array  # int32[N, T]
    prev_action: jax.Array  # int32[N, T], -1 at t = 0
    prev_reward: jax.Array  # float32[N, T]
    new_episode: jax.Array  # bool[N, T]
    valid: jax.Array  # bool[N, T, A]
    action: jax.Array  # int32[N, T]
    logp: jax.Array  # float32[N, T] behaviour log-prob of the action
    value: jax.Array  # float32[N, T]
    reward: jax.Array  # float32[N, T]
    success: jax.Array  # bool[N, T]
    episode_index: jax.Array  # int32[N, T]


@dataclasses.dataclass
class Trainer:
    """A compiled RL^2 trainer for one :class:`RL2Config`.

    Attributes:
      config: the settings.
      env, env_params: the trial env.
      graphdef: the network's nnx graph definition.
      init: ``init(key) -> RL2TrainState`` (fresh network and optimizer).
      update: ``update(RL2TrainState) -> (RL2TrainState, metrics dict of float32 scalars / float32[K])``, jitted;
        one rollout of ``num_trials`` trials plus the PPO epochs.
      num_episodes: K, the episodes reported in ``metrics["episode_success"]``.
    """

    config: RL2Config
    env: Any
    env_params: Any
    graphdef: Any
    init: Callable[[jax.Array], RL2TrainState]
    update: Callable[[RL2TrainState], tuple[RL2TrainState, dict]]
    num_episodes: int
    _traces: list

    @property
    def num_traces(self) -> int:
        """How many times ``update`` has been traced (1 after the first call: it compiles once)."""
        return self._traces[0]

    def model(self, train_state: RL2TrainState) -> RL2Net:
        """The trained network of a train state."""
        return nnx.merge(self.graphdef, train_state.params)


def _gae(reward, value, gamma, lam):
    """GAE advantages and returns over a whole trial, ``[N, T]`` each; the trial ends after step T - 1."""
    next_value = jnp.concatenate([value[:, 1:], jnp.zeros_like(value[:, :1])], axis=1)
    delta = reward + gamma * next_value - value

    def back(carry, d):
        carry = d + gamma * lam * carry
        return carry, carry

    _, adv = jax.lax.scan(back, jnp.zeros_like(delta[:, 0]), delta.T, reverse=True)
    adv = adv.T
    return adv, adv + value


@functools.cache
def make_trainer(config: RL2Config) -> Trainer:
    """Builds (once per config; cached) the env, the network definition and the jitted update step."""
    env, env_params = make_env(config)
    codec = Codec(env, rl2_tokenizer())
    num_actions, steps = env.num_actions, env.total_step_cap
    num_episodes = min(steps // max(1, int(env_params.max_turns)), 10)
    optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.lr, eps=1e-5))
    abstract = nnx.eval_shape(lambda: RL2Net(rl2_tokenizer().vocab_size, num_actions, hidden=config.hidden,
                                             embed_dim=config.embed_dim, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)

    def init(key) -> RL2TrainState:
        k_model, k_train = jax.random.split(key)
        model = RL2Net(rl2_tokenizer().vocab_size, num_actions, hidden=config.hidden, embed_dim=config.embed_dim,
                       rngs=nnx.Rngs(params=k_model))
        _, params = nnx.split(model)
        return RL2TrainState(params=params, opt_state=optimizer.init(params), key=k_train,
                          step=jnp.zeros((), jnp.int32))

    def rollout(params, key) -> Steps:
        model = nnx.merge(graphdef, params)

        def one(key):
            key, k0 = jax.random.split(key)
            _, state = env.reset(k0, env_params)

            def body(carry, _):
                key, state, h, pa, pr = carry
                key, k_act, k_step = jax.random.split(key, 3)
                tokens, length = codec.render_tokens(state)
                flag = new_episode_flag(state)
                valid = env.valid_actions(state)
                h = model.step(h, tokens, length, pa, pr, flag)
                logits, value = model.heads(h)
                logits = masked_logits(logits, valid)
                action = jax.random.categorical(k_act, logits).astype(jnp.int32)
                logp = jax.nn.log_softmax(logits)[action]
                _, state2, reward, _, info = env.step_env(k_step, state, action, env_params)
                reward = jnp.asarray(reward, jnp.float32)
                out = Steps(tokens, length, pa, pr, flag, valid, action, logp, value, reward,
                            info["success"], info["episode_index"])
                return (key, state2, h, action, reward), out

            carry = (key, state, model.initial_hidden(), jnp.full((), -1, jnp.int32), jnp.zeros((), jnp.float32))
            _, out = jax.lax.scan(body, carry, None, length=steps)
            return out

        return jax.vmap(one)(jax.random.split(key, config.num_trials))

    def replay(model, b: Steps):
        """Recomputes ``(logits float32[n, T, A] masked, value float32[n, T])`` for a minibatch of trials."""
        time_first = lambda x: jnp.swapaxes(x, 0, 1)
        xs = jax.tree.map(time_first, (b.tokens, b.length, b.prev_action, b.prev_reward, b.new_episode, b.valid))

        def body(h, x):
            tokens, length, pa, pr, flag, valid = x
            h = model.step(h, tokens, length, pa, pr, flag)
            logits, value = model.heads(h)
            return h, (masked_logits(logits, valid), value)

        _, (logits, value) = jax.lax.scan(body, model.initial_hidden((b.action.shape[0],)), xs)
        return time_first(logits), time_first(value)

    def loss_fn(params, b: Steps, adv, ret):
        model = nnx.merge(graphdef, params)
        logits, value = replay(model, b)
        logp_all = jax.nn.log_softmax(logits)
        logp = jnp.take_along_axis(logp_all, b.action[..., None], axis=-1)[..., 0]
        ratio = jnp.exp(logp - b.logp)
        pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - config.clip, 1 + config.clip) * adv).mean()
        vloss = 0.5 * jnp.square(value - ret).mean()
        entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
        loss = pg + config.value_coef * vloss - config.entropy_coef * entropy
        aux = {"policy_loss": pg, "value_loss": vloss, "entropy": entropy,
               "approx_kl": ((ratio - 1) - jnp.log(ratio)).mean(),
               "clip_frac": (jnp.abs(ratio - 1) > config.clip).mean()}
        return loss, aux

    traces = [0]

    def update(ts: RL2TrainState):
        traces[0] += 1
        key, k_roll, k_perm = jax.random.split(ts.key, 3)
        b = rollout(ts.params, k_roll)
        adv, ret = _gae(b.reward, b.value, config.gamma, config.gae_lambda)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        mb = config.num_trials // config.minibatches

        def epoch(carry, k):
            params, opt_state = carry
            perm = jax.random.permutation(k, config.num_trials).reshape(config.minibatches, mb)

            def minibatch(carry, idx):
                params, opt_state = carry
                take = lambda x: x[idx]
                (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                    params, jax.tree.map(take, b), adv[idx], ret[idx])
                updates, opt_state = optimizer.update(grads, opt_state, params)
                params = optax.apply_updates(params, updates)
                return (params, opt_state), {**aux, "grad_norm": optax.tree.norm(grads)}

            return jax.lax.scan(minibatch, (params, opt_state), perm)

        (params, opt_state), aux = jax.lax.scan(epoch, (ts.params, ts.opt_state), jax.random.split(k_perm, config.epochs))
        wins = jnp.stack([(b.success & (b.episode_index == k)).any(axis=1) for k in range(num_episodes)], axis=1)
        metrics = {
            "trial_return": b.reward.sum(1).mean(),
            "reward_per_step": b.reward.mean(),
            "episode_success": wins.astype(jnp.float32).mean(0),
            **jax.tree.map(jnp.mean, aux),
        }
        return RL2TrainState(params, opt_state, key, ts.step + 1), metrics

    return Trainer(config=config, env=env, env_params=env_params, graphdef=graphdef, init=jax.jit(init),
                   update=jax.jit(update, donate_argnums=0), num_episodes=num_episodes, _traces=traces)


def _to_host(metrics: dict) -> dict:
    out = {}
    for k, v in jax.device_get(metrics).items():
        v = np.asarray(v)
        out[k] = float(v) if v.ndim == 0 else [float(x) for x in v]
    return out


def train_rl2(env_id: str, key: jax.Array, *, num_updates: int = 200, num_trials: int = 64, lr: float = 1e-3,
              gamma: float = 1.0, gae_lambda: float = 0.95, clip: float = 0.2, entropy_coef: float = 0.01,
              value_coef: float = 0.5, epochs: int = 4, minibatches: int = 4, max_grad_norm: float = 0.5,
              hidden: int = 128, embed_dim: int = 32, max_turns_per_episode: int | None = None,
              total_step_cap: int | None = None, log: Callable[[str], Any] | None = print,
              log_every: int | None = None) -> tuple[RL2Net, list[dict]]:
    """Meta-trains an RL^2 GRU policy with PPO on ``env_id``'s multi-episode trials.

    Args:
      env_id: a registered env id (an unknown id raises ``ValueError`` naming the closest ones).
      key: PRNG key; the same key gives the same network and metrics.
      num_updates: PPO updates; each rolls out ``num_trials`` whole trials.
      num_trials ... total_step_cap: see :class:`RL2Config`.
      log: called with a one-line progress string every ``log_every`` updates (default: 10 lines in all);
        ``None`` for silence.

    Returns:
      ``(model, history)``: the trained :class:`RL2Net` (``nnx.split(model)`` gives ``(graphdef, params)``) and
      one dict per update of host floats: ``trial_return`` (mean successes per trial), ``reward_per_step``,
      ``episode_success`` (list of K floats: success rate of episodes 1..K, K = min(cap // max_turns, 10)),
      ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``, ``clip_frac``, ``grad_norm`` and
      ``seconds`` (wall time of the update, compile included in the first).
    """
    import time

    config = RL2Config(env_id=env_id, num_trials=num_trials, lr=lr, gamma=gamma, gae_lambda=gae_lambda, clip=clip,
                       entropy_coef=entropy_coef, value_coef=value_coef, epochs=epochs, minibatches=minibatches,
                       max_grad_norm=max_grad_norm, hidden=hidden, embed_dim=embed_dim,
                       max_turns_per_episode=max_turns_per_episode, total_step_cap=total_step_cap)
    if num_updates < 0:
        raise ValueError(f"num_updates must be >= 0, got {num_updates}")
    trainer = make_trainer(config)
    ts = trainer.init(key)
    every = max(1, math.ceil(num_updates / 10)) if log_every is None else max(1, int(log_every))
    history = []
    for i in range(num_updates):
        t0 = time.perf_counter()
        ts, metrics = trainer.update(ts)
        metrics = _to_host(metrics)
        metrics["seconds"] = time.perf_counter() - t0
        history.append(metrics)
        if log is not None and ((i + 1) % every == 0 or i == 0 or i + 1 == num_updates):
            eps = " ".join(f"{s:.2f}" for s in metrics["episode_success"][:5])
            log(f"rl2 {env_id} update {i + 1}/{num_updates}: return {metrics['trial_return']:.3f} "
                f"episode success [{eps}] entropy {metrics['entropy']:.3f} ({metrics['seconds']:.2f}s)")
    return trainer.model(ts), history
