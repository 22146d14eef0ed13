"""Shared test utilities: ad-hoc tokenizers, policies, batched rollouts and replays, render checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax.baselines import random_policy
from metarl_jax.evaluate import play_policy
from metarl_jax.text.tokenizers import SPECIAL_TOKENS, WordTokenizer, split_words


def adhoc_word_tokenizer(env) -> WordTokenizer:
    """A word tokenizer whose vocabulary is exactly the words of ``env``'s pieces and action texts."""
    words = {w for p in env.pieces for w in split_words(p)}
    words |= {w for i in range(env.num_actions) for w in split_words(env.action_text(i))}
    return WordTokenizer(list(SPECIAL_TOKENS) + sorted(words - set(SPECIAL_TOKENS)))


def index_tree(tree, i):
    """The i-th element of a batched pytree, as numpy."""
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)


# Envs whose compiled tests take the longest on 2 CPU cores (maze generation, FrozenLake's maps, Blackjack's deck,
# Minesweeper's board, Wordle's word list): their per-env cases run in the slow suite, the others in the default one.
HEAVY_ENVS = frozenset({"maze", "maze-goal-shown", "FrozenLake-misc", "game:Blackjack-v0", "game:Blackjack-v0-table10",
                        "game:Minesweeper-v0-only-reveal", "game:Wordle-v0-hard"})


def slow_if_heavy(env_id: str, *values, heavy: str | None = None):
    """A ``pytest.param`` of ``(env_id, *values)``, marked slow when ``heavy`` (default ``env_id``) is heavy."""
    return pytest.param(env_id, *values, marks=[pytest.mark.slow] if (heavy or env_id) in HEAVY_ENVS else [])


# ---------------------------------------------------------------- policies


random_valid_policy = random_policy  # uniform over env.valid_actions(state)


def mixed_policy(env, p_format=0.05, p_oracle=0.25, p_repeat=0.15):
    """Format errors, oracle moves, repeats of the last action and uniform valid actions, mixed."""
    rand = random_valid_policy(env)

    def policy(key, state):
        k_u, k_r = jax.random.split(key)
        u = jax.random.uniform(k_u)
        return jnp.select(
            [u < p_format, u < p_format + p_oracle, (u < p_format + p_oracle + p_repeat) & (state.last_action >= 0)],
            [-1, env.oracle_action(key, state), state.last_action],
            rand(k_r, state),
        ).astype(jnp.int32)

    return policy


# ---------------------------------------------------------------- rollouts


def run_trials(env, params, policy, key, num: int, steps: int):
    """:func:`~metarl_jax.evaluate.play_policy` as a tuple ``(final_states, infos, rewards)``.

    ``final_states`` is batched ``[num]``; ``infos`` and ``rewards`` are stacked ``[steps, num]``.
    """
    out = play_policy(env, params, policy, key, num, steps)
    return out["final"], out["infos"], out["rewards"]


def collect_states(env, params, policy, key, num: int, steps: int):
    """All states of ``num`` rollouts (reset, then ``steps`` steps): a pytree batched ``[num, steps + 1]``."""
    return play_policy(env, params, policy, key, num, steps, keep_states=True)["states"]


def play_actions(env, params, tasks, actions, flags: bool = False):
    """Each task played from ``reset_to_task`` through its given actions, every key ``PRNGKey(0)``.

    ``tasks``: int ``[N]`` or a task pytree batched ``[N]``; ``actions``: int ``[N, T]``. Returns, as numpy, the
    states after each action, batched ``[N, T]``; with ``flags``, the tuple ``(states, terminated, truncated,
    success)``, each ``[N, T]``.
    """

    @jax.jit
    def run(tasks, actions):
        def one(task, acts):
            _, s = env.reset_to_task(jax.random.PRNGKey(0), task, params)

            def body(s, a):
                _, s, _, term, info = env.step_env(jax.random.PRNGKey(0), s, a, params)
                return s, (s, term, env.is_truncated(s, params), info["success"]) if flags else s

            return jax.lax.scan(body, s, acts)[1]

        return jax.vmap(one)(tasks, actions)

    as_int32 = lambda x: jnp.asarray(x, jnp.int32) if np.issubdtype(np.asarray(x).dtype, np.integer) else x
    return jax.tree.map(np.asarray, run(jax.tree.map(as_int32, tasks), jnp.asarray(actions, jnp.int32)))


