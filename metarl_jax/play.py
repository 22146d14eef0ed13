"""Plays baseline policies on multi-episode trials and tabulates per-episode success."""

from __future__ import annotations

import jax

from metarl_jax import baselines, envs
from metarl_jax.evaluate import SuccessRow, play_trials, success_table, summarize


def play_baselines(env_ids, policies, num_trials: int = 256, seed: int = 0, log=print) -> tuple[list[SuccessRow], str]:
    """Plays each policy on each env's ORBIT trial; returns the rows and their markdown table.

    ``policies`` are names of :func:`metarl_jax.baselines.policy_names`: the stateless ``random`` and ``oracle``
    play every env; an online learner (``ucb1``, ``q_learning``, ...) must support every env asked for
    (``ValueError`` naming its supported envs otherwise).
    """
    names = baselines.policy_names()
    unknown = [p for p in policies if p not in names]
    if unknown:
        raise ValueError(f"unknown policy {unknown}; choose from {sorted(names)}")
    for env_id in env_ids:
        envs.spec(env_id)  # fail on a bad id before compiling anything
        for name in policies:
            if env_id not in baselines.supported_envs(name):
                raise ValueError(f"the {name!r} policy does not support {env_id!r}; supported envs: "
                                 f"{', '.join(baselines.supported_envs(name))}")
    rows = []
    for env_id in env_ids:
        env, params = envs.make_trial(env_id)
        num_episodes = env.total_step_cap // env.env.default_max_turns
        for name in policies:
            log(f"playing {num_trials} trials of {env_id} with the {name} policy ...")
            rollout = play_trials(env, params, baselines.make_policy(name, env), jax.random.PRNGKey(seed), num_trials)
            rows.append(summarize(env_id, name, rollout, num_episodes))
    return rows, success_table(rows)
