"""RL^2 (Duan et al. 2016; Wang et al. 2017): a recurrent policy meta-trained with PPO on multi-episode trials.

The classic meta-RL baseline. A GRU policy plays the same multi-episode trials the in-context LM is trained on
(:func:`metarl_jax.envs.make_trial`); its hidden state is the only memory and is **kept across the episodes of
a trial** (zeroed only at the start of a trial), so "learning" within a trial happens in the activations and
the outer PPO loop meta-trains the weights on the trial return (the number of successful episodes).

Input at each step ``t`` (the observation of state ``s_t``, after the previous action):

* the observation text as a *bag of tokens*: the mean of learned token embeddings over the valid tokens of
  ``Codec(env, WordTokenizer()).render_tokens(s_t)`` (float32[E]);
* the previous action one-hot (float32[A]; all zeros at the start of a trial);
* the previous reward (float32[1]; 0 at the start of a trial);
* the new-episode flag (float32[1]): 1 when the observation opens an episode (the trial's start or an
  episode boundary), else 0.

Network (:class:`RL2Net`, flax.nnx): ``concat(inputs) -> Linear(H) -> relu -> GRUCell(H) -> (policy logits
float32[A], value float32[])``. Invalid actions (``env.valid_actions(state)``) are masked out of the logits.

Training: :mod:`metarl_jax.baselines.rl2_train` (:func:`~metarl_jax.baselines.rl2_train.train_rl2`).

Evaluation: :func:`rl2_policy` turns a trained model into an :class:`~metarl_jax.baselines.OnlinePolicy`
(memory = the GRU hidden state), which :func:`metarl_jax.evaluate.play_policy` / ``play_trials`` accept;
:func:`evaluate_rl2` plays trials and returns the dict :func:`metarl_jax.evaluate.summarize` takes.

>>> import jax
>>> from metarl_jax.baselines.rl2 import evaluate_rl2
>>> from metarl_jax.baselines.rl2_train import train_rl2
>>> model, history = train_rl2("BernoulliBandit-misc", jax.random.PRNGKey(0), num_updates=50)
>>> out = evaluate_rl2(model, "BernoulliBandit-misc", jax.random.PRNGKey(1), num_trials=256)
>>> from metarl_jax.evaluate import summarize
>>> row = summarize("BernoulliBandit-misc", "rl2", out, num_episodes=20)

Reflection turns (``make_trial(reflection=True)``) are not supported in training (the rollout length is the
step cap); the policy itself plays such trials (its action on a reflection turn is ignored by the env).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from metarl_jax import envs
from metarl_jax.baselines.online import OnlinePolicy
from metarl_jax.envs.multi_episode import (
    VIEW_AFTER_REFLECT,
    VIEW_BOUNDARY,
    VIEW_START,
    TrialState,
)
from metarl_jax.text import Codec, WordTokenizer

_NEG = -1e9  # logit of a masked (invalid) action; finite so that 0 * logp stays 0 in the entropy


# ---------------------------------------------------------------- the network


class RL2Net(nnx.Module):
    """The RL^2 recurrent actor-critic (flax.nnx).

    Args:
      vocab_size: V, the token vocabulary of the observation encoder.
      num_actions: A, the env's action count.
      hidden: H, the GRU width.
      embed_dim: E, the token embedding width.
      rngs: parameter initialisation.

    Shapes (leading batch dims ``...`` are allowed everywhere):
      * :meth:`step`: ``h`` float32[..., H], ``tokens`` int32[..., L], ``length`` int32[...],
        ``prev_action`` int32[...] (-1: none), ``prev_reward`` float32[...], ``new_episode`` bool[...]
        -> new ``h`` float32[..., H];
      * :meth:`heads`: ``h`` float32[..., H] -> ``(logits float32[..., A], value float32[...])`` (unmasked).
    """

    def __init__(self, vocab_size: int, num_actions: int, *, hidden: int = 128, embed_dim: int = 32,
                 rngs: nnx.Rngs):
        self.vocab_size, self.num_actions, self.hidden, self.embed_dim = vocab_size, num_actions, hidden, embed_dim
        self.embed = nnx.Embed(vocab_size, embed_dim, rngs=rngs)
        self.inp = nnx.Linear(embed_dim + num_actions + 2, hidden, rngs=rngs)
        self.gru = nnx.GRUCell(hidden, hidden, rngs=rngs)
        ortho = nnx.initializers.orthogonal
        self.pi = nnx.Linear(hidden, num_actions, kernel_init=ortho(0.01), rngs=rngs)
        self.v = nnx.Linear(hidden, 1, kernel_init=ortho(1.0), rngs=rngs)

    def initial_hidden(self, batch_shape: tuple = ()) -> jax.Array:
        """float32[*batch_shape, H] zeros: the hidden state at the start of a trial."""
        return jnp.zeros((*batch_shape, self.hidden), jnp.float32)

    def encode(self, tokens, length, prev_action, prev_reward, new_episode) -> jax.Array:
        """float32[..., E + A + 2]: bag-of-tokens mean, previous action one-hot, previous reward, flag."""
        mask = (jnp.arange(tokens.shape[-1]) < length[..., None]).astype(jnp.float32)  # [..., L]
        emb = self.embed(tokens)  # [..., L, E]
        bag = (emb * mask[..., None]).sum(-2) / jnp.maximum(mask.sum(-1, keepdims=True), 1.0)
        onehot = jax.nn.one_hot(prev_action, self.num_actions)  # -1 -> all zeros
        return jnp.concatenate([
            bag, onehot, jnp.asarray(prev_reward, jnp.float32)[..., None],
            jnp.asarray(new_episode, jnp.float32)[..., None],
        ], axis=-1)

    def step(self, h, tokens, length, prev_action, prev_reward, new_episode) -> jax.Array:
        """One recurrent step: the new hidden state float32[..., H] after seeing the step's inputs."""
        x = jax.nn.relu(self.inp(self.encode(tokens, length, prev_action, prev_reward, new_episode)))
        h, _ = self.gru(h, x)
        return h

    def heads(self, h) -> tuple[jax.Array, jax.Array]:
        """``(logits float32[..., A], value float32[...])`` from the hidden state."""
        return self.pi(h), self.v(h)[..., 0]


