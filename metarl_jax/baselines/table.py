"""Plays baseline policies on multi-episode trials and tabulates per-episode success."""

from __future__ import annotations

import jax

from metarl_jax import baselines, envs
from metarl_jax.evaluate import SuccessRow, play_trials, success_table, summarize
from metarl_jax.tasks import task_entry


def play_baselines(tasks, policies, num_trials: int = 256, seed: int = 0, num_episodes: int | None = None,
                   lamer_gamma: float = 0.0, log=print) -> tuple[list[SuccessRow], str]:
    """Plays each policy on each task's multi-episode trial; returns the rows and their markdown table.

    ``tasks`` are task entries as in a config's ``eval_tasks`` (``dict(env_id=..., max_turns_per_episode=...,
    total_step_cap=...)``, or a bare env id for the registry's ORBIT shape), so a run's baselines play the trials
    its policy is evaluated on. ``num_episodes`` (default: all the cap's episodes) is the number reported;
    ``lamer_gamma`` > 0 plays LaMer's variant of the trial. ``policies`` are names of
    :func:`metarl_jax.baselines.policy_names`: the stateless ``random`` and ``oracle`` play every env; an online
    learner (``ucb1``, ``q_learning``, ...) must support every env asked for (``ValueError`` naming its supported
    envs otherwise).
    """
    names = baselines.policy_names()
    unknown = [p for p in policies if p not in names]
    if unknown:
        raise ValueError(f"unknown policy {unknown}; choose from {sorted(names)}")
    entries = [task_entry(t) for t in tasks]  # fails on a bad id before compiling anything
    for entry in entries:
        for name in policies:
            if entry["env_id"] not in baselines.supported_envs(name):
                raise ValueError(f"the {name!r} policy does not support {entry['env_id']!r}; supported envs: "
                                 f"{', '.join(baselines.supported_envs(name))}")
    rows = []
    for entry in entries:
        env_id, turns, cap = entry["env_id"], int(entry["max_turns_per_episode"]), int(entry["total_step_cap"])
        env, params = envs.make_trial(env_id, total_step_cap=cap, max_turns=turns, lamer_gamma=lamer_gamma)
        for name in policies:
            log(f"playing {num_trials} trials of {env_id} ({turns} turns an episode, {cap} in all) with the "
                f"{name} policy ...")
            rollout = play_trials(env, params, baselines.make_policy(name, env), jax.random.PRNGKey(seed), num_trials)
            rows.append(summarize(env_id, name, rollout, num_episodes or cap // turns))
    return rows, success_table(rows)
