"""How a trained run's earlier episodes bear on its next one: each held-out episode's success given the record of
wins and losses before it (``metarl_jax.evaluate.episode_transitions``), per evaluation env.

Command (2 CPU cores: about a minute per run)::

    python experiments/episode_transitions.py results/runs/mechanism/orbit_policy_gradient_main_run/seed0 \\
        results/runs/mechanism/orbit_policy_gradient_main_run/seed1

Each run is played on the held-out trials of its own evaluation (the eval tasks, settings and seed of the
config its ``eval.json`` was written with, ``eval_config.json``), from its latest checkpoint exported to a
temporary directory, so any finished run works, the games' runs of ``experiments/games.py`` included; a
comparison's workdir names its runs (``<workdir>/orbit``). Prints a markdown table per run. Expected result
(2026-12-06): ORBIT's seed 0 wins episode 2 after a won episode 1 in 0.974 of the trials, seed 1 in 0.781
(results/README.md); two-digit Mastermind with 4 turns, seed 1's collapsed ORBIT run (2026-12-07): 1.000 after a
won episode 1 (32 trials) and 0.000 after a lost one (224).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import ml_collections

from metarl_jax import build
from metarl_jax.configs.default import get_config
from metarl_jax.evaluate import episode_transitions, episode_wins, evaluate_params, make_evaluator
from metarl_jax.export import export
from metarl_jax.train import EVAL_CONFIG


def evaluation_config(run_dir: str) -> ml_collections.ConfigDict:
    """The config ``run_dir``'s own evaluation used (its ``eval_config.json``)."""
    path = os.path.join(run_dir, EVAL_CONFIG)
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} does not exist: finish the run, or evaluate its latest checkpoint with "
                         f"python -m metarl_jax.main --workdir={run_dir} --mode=evaluate")
    with open(path) as f:
        saved = json.load(f)
    for field in ("train_tasks", "eval_tasks"):  # lists of dicts, which ConfigDict leaves as dicts
        saved[field] = [ml_collections.ConfigDict(t) for t in saved[field]]
    config = get_config()  # a field added after the run was saved keeps its default
    config.update(saved)
    return config


def transitions_of(run_dir: str) -> dict:
    """``{env: episode_transitions}`` of ``run_dir``'s latest checkpoint on its own held-out trials."""
    with tempfile.TemporaryDirectory() as model_dir:
        export(run_dir, os.path.join(model_dir, "model"))
        config = evaluation_config(run_dir)
        config.pretrain.steps, config.trainable = 0, "full"  # the exported weights are the whole model
        config.model.pretrained_dir = os.path.join(model_dir, "model")
        run = build.build_run(config)
        evaluator = make_evaluator(run.graphdef, run.eval_tasks, config.eval_temperature, config.eval_top_p)
        played, _ = evaluate_params(evaluator, run.model_state, config, "transitions")
    steps = lambda r: {k: r[k].T for k in ("success", "episode_index")}  # noqa: E731  [N, T] -> [T, N]
    return {env: episode_transitions(episode_wins(steps(r), config.num_episodes_reported)) for env, r in played.items()}


def table(run_dir: str, found: dict) -> str:
    lines = [f"## {run_dir}", "", "| env | episode given the record before it | win rate | trials |",
             "|---|---|---|---|"]
    for env, rows in found.items():
        for key, (rate, n) in rows.items():
            lines.append(f"| {env} | {key} | {'-' if rate is None else f'{rate:.3f}'} | {n} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (each with checkpoints/)")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        print(table(run_dir, transitions_of(run_dir)), "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