def masked_logits(logits: jax.Array, valid: jax.Array) -> jax.Array:
    """Logits with invalid actions pushed to ``-1e9`` (all actions allowed if none is valid)."""
    valid = jnp.where(valid.any(-1, keepdims=True), valid, True)
    return jnp.where(valid, logits, _NEG)


def new_episode_flag(state) -> jax.Array:
    """bool[]: the observation of ``state`` opens an episode (a trial's start, an episode boundary, or the
    first turn after a reflection); for a bare game state, ``time == 0``."""
    if isinstance(state, TrialState):
        v = state.view
        return (v == VIEW_START) | (v == VIEW_BOUNDARY) | (v == VIEW_AFTER_REFLECT)
    return state.time == 0


@functools.cache
def rl2_tokenizer() -> WordTokenizer:
    return WordTokenizer()


def _split_model(model_or_params):
    """``(graphdef, state)`` of an :class:`RL2Net` or of a ``(graphdef, state)`` pair."""
    if isinstance(model_or_params, RL2Net):
        return nnx.split(model_or_params)
    if isinstance(model_or_params, tuple) and len(model_or_params) == 2:
        return model_or_params
    raise TypeError(f"expected an RL2Net or a (graphdef, state) pair, got {type(model_or_params).__name__}")


# ---------------------------------------------------------------- the policy interface


class RL2Memory(NamedTuple):
    """The RL^2 policy's memory: ``h`` float32[H], the GRU state after seeing the current observation."""

    h: jax.Array


def rl2_policy(model_or_params, env, greedy: bool = False) -> OnlinePolicy:
    """The trained RL^2 network as an :class:`~metarl_jax.baselines.OnlinePolicy` for ``env``.

    Memory is :class:`RL2Memory`; ``init`` feeds the trial's first observation to a zero hidden state,
    ``act`` samples (or, with ``greedy``, takes the argmax of) the masked policy logits, and ``update`` feeds
    the next observation with the action taken, its reward and the new-episode flag. The hidden state is never
    reset inside a trial. Same inputs as in training, so ``metarl_jax.evaluate.play_policy(env, params,
    rl2_policy(model, env), ...)`` evaluates the trained policy.

    Args:
      model_or_params: an :class:`RL2Net` or its ``(graphdef, state)`` from ``nnx.split``.
      env: the trial env (``MultiEpisode``) or a bare game; its action count must match the model's.
      greedy: act by argmax instead of sampling.
    """
    graphdef, state = _split_model(model_or_params)
    model = nnx.merge(graphdef, state)
    if model.num_actions != env.num_actions:
        raise ValueError(f"the RL^2 model has {model.num_actions} actions but {env!r} has {env.num_actions}")
    codec = Codec(env, rl2_tokenizer())
    if model.vocab_size != rl2_tokenizer().vocab_size:
        raise ValueError(f"the RL^2 model has vocab size {model.vocab_size}, the word tokenizer {rl2_tokenizer().vocab_size}")

    def see(h, st, prev_action, prev_reward):
        m = nnx.merge(graphdef, state)
        tokens, length = codec.render_tokens(st)
        return m.step(h, tokens, length, jnp.asarray(prev_action, jnp.int32), jnp.asarray(prev_reward, jnp.float32),
                      new_episode_flag(st))

    def init(key, st):
        m = nnx.merge(graphdef, state)
        return RL2Memory(h=see(m.initial_hidden(), st, -1, 0.0))

    def logits(memory, st):
        m = nnx.merge(graphdef, state)
        return masked_logits(m.heads(memory.h)[0], env.valid_actions(st))

    def act(key, memory, st):
        lg = logits(memory, st)
        if greedy:
            return jnp.argmax(lg).astype(jnp.int32)
        return jax.random.categorical(key, lg).astype(jnp.int32)

    def update(memory, st, action, reward, next_state):
        return RL2Memory(h=see(memory.h, next_state, action, reward))

    return OnlinePolicy(init, act, update)


