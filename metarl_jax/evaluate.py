"""Evaluation of policies on multi-episode trials: per-episode success tables.

``play_policy`` plays a policy (stateless, or an online learner with memory carried across the episodes of a trial)
under ``jit(vmap(lax.scan))`` and ``play_trials`` runs whole trials with it;
``episode_wins`` turns the per-step infos into a ``[trials, episodes]`` success matrix (``episode_transitions``:
each episode's success given the record of the earlier ones); ``summarize`` adds
P(at least one success), the mean trial return, the mean episode length and the invalid-action rate;
``add_regret`` the in-context regret against the oracle. ``success_table`` formats rates with 95% intervals and
``write_report`` writes markdown, CSV and JSON. For trained LMs, ``make_evaluator`` plays every task's whole
validation set in one jitted program (``evaluate_params`` with a run's evaluation key, ``summarize_eval`` the
rows, ``render_samples`` a few transcripts as text).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from metarl_jax import sharding
from metarl_jax.agents.rollout import rollout
from metarl_jax.agents.sampler import Sampling
from metarl_jax.tasks import TaskSet


def play_policy(env, params, policy, key: jax.Array, num: int, steps: int, keep_states: bool = False) -> dict:
    """Plays ``num`` independent rollouts of ``env`` for ``steps`` steps with ``policy``.

    ``policy`` is either a stateless ``policy(key, state) -> int32[]`` action or a
    :class:`~metarl_jax.baselines.OnlinePolicy` (``init`` / ``act`` / ``update`` over a memory pytree that is
    carried through the whole rollout, i.e. across the episodes of a trial).

    Each rollout calls ``env.reset`` once and then ``env.step_env`` ``steps`` times (no auto-reset; a
    :class:`~metarl_jax.envs.MultiEpisode` trial starts its own episodes), all under ``jit(vmap(lax.scan))``.
    Keys: ``key`` is split into ``num`` rollout keys; each is split into (carry, reset key), then every step
    splits the carry into (carry, policy key, step key). An online policy's ``init`` gets
    ``fold_in(reset key, 1)``, so a seed gives the same tasks and env draws whichever policy plays.

    Returns a dict of JAX arrays (N = ``num``, T = ``steps``):

    * ``infos``: the step infos, each leaf stacked ``[T, N]`` (time first), plus ``invalid``: the action was not
      among ``env.valid_actions`` (or out of range);
    * ``rewards``: float ``[T, N]``;
    * ``actions``: int32 ``[T, N]``, the actions taken;
    * ``final``: the state after the last step, batched ``[N]``;
    * ``memory`` (only for an online policy): its memory after the last step, batched ``[N]``;
    * ``states`` (only with ``keep_states``): every state, batched ``[N, T + 1]`` (rollout first), the reset
      state at index 0 and the state after step t at index t.
    """
    from metarl_jax.baselines.online import OnlinePolicy, as_online

    online = isinstance(policy, OnlinePolicy)
    masked = hasattr(env, "valid_actions")  # envs (or test wrappers) without a mask report no invalid actions
    pol = as_online(policy)

    @jax.jit
    def run(key):
        def one(key):
            key, k0 = jax.random.split(key)
            _, state = env.reset(k0, params)
            memory = pol.init(jax.random.fold_in(k0, 1), state)

            def body(carry, _):
                key, state, memory = carry
                key, k_act, k_step = jax.random.split(key, 3)
                action = jnp.asarray(pol.act(k_act, memory, state), jnp.int32)
                invalid = ~action_is_valid(env.valid_actions(state), action) if masked else jnp.zeros((), bool)
                _, next_state, reward, _, info = env.step_env(k_step, state, action, params)
                info = {**info, "invalid": invalid}
                memory = pol.update(memory, state, action, reward, next_state)
                return (key, next_state, memory), (info, reward, action, next_state if keep_states else None)

            (_, final, memory), (infos, rewards, actions, states) = jax.lax.scan(
                body, (key, state, memory), None, length=steps)
            if keep_states:
                states = jax.tree.map(lambda s0, s: jnp.concatenate([s0[None], s]), state, states)
            return final, memory, infos, rewards, actions, states

        final, memory, infos, rewards, actions, states = jax.vmap(one)(jax.random.split(key, num))
        time_first = lambda x: jnp.swapaxes(x, 0, 1)
        out = {"infos": jax.tree.map(time_first, infos), "rewards": time_first(rewards),
               "actions": time_first(actions), "final": final}
        if online:
            out["memory"] = memory
        if keep_states:
            out["states"] = states
        return out

    return run(key)


def play_trials(env, params, policy, key: jax.Array, num_trials: int, steps: int | None = None):
    """Plays ``num_trials`` trials of a :class:`~metarl_jax.envs.MultiEpisode` env with ``policy`` (by :func:`rollout`;
    a stateless policy or an :class:`~metarl_jax.baselines.OnlinePolicy`).

    Returns a dict of numpy arrays: ``success``, ``episode_index``, ``episode_done``, ``invalid`` and
    ``env_step`` (the step was a game move of a live trial: not a reflection, not past the cap) (bool/int
    ``[T, N]``, T = ``steps``, default the trial's step cap), ``actions`` (int32 ``[T, N]``) and
    ``trial_return`` (float ``[N]``).
    """
    steps = env.total_step_cap if steps is None else steps
    played = play_policy(env, params, policy, key, num_trials, steps)
    out = {k: np.asarray(played["infos"][k]) for k in ("success", "episode_index", "episode_done", "invalid")}
    out["env_step"] = env_steps(np.asarray(played["infos"]["trial_done"]), np.asarray(played["infos"]["reflection"]))
    out["actions"] = np.asarray(played["actions"])
    out["trial_return"] = np.asarray(played["rewards"].sum(axis=0))
    return out


def action_is_valid(valid: jax.Array, action: jax.Array) -> jax.Array:
    """bool[...]: ``action`` (int32[...]) is in range and allowed by the mask ``valid`` (bool[..., A])."""
    num = valid.shape[-1]
    inside = (action >= 0) & (action < num)
    return inside & jnp.take_along_axis(valid, jnp.clip(action, 0, num - 1)[..., None], axis=-1)[..., 0]


def env_steps(trial_done: np.ndarray, reflection: np.ndarray) -> np.ndarray:
    """bool[T, N]: the steps that were game moves: the trial was live before the step and it was not a
    reflection turn (``trial_done`` is the flag after each step)."""
    live = np.concatenate([np.ones_like(trial_done[:1], bool), ~trial_done[:-1].astype(bool)], axis=0)
    return live & ~reflection.astype(bool)


def episode_wins(rollout: dict, num_episodes: int) -> np.ndarray:
    """``bool[N, num_episodes]``: whether episode k of each trial was won (episodes past the cap count as lost)."""
    success, index = rollout["success"], rollout["episode_index"]
    return np.stack([(success & (index == k)).any(axis=0) for k in range(num_episodes)], axis=1)


def episode_transitions(wins: np.ndarray) -> dict[str, tuple[float | None, int]]:
    """How a trial's earlier episodes bear on the next one: for every episode k >= 2 and every record of wins (W)
    and losses (L) in the episodes before it, the share of the trials with that record that win episode k, and
    their count. ``wins``: bool[N, K] (:func:`episode_wins`). Returns ``{"2 | W": (rate, n), "2 | L": ...,
    "3 | WW": ..., ...}`` (records in episode order; rate None where no trial has the record). A learner that
    replays a found answer has "k | ...W" near 1; one that uses a lost episode's feedback has "2 | L" above "1"."""
    wins = np.asarray(wins, bool)
    out = {}
    for k in range(1, wins.shape[1]):
        for record in itertools.product((True, False), repeat=k):
            rows = (wins[:, :k] == np.asarray(record)).all(axis=1)
            n = int(rows.sum())
            key = f"{k + 1} | " + "".join("W" if won else "L" for won in record)
            out[key] = (float(wins[rows, k].mean()) if n else None, n)
    return out


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclasses.dataclass
class SuccessRow:
    """Per-episode success of one policy on one env."""

    env_id: str
    policy: str
    num_trials: int
    episode_rates: list[float]
    episode_ci: list[tuple[float, float]]
    any_success: float
    mean_return: float
    episode_length: float | None = None  # game moves per finished episode
    invalid_rate: float | None = None  # share of game moves that were invalid actions (or format errors)
    regret: float | None = None  # in-context regret: episodes won by the oracle minus episodes won (see add_regret)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SuccessRow":
        return cls(**{**d, "episode_ci": [tuple(c) for c in d["episode_ci"]]})


def summarize(env_id: str, policy: str, rollout: dict, num_episodes: int) -> SuccessRow:
    wins = episode_wins(rollout, num_episodes)
    n = wins.shape[0]
    return SuccessRow(
        env_id=env_id,
        policy=policy,
        num_trials=n,
        episode_rates=[float(r) for r in wins.mean(axis=0)],
        episode_ci=[wilson_interval(int(c), n) for c in wins.sum(axis=0)],
        any_success=float(wins.any(axis=1).mean()),
        mean_return=float(rollout["trial_return"].mean()),
        **step_stats(rollout),
    )


def step_stats(rollout: dict) -> dict:
    """Mean episode length and invalid-action rate, when the rollout has the per-step flags for them."""
    if "env_step" not in rollout:
        return {}
    moves = np.asarray(rollout["env_step"], bool)
    finished = (np.asarray(rollout["episode_done"], bool) & moves).sum()
    out = {"episode_length": float(moves.sum() / max(finished, 1))}
    if "invalid" in rollout:
        out["invalid_rate"] = float((np.asarray(rollout["invalid"], bool) & moves).sum() / max(moves.sum(), 1))
    return out


def add_regret(rows: list[SuccessRow], oracle: dict[str, list[float]]) -> list[SuccessRow]:
    """Sets each row's in-context regret: the successes it missed against the oracle over the reported
    episodes, ``sum_k (oracle[env_id][k] - episode_rates[k])`` (``oracle`` maps env ids to the oracle's
    per-episode success rates; 0 for the oracle itself, the number of episodes for a policy that never wins
    where the oracle always does)."""
    for r in rows:
        if r.env_id in oracle:
            r.regret = float(sum(o - p for o, p in zip(oracle[r.env_id], r.episode_rates)))
    return rows


def success_table(rows: list[SuccessRow]) -> str:
    """A markdown table: one row per (env, policy), columns episode 1..K success with 95% intervals."""
    k = max(len(r.episode_rates) for r in rows)
    extra = [(name, title, fmt) for name, title, fmt in _EXTRA_COLUMNS if any(getattr(r, name) is not None for r in rows)]
    head = ("| env | policy | " + " | ".join(f"episode {i + 1}" for i in range(k)) + " | any success | mean return |"
            + "".join(f" {title} |" for _, title, _ in extra))
    sep = "|" + "---|" * (k + 4 + len(extra))
    lines = [head, sep]
    for r in rows:
        cells = [f"{p:.3f} [{lo:.2f}, {hi:.2f}]" for p, (lo, hi) in zip(r.episode_rates, r.episode_ci)]
        cells += [""] * (k - len(cells))
        more = "".join(" - |" if getattr(r, name) is None else f" {getattr(r, name):{fmt}} |" for name, _, fmt in extra)
        lines.append(f"| {r.env_id} | {r.policy} | " + " | ".join(cells) + f" | {r.any_success:.3f} | {r.mean_return:.2f} |"
                     + more)
    return "\n".join(lines)


_EXTRA_COLUMNS = [("regret", "regret", "+.2f"), ("episode_length", "episode length", ".2f"),
                  ("invalid_rate", "invalid actions", ".3f")]


def write_report(rows: list[SuccessRow], prefix: str, title: str = "") -> str:
    """Writes ``<prefix>.md`` (the :func:`success_table`), ``<prefix>.csv`` and ``<prefix>.json``; returns the
    markdown table."""
    import csv
    import json
    import os

    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    table = success_table(rows)
    with open(prefix + ".md", "w") as f:
        f.write((f"# {title}\n\n" if title else "") + table + "\n")
    k = max(len(r.episode_rates) for r in rows)
    with open(prefix + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["env", "policy", "trials"] + [f"episode_{i + 1}" for i in range(k)]
                   + [f"episode_{i + 1}_ci_{e}" for i in range(k) for e in ("low", "high")]
                   + ["any_success", "mean_return", "regret", "episode_length", "invalid_rate"])
        for r in rows:
            opt = ["" if v is None else f"{v:.4f}" for v in (r.regret, r.episode_length, r.invalid_rate)]
            w.writerow([r.env_id, r.policy, r.num_trials] + [f"{p:.4f}" for p in r.episode_rates]
                       + [f"{v:.4f}" for ci in r.episode_ci for v in ci] + [f"{r.any_success:.4f}", f"{r.mean_return:.4f}"] + opt)
    with open(prefix + ".json", "w") as f:
        json.dump([r.as_dict() for r in rows], f, indent=2)
    return table


# ---------------------------------------------------------------- trained policies (LMs)


SAMPLE_TRIALS = 2  # held-out trials per env whose transcripts every evaluation logs as TensorBoard text


def make_evaluator(graphdef, tasks: list[TaskSet], temperature: float, top_p: float, rows_per_chunk: int = 0,
                   mesh=None, mode: str = "none", sample_trials: int = SAMPLE_TRIALS):
    """``evaluate(params, key) -> {env: {success int[N, T], episode_index int[N, T], episode_done bool[N, T],
    env_step bool[N, T], invalid bool[N, T], returns [N], truncated [N], sample_tokens int32[n, S],
    sample_length int32[n]}}`` over each task's whole validation set, one jitted program; ``sample_*``: the
    tokens and real lengths of the env's first ``n = min(sample_trials, N)`` trials (rendered in the logs).
    ``rows_per_chunk`` (a divisor of N; 0: all) plays the trials in micro-batches
    (:func:`metarl_jax.agents.rollout.rollout`). With a ``mesh`` (:mod:`metarl_jax.sharding`), an env's trials are
    played with their rows on the mesh's data axis under ``mode`` (when their count splits evenly) and every output
    is replicated, so that each process of a multi-process job can read the whole result."""
    on_rows = sharding.row_constraint(mesh, mode) if mesh is not None else None

    def pinned(n: int):
        """The row constraint of an env's ``n`` trials, or None when they stay whole."""
        return on_rows if on_rows is not None and n % mesh.shape["data"] == 0 else None

    def with_samples(played):
        """``played`` with its ``tokens`` [N, S] / ``length`` [N] cut to the first trials, as ``sample_*``."""
        played = dict(played)
        return {**played, "sample_tokens": played.pop("tokens")[:sample_trials],
                "sample_length": played.pop("length")[:sample_trials]}

    def evaluate(params, key):
        out = {}
        for task, k in zip(tasks, jax.random.split(key, len(tasks))):
            n = task.task_keys.shape[0]
            sample = jax.vmap(lambda kk: task.env.sample_task(kk, task.env_params))
            k_reset, k_roll = jax.random.split(k)
            _, trials = jax.vmap(task.env.reset_to_task, in_axes=(0, 0, None))(
                jax.random.split(k_reset, n), sample(task.task_keys), task.env_params)
            constrain = pinned(n)
            if constrain is not None:
                trials = constrain(trials)
            games = task.task_keys.game if task.games else None
            tr = rollout(graphdef, params, task, k_roll, trials, Sampling(temperature, top_p), rows_per_chunk=rows_per_chunk,
                         row_context_len=task.row_context_len(games) if task.games else None, constrain=constrain)
            moves = tr.taken & ~tr.reflection
            played = dict(success=tr.success, episode_index=tr.episode_index, returns=tr.rewards.sum(1),
                          truncated=tr.truncated, episode_done=tr.episode_done, env_step=moves,
                          invalid=moves & ~action_is_valid(tr.valid, tr.actions), tokens=tr.tokens, length=tr.length)
            if not task.games:
                out[task.name] = with_samples(played)
                continue
            start = 0  # a mixture's validation set is its games' sets one after the other
            for member in task.games:
                size = member.task_keys.shape[0]
                out[member.name] = with_samples(jax.tree.map(lambda x, s=start, n=size: x[s:s + n], played))
                start += size
        return out

    if mesh is None:
        return jax.jit(evaluate)
    return jax.jit(evaluate, out_shardings=NamedSharding(mesh, P()))


def evaluate_params(evaluator, params, config, label: str) -> tuple[dict, list[SuccessRow]]:
    """``(played, rows)``: ``evaluator`` (:func:`run_evaluator`) on ``params`` with the run's evaluation key (the same
    held-out trials at every evaluation of a run, and in ``--mode=evaluate``), and its :func:`summarize_eval`."""
    eval_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2**31 - 1)
    played = jax.device_get(evaluator(params, eval_key))
    return played, summarize_eval(played, config.num_episodes_reported, label)


