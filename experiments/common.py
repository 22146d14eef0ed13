"""Shared pieces of the experiment scripts: playing baselines and LMs, and writing tables and plots.

Every script writes ``results/<name>.md`` (markdown), ``results/<name>.csv`` and ``results/<name>.png``
(success vs episode index, one line per method, one panel per env).
"""

from __future__ import annotations

import os
import sys

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # a checkout works without `pip install -e .`

from metarl_jax import baselines, envs  # noqa: E402
from metarl_jax.evaluate import SuccessRow, play_trials, summarize, write_report  # noqa: E402

# The classical online learner of each game family, in order of preference.
CLASSICAL = ("elimination", "ucb1", "opponent_counts", "q_learning")


def from_scratch(c):
    """Edits a config of ``configs/default.py`` in place into the main run as it was until 2026-12-06, before the
    imitation prior: a from-scratch model (no imitation phase) with the hindsight answer loss (``answer_coef=10``)
    at the from-scratch learning rate 3e-3, 1,000 steps. The tables recorded with it (the ingredients ablation, the
    scaling, trainable and cpu in-context tables) keep it, so that their commands reproduce them. Returns ``c``."""
    c.pretrain.steps, c.answer_coef, c.optimizer.learning_rate, c.num_steps = 0, 10.0, 3e-3, 1000
    return c


def trial_env(entry: dict):
    """The multi-episode trial env of a config task entry (turns per episode and step cap as configured)."""
    return envs.make_trial(entry["env_id"], total_step_cap=entry["total_step_cap"],
                           max_turns=entry["max_turns_per_episode"], intro=False, repeat_opening=False)


def classical_name(trial) -> str | None:
    """The classical learner that supports ``trial``'s game, or None."""
    for name in CLASSICAL:
        if baselines.supports(name, trial):
            return name
    return None


def play_policy_rows(entries, methods, num_trials: int, num_episodes: int, seed: int = 0, log=print) -> list[SuccessRow]:
    """Per-episode success of baseline policies (``"random"``, ``"oracle"``, ``"classical"``) on each env."""
    rows = []
    for entry in entries:
        trial, params = trial_env(entry)
        for method in methods:
            name = classical_name(trial) if method == "classical" else method
            if name is None:
                log(f"  no classical learner for {entry['env_id']}; row skipped")
                continue
            log(f"  {entry['env_id']}: {num_trials} trials with {name}")
            played = play_trials(trial, params, baselines.make_policy(name, trial), jax.random.PRNGKey(seed), num_trials)
            label = f"classical ({name})" if method == "classical" else name
            rows.append(summarize(entry["env_id"], label, played, num_episodes))
    return rows


def pool_seeds(per_seed: list[list[SuccessRow]]) -> list[SuccessRow]:
    """One row per (env, policy) from the same rows of several seeds' runs.

    Each episode's rate is the mean of the seeds' rates, and its interval is the 95% Student-t interval of that
    mean over seeds (n - 1 degrees of freedom, clipped to [0, 1]): it counts the seed-to-seed spread, which the
    per-run Wilson intervals do not. ``num_trials`` is the total over seeds. With one seed the run's own Wilson
    intervals are kept; a row that only one of several seeds has gets [0, 1] (no spread to measure).
    """
    import numpy as np
    from scipy import stats

    if len(per_seed) == 1:
        return list(per_seed[0])
    groups: dict[tuple[str, str], list[SuccessRow]] = {}
    for rows in per_seed:
        for r in rows:
            groups.setdefault((r.env_id, r.policy), []).append(r)
    pooled = []
    for (env_id, policy), rows in groups.items():
        rates = np.array([r.episode_rates for r in rows])  # [seeds, episodes]
        n = len(rows)
        mean = rates.mean(axis=0)
        half = stats.t.ppf(0.975, n - 1) * rates.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.ones_like(mean)
        pooled.append(SuccessRow(
            env_id=env_id, policy=policy, num_trials=sum(r.num_trials for r in rows),
            episode_rates=[float(m) for m in mean],
            episode_ci=[(float(max(0.0, m - h)), float(min(1.0, m + h))) for m, h in zip(mean, half)],
            any_success=float(np.mean([r.any_success for r in rows])),
            mean_return=float(np.mean([r.mean_return for r in rows]))))
    return pooled


def write_table(rows: list[SuccessRow], out_dir: str, name: str, title: str) -> str:
    """Writes ``<name>.md``, ``<name>.csv``, ``<name>.json`` and ``<name>.png`` into ``out_dir``; returns the
    markdown table."""
    table = write_report(rows, os.path.join(out_dir, name), title)
    plot(rows, os.path.join(out_dir, f"{name}.png"), title)
    return table


def plot(rows: list[SuccessRow], path: str, title: str) -> None:
    """Success vs episode index, one line (with 95% interval band) per method, one panel per env."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env_ids = list(dict.fromkeys(r.env_id for r in rows))
    # one colour per method in every panel, where a panel may lack some methods (no classical learner)
    colors = {p: f"C{i % 10}" for i, p in enumerate(dict.fromkeys(r.policy for r in rows))}
    fig, axes = plt.subplots(1, len(env_ids), figsize=(4.5 * len(env_ids) + 2, 3.6), squeeze=False)
    for ax, env_id in zip(axes[0], env_ids):
        for r in (r for r in rows if r.env_id == env_id):
            x = range(1, len(r.episode_rates) + 1)
            ax.plot(x, r.episode_rates, marker="o", label=r.policy, color=colors[r.policy])
            ax.fill_between(x, [lo for lo, _ in r.episode_ci], [hi for _, hi in r.episode_ci], alpha=0.15,
                            color=colors[r.policy])
        ax.set_title(env_id.replace("game:", ""), fontsize=9)
        ax.set_xlabel("episode")
        ax.set_xticks(list(x))
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("success rate")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o") for c in colors.values()]
    fig.legend(handles, list(colors), fontsize=7, loc="center right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