def policy_logits(model_or_params, env, memory: RL2Memory, state) -> jax.Array:
    """float32[A]: the masked policy logits the RL^2 policy acts from in ``state`` with ``memory``."""
    graphdef, params = _split_model(model_or_params)
    m = nnx.merge(graphdef, params)
    return masked_logits(m.heads(memory.h)[0], env.valid_actions(state))


# ---------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class RL2Config:
    """Settings of RL^2 training (hashable: one compiled trainer per config)."""

    env_id: str  # a registered env id (metarl_jax.envs.registered())
    num_trials: int = 64  # N, trials per update (the PPO batch); divisible by minibatches
    lr: float = 1e-3  # Adam's learning rate
    # Discount per step over the whole trial (1.0: the undiscounted trial return, the meta-RL objective).
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip: float = 0.2  # PPO's ratio clip
    entropy_coef: float = 0.01  # the entropy bonus's weight
    value_coef: float = 0.5  # the value loss's weight
    epochs: int = 4  # PPO epochs per update ...
    minibatches: int = 4  # ... each in this many minibatches of whole trials
    max_grad_norm: float = 0.5  # global gradient-norm clip
    hidden: int = 128  # GRU width H
    embed_dim: int = 32  # token embedding width E
    # Overrides of the env's turn limit per episode and of the trial's step cap T (None: the registry's).
    max_turns_per_episode: int | None = None
    total_step_cap: int | None = None

    def __post_init__(self):
        try:
            envs.spec(self.env_id)
        except KeyError as e:  # the registry's message names the closest ids
            raise ValueError(e.args[0]) from None
        if self.num_trials < 1 or self.minibatches < 1 or self.num_trials % self.minibatches:
            raise ValueError(f"num_trials={self.num_trials} must be a positive multiple of minibatches={self.minibatches}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gamma and gae_lambda must lie in [0, 1], got {self.gamma}, {self.gae_lambda}")


def make_env(config: RL2Config):
    """``(trial_env, params)`` for the config's env id and trial overrides."""
    over = {} if config.max_turns_per_episode is None else {"max_turns": int(config.max_turns_per_episode)}
    return envs.make_trial(config.env_id, total_step_cap=config.total_step_cap, **over)


# ---------------------------------------------------------------- evaluation


def evaluate_rl2(model_or_params, env_id: str, key: jax.Array, num_trials: int = 256,
                 num_episodes: int | None = None, *, greedy: bool = False, max_turns_per_episode: int | None = None,
                 total_step_cap: int | None = None) -> dict:
    """Plays ``num_trials`` trials of ``env_id`` with the RL^2 policy (via :func:`metarl_jax.evaluate.play_trials`).

    Use the same ``max_turns_per_episode`` / ``total_step_cap`` as in training. Returns numpy arrays:
    ``success``, ``episode_index``, ``episode_done`` (``[T, N]``, T the step cap), ``actions`` (int32 ``[T, N]``)
    and ``trial_return`` (float ``[N]``): the input of :func:`metarl_jax.evaluate.summarize`. With
    ``num_episodes`` = K it also holds ``episode_success`` (bool ``[N, K]``, episode k of each trial won).
    """
    from metarl_jax.evaluate import episode_wins, play_trials

    env, params = make_env(RL2Config(env_id=env_id, max_turns_per_episode=max_turns_per_episode,
                                     total_step_cap=total_step_cap))
    out = play_trials(env, params, rl2_policy(model_or_params, env, greedy=greedy), key, num_trials)
    if num_episodes is not None:
        out["episode_success"] = episode_wins(out, int(num_episodes))
    return out


__all__ = [
    "RL2Config",
    "RL2Memory",
    "RL2Net",
    "evaluate_rl2",
    "make_env",
    "new_episode_flag",
    "policy_logits",
    "rl2_policy",
    "rl2_tokenizer",
]