def oracle_success_per_task(env, params, tasks, turns: int) -> np.ndarray:
    """The oracle (no key) from each task for ``turns`` turns: ``info["success"]`` as bool ``[N, turns]``."""

    @jax.jit
    def run(tasks):
        def one(task):
            _, s = env.reset_to_task(jax.random.PRNGKey(0), task, params)

            def body(s, _):
                _, s, _, _, info = env.step_env(jax.random.PRNGKey(0), s, env.oracle_action(None, s), params)
                return s, info["success"]

            return jax.lax.scan(body, s, None, length=turns)[1]

        return jax.vmap(one)(tasks)

    return np.asarray(run(jnp.asarray(tasks, jnp.int32)))


class _RecordEpisodeOne:
    """A trial whose state also carries the actions of its episode 1 by turn: ``(trial_state, int32[cap])``.

    ``policy`` plays the oracle in episode 1 and, later, the action recorded at the same turn (-1, a format
    error, where nothing was recorded).
    """

    def __init__(self, trial):
        self.trial, self.cap = trial, trial.total_step_cap

    def _turn(self, state):
        return jnp.minimum(state.inner.time, self.cap - 1)

    def reset(self, key, params):
        obs, state = self.trial.reset(key, params)
        return obs, (state, jnp.full((self.cap,), -1, jnp.int32))

    def step_env(self, key, carry, action, params):
        state, record = carry
        record = jnp.where(state.episode_index == 0, record.at[self._turn(state)].set(action), record)
        obs, state, reward, done, info = self.trial.step_env(key, state, action, params)
        return obs, (state, record), reward, done, info

    def policy(self, key, carry):
        state, record = carry
        return jnp.where(state.episode_index == 0, self.trial.oracle_action(key, state), record[self._turn(state)])


def replay_episode_one(trial, params, key, num: int, keep_tasks: bool = False) -> dict:
    """Trials of ``trial`` (a MultiEpisode): the oracle plays episode 1, its actions are recorded, and episode 2
    (and later ones) replays them turn by turn; a :func:`rollout` over the whole step cap.

    Returns a dict: ``won1``, ``won2``, ``ended2`` (numpy bool ``[num]``: episode 1 won, episode 2 won, episode 2
    ended within the cap), ``infos`` (the step infos, each ``[cap, num]``) and, with ``keep_tasks``, ``tasks``
    (the task of every state, reset state first: ``[num, cap + 1]``).
    """
    recorder = _RecordEpisodeOne(trial)
    out = play_policy(recorder, params, recorder.policy, key, num, trial.total_step_cap, keep_states=keep_tasks)
    infos = jax.tree.map(np.asarray, out["infos"])
    in_episode = lambda flag, e: (infos[flag] & (infos["episode_index"] == e)).any(axis=0)
    result = {"infos": infos, "won1": in_episode("episode_success", 0), "won2": in_episode("episode_success", 1),
              "ended2": in_episode("episode_done", 1)}
    if keep_tasks:
        result["tasks"] = jax.tree.map(np.asarray, out["states"][0].inner.task)
    return result


# ---------------------------------------------------------------- checks


def render_roundtrip(env, codec, states, batch_dims: int = 1) -> list:
    """Asserts that ``codec`` renders every state of the batch ``states`` (``batch_dims`` leading axes) to tokens
    that decode to ``env.render_text``; returns the ``(state, text)`` pairs, states as numpy."""
    flat = jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[batch_dims:]), states)
    toks, lens = jax.jit(jax.vmap(codec.render_tokens))(flat)
    out = []
    for i in range(toks.shape[0]):
        state = index_tree(flat, i)
        text = env.render_text(state)
        assert codec.decode(toks[i], lens[i]) == text
        out.append((state, text))
    return out


def binomial_tolerance(p: float, n: int, sigmas: float = 4.0) -> float:
    """A ``sigmas``-standard-error band for an empirical rate of ``n`` Bernoulli(p) samples."""
    return sigmas * float(np.sqrt(max(p * (1 - p), 1e-4) / n))


# ---------------------------------------------------------------- TensorBoard event files


def tensorboard_events(logdir, plugin: bool = False):
    """The loaded ``EventAccumulator`` of the event files directly in ``logdir`` (or of one event file), every event
    kept (no sampling).
    ``plugin``: TensorBoard's plugin accumulator (what its server reads; it stores every summary, text
    included, as tensors and purges them on a resume) instead of the classic one (scalars via ``Scalars``)."""
    if plugin:
        from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    else:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    return EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0}).Reload()


def tensorboard_hparams(logdir) -> dict:
    """``{name: value}`` of the hparams plugin's session start info in ``logdir``'s event files."""
    from google.protobuf import json_format
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = tensorboard_events(logdir).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {name: json_format.MessageToDict(value) for name, value in info.hparams.items()}


def tensorboard_text(accumulator, tag) -> list[tuple[int, str]]:
    """``[(step, text), ...]`` of a text tag written with ``add_text(tag, ...)``, in file order."""
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in accumulator.Tensors(f"{tag}/text_summary")]