def summarize_eval(played: dict, num_episodes: int, label: str) -> list[SuccessRow]:
    """Per-env :class:`SuccessRow` (per-episode success with Wilson 95% intervals) from an evaluator's output."""
    time_first = lambda x: np.asarray(x).T  # noqa: E731  evaluate.summarize takes [T, N] step records
    steps = ("success", "episode_index", "episode_done", "env_step", "invalid")
    return [summarize(name, label, {**{k: time_first(r[k]) for k in steps}, "trial_return": np.asarray(r["returns"])},
                      num_episodes)
            for name, r in played.items()]


def render_samples(played: dict, tokenizer) -> dict[str, str]:
    """``{"<env>/trial_<i>": markdown}`` (i from 1): an evaluator's sample trials (``sample_tokens`` int32[n, S],
    ``sample_length`` int32[n] per env) decoded with ``tokenizer``, each an indented code block so TensorBoard's
    text tab keeps the transcript's lines and does not read it as markdown. A learned prompt's virtual tokens (ids
    past the tokenizer's vocabulary, :mod:`metarl_jax.models.prompt`) show as ``[N prompt vectors]``."""
    out = {}
    for env, r in played.items():
        for i, (tokens, length) in enumerate(zip(np.asarray(r["sample_tokens"]), np.asarray(r["sample_length"])), 1):
            tokens = tokens[:length]
            virtual = tokens >= tokenizer.vocab_size
            text = tokenizer.decode(tokens[~virtual].tolist())
            if virtual.any():
                text = f"[{int(virtual.sum())} prompt vectors] {text}"
            out[f"{env}/trial_{i}"] = "\n".join("    " + line for line in text.split("\n"))
    return out


def eval_metrics(rows: list[SuccessRow], played: dict) -> dict:
    return {r.env_id: {"episode_success": r.episode_rates, "any_success": r.any_success, "mean_return": r.mean_return,
                       "truncated": float(np.asarray(played[r.env_id]["truncated"]).mean())} for r in rows}
