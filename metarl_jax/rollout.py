"""Multi-episode rollouts of a transformer policy, as one ``lax.scan`` over the trial's step cap.

Each env step: render the observation tokens (codec), prefill them into the KV cache, decode one action
with constrained decoding (:mod:`metarl_jax.agents.actions`), step the :class:`~metarl_jax.envs.MultiEpisode`
env. Everything is vmapped over the batch by construction (the model takes a batch; env functions are
vmapped), so the whole rollout is one XLA program.

The returned :class:`Transcript` holds, per row, the token stream in cache-slot order (observation chunks
padded to the codec's fixed length, then the action tokens), a mask of real tokens, a mask of action tokens,
the sampler's log-probabilities of the action tokens and per-step episode flags. A teacher-forced forward
over ``tokens`` with ``token_mask`` reproduces the sampler's log-probabilities (see ``tests/test_rollout.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from metarl_jax.agents.actions import constrained_step
from metarl_jax.models.transformer import init_cache


@struct.dataclass
class Transcript:
    """A batch of rollouts. B rows, S = steps * (obs_len + action_len) token slots, T env steps.

    Attributes:
      tokens: int32[B, S]; token_mask: bool[B, S] real tokens; action_mask: bool[B, S] sampled action tokens.
      positions: int32[B, S] RoPE positions (real tokens counted).
      logp: float32[B, S] the sampler's log-probability of each action token (0 elsewhere).
      actions: int32[B, T]; rewards: float32[B, T]; episode_index, episode_done, success: [B, T].
      valid: bool[B, T, A], the actions the decoder could choose at each step.
    """

    tokens: jax.Array
    token_mask: jax.Array
    action_mask: jax.Array
    positions: jax.Array
    logp: jax.Array
    actions: jax.Array
    rewards: jax.Array
    episode_index: jax.Array
    episode_done: jax.Array
    success: jax.Array
    valid: jax.Array


def rollout(graphdef, model_state, env, env_params, codec, table, key, trial_states, temperature: float = 1.0, top_p: float = 1.0):
    """Plays ``env.total_step_cap`` steps from ``trial_states`` (batched [B]); returns a :class:`Transcript`."""
    model = nnx.merge(graphdef, model_state)
    batch = trial_states.total_steps.shape[0]
    obs_len, act_len = codec.max_len, table.max_len
    steps = env.total_step_cap
    cache = init_cache(model.config, batch, steps * (obs_len + act_len))
    step_env = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))
    render = jax.vmap(codec.render_tokens)
    valid_actions = jax.vmap(env.valid_actions)

    def env_step(carry, t):
        states, cache, pos = carry
        k_dec, k_env = jax.random.split(jax.random.fold_in(key, t))
        obs, obs_len_b = render(states)  # [B, L], [B]
        obs_mask = jnp.arange(obs_len)[None, :] < obs_len_b[:, None]
        obs_pos = pos[:, None] + jnp.cumsum(obs_mask, axis=1) - 1
        logits, cache = model(obs, obs_pos, cache, obs_mask)
        last = logits[jnp.arange(batch), obs_len_b - 1]  # logits after the last real observation token
        pos = pos + obs_len_b
        valid = valid_actions(states)
        dstate = jax.vmap(table.init)(valid)
        toks, logps = [], []
        for i in range(act_len):
            keys = jax.random.split(jax.random.fold_in(k_dec, i), batch)
            token, logp, dstate_new = jax.vmap(lambda d, l, k: constrained_step(table, d, l, k, temperature, top_p))(dstate, last, keys)
            real = ~dstate.done
            logits_i, cache = model(token[:, None], pos[:, None], cache, real[:, None])
            last = logits_i[:, 0]
            pos = pos + real
            toks.append(jnp.where(real, token, table.pad_id))
            logps.append(logp)
            dstate = dstate_new
        action = dstate.action
        _, states, reward, _, info = step_env(jax.random.split(k_env, batch), states, action, env_params)
        act_tokens = jnp.stack(toks, 1)
        act_real = act_tokens != table.pad_id  # pad only after the action ends
        out = dict(
            tokens=jnp.concatenate([obs, act_tokens], 1),
            token_mask=jnp.concatenate([obs_mask, act_real], 1),
            action_mask=jnp.concatenate([jnp.zeros_like(obs_mask), act_real], 1),
            positions=jnp.concatenate([obs_pos, pos[:, None] - act_real.sum(1, keepdims=True) + jnp.cumsum(act_real, 1) - 1], 1),
            logp=jnp.concatenate([jnp.zeros(obs_mask.shape, jnp.float32), jnp.stack(logps, 1)], 1),
            actions=action, rewards=reward, episode_index=info["episode_index"],
            episode_done=info["episode_done"], success=info["success"], valid=valid,
        )
        return (states, cache, pos), out

    init = (trial_states, cache, jnp.zeros((batch,), jnp.int32))
    _, out = jax.lax.scan(env_step, init, jnp.arange(steps))
    flat = lambda x: jnp.swapaxes(x, 0, 1).reshape(batch, -1)  # [T, B, n] -> [B, T * n]
    per_step = lambda x: jnp.swapaxes(x, 0, 1)
    return Transcript(
        tokens=flat(out["tokens"]), token_mask=flat(out["token_mask"]), action_mask=flat(out["action_mask"]),
        positions=flat(out["positions"]), logp=flat(out["logp"]),
        actions=per_step(out["actions"]), rewards=per_step(out["rewards"]), episode_index=per_step(out["episode_index"]),
        episode_done=per_step(out["episode_done"]), success=per_step(out["success"]), valid=per_step(out["valid"]),
    )


def teacher_forced_logp(graphdef, model_state, transcript: Transcript, table, temperature: float = 1.0, top_p: float = 1.0):
    """float32[B, S]: the sampler's log-probability of every action token, recomputed in one causal forward.

    Each action token is scored by the logits of the previous real token, under the same constrained,
    temperature/top-p processed distribution the decoder used (the trie is replayed from ``valid``).
    Non-action slots get 0.
    """
    from metarl_jax.models.sampling import process_logits

    model = nnx.merge(graphdef, model_state)
    batch, slots = transcript.tokens.shape
    steps = transcript.actions.shape[1]
    width = slots // steps
    act_len = table.max_len
    hidden, _ = model.hidden_states(transcript.tokens, transcript.positions, None, transcript.token_mask)
    idx = jnp.arange(slots)
    last_real = jax.lax.cummax(jnp.where(transcript.token_mask, idx[None, :], -1), axis=1)
    prev = jnp.concatenate([jnp.full((batch, 1), -1), last_real[:, :-1]], axis=1)  # previous real slot
    # Logits that predict each action slot: [B, T, act_len, V].
    act_slots = (jnp.arange(steps)[:, None] * width + (width - act_len) + jnp.arange(act_len)[None, :]).reshape(-1)
    # Project to the vocabulary only where an action token is predicted.
    pred = model.logits(jnp.take_along_axis(hidden, jnp.maximum(prev[:, act_slots], 0)[:, :, None], axis=1))
    pred = pred.reshape(batch, steps, act_len, -1)
    act_tokens = transcript.tokens[:, act_slots].reshape(batch, steps, act_len)

    def score(valid, tokens, step_logits):  # one action decode: replay the trie
        state = table.init(valid)
        out = []
        for i in range(act_len):
            logp = process_logits(step_logits[i], temperature, top_p, mask=table.allowed(state))
            out.append(jnp.where(state.done, 0.0, logp[tokens[i]]))
            state = table.advance(state, tokens[i])
        return jnp.stack(out)

    act_logp = jax.vmap(jax.vmap(score))(transcript.valid, act_tokens, pred)  # [B, T, act_len]
    return jnp.zeros((batch, slots), jnp.float32).at[:, act_slots].set(act_logp.reshape(batch, -1))
