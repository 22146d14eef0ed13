"""How a trained run's earlier episodes bear on its next one: each held-out episode's success given the record of
wins and losses before it (``metarl_jax.evaluate.episode_transitions``), per evaluation env.

Command (2 CPU cores: about a minute per run)::

    python experiments/episode_transitions.py results/runs/mechanism/orbit_policy_gradient_main_run/seed0 \\
        results/runs/mechanism/orbit_policy_gradient_main_run/seed1

Each run is played on the held-out trials of its own evaluation (the eval tasks, settings and seed of the config its
``eval.json`` was written with, ``eval_config.json``), from its latest checkpoint exported to a temporary directory,
so any finished run works, the games' runs of ``experiments/games.py`` included; a comparison's workdir names its
runs (``<workdir>/orbit``). Prints a markdown table per run. ``--guesses`` (GuessTheNumber with the terse text) adds
how each episode's guesses use the earlier episodes (:func:`guess_statistics`): whether an episode opens with the
last won episode's winning guess, and how many of its guesses its own feedback had already ruled out. Expected
result (2026-12-06): ORBIT's seed 0 wins episode 2 after a won episode 1 in 0.974 of the trials, seed 1 in 0.781
(results/README.md); two-digit Mastermind with 4 turns, seed 1's collapsed ORBIT run (2026-12-07): 1.000 after a won
episode 1 (32 trials) and 0.000 after a lost one (224).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile

import ml_collections

from metarl_jax import build
from metarl_jax.configs.default import get_config
from metarl_jax.evaluate import SAMPLE_TRIALS, episode_transitions, episode_wins, evaluate_params, make_evaluator
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


def played_of(run_dir: str, transcripts: bool = False):
    """``(config, played, tokenizer)``: ``run_dir``'s latest checkpoint played on its own held-out trials
    (:func:`metarl_jax.evaluate.make_evaluator`'s output per env; ``transcripts``: with every trial's tokens)."""
    with tempfile.TemporaryDirectory() as model_dir:
        export(run_dir, os.path.join(model_dir, "model"))
        config = evaluation_config(run_dir)
        config.pretrain.steps, config.trainable = 0, "full"  # the exported weights are the whole model
        config.model.pretrained_dir = os.path.join(model_dir, "model")
        run = build.build_run(config)
        evaluator = make_evaluator(run.graphdef, run.eval_tasks, config.eval_temperature, config.eval_top_p,
                                   sample_trials=config.eval_trials if transcripts else SAMPLE_TRIALS)
        played, _ = evaluate_params(evaluator, run.model_state, config, "transitions")
    return config, played, run.tokenizer


def transitions_of(config, played) -> dict:
    """``{env: episode_transitions}`` of :func:`played_of`'s output."""
    steps = lambda r: {k: r[k].T for k in ("success", "episode_index")}  # noqa: E731  [N, T] -> [T, N]
    return {env: episode_transitions(episode_wins(steps(r), config.num_episodes_reported)) for env, r in played.items()}


EPISODE = re.compile(r"\[Episode \d+\]")
GUESS = re.compile(r"\\boxed\{(\d+)\}\s*(higher|lower|correct)?")
RANGE = re.compile(r"between (\d+) and (\d+)")


def guess_statistics(texts: list[str], episodes: int = 3) -> dict[str, tuple[int, float, float, float]]:
    """GuessTheNumber's terse transcripts (``\\boxed{25} lower`` per turn, the range in the opening line): for every
    episode k = 2 .. ``episodes`` and record of wins (W) and losses (L) before it, ``(trials, repeat, won,
    ruled_out)``: how many trials have that record, the share whose episode k opens with the last won episode's
    winning guess, the share that win episode k, and the mean number of guesses in episode k that the episode's own
    earlier feedback had already ruled out. ``repeat`` separates replaying a found secret from searching again;
    ``ruled_out`` measures the search itself. ``won`` is read from the feedback text, and a trial's last guess has
    none (the trial ended with it): a win on a trial's last turn is missed here, not in :func:`transitions_of`."""
    found: dict[str, list] = {}
    for text in texts:
        low, high = (int(v) for v in RANGE.search(text).groups())
        record, winner = "", None
        for k, episode in enumerate(EPISODE.split(text)[1:episodes + 1]):
            guesses = [(int(g), feedback) for g, feedback in GUESS.findall(episode)]
            if not guesses:
                break
            won = any(feedback == "correct" for _, feedback in guesses)
            if k:
                lo, hi, ruled_out = low, high, 0
                for g, feedback in guesses:
                    ruled_out += not lo <= g <= hi
                    if feedback == "higher":
                        lo = max(lo, g + 1)
                    elif feedback == "lower":
                        hi = min(hi, g - 1)
                row = found.setdefault(f"{k + 1} | {record}", [0, 0, 0, 0])
                row[0] += 1
                row[1] += winner is not None and guesses[0][0] == winner
                row[2] += won
                row[3] += ruled_out
            if won:
                winner = next(g for g, feedback in guesses if feedback == "correct")
            record += "W" if won else "L"
    return {key: (n, repeat / n, won / n, ruled_out / n) for key, (n, repeat, won, ruled_out) in sorted(found.items())}


def cell(key: str) -> str:
    """A record's key (``"3 | LW"``) as a markdown table cell: ``3 after LW``."""
    return key.replace(" | ", " after ")


def table(run_dir: str, found: dict) -> str:
    lines = [f"## {run_dir}", "", "| env | episode given the record before it | win rate | trials |",
             "|---|---|---|---|"]
    for env, rows in found.items():
        for key, (rate, n) in rows.items():
            lines.append(f"| {env} | {cell(key)} | {'-' if rate is None else f'{rate:.3f}'} | {n} |")
    return "\n".join(lines)


def guess_table(run_dir: str, config, played, tokenizer) -> str:
    """:func:`guess_statistics` of every GuessTheNumber env of :func:`played_of`'s output, as markdown."""
    header = ("| env | episode given the record before it | trials | opens with the last winning guess | won | "
              "guesses already ruled out, per episode |")
    lines = [f"## {run_dir}: guesses", "", header, "|---|---|---|---|---|---|"]
    for env, r in played.items():
        if "GuessTheNumber" not in env:
            continue
        texts = [tokenizer.decode(t[:n].tolist()) for t, n in zip(r["sample_tokens"], r["sample_length"])]
        for key, (n, repeat, won, ruled_out) in guess_statistics(texts, config.num_episodes_reported).items():
            lines.append(f"| {env} | {cell(key)} | {n} | {repeat:.2f} | {won:.2f} | {ruled_out:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (each with checkpoints/)")
    parser.add_argument("--guesses", action="store_true", help="GuessTheNumber with the terse text: also how each "
                        "episode's guesses use the earlier ones (guess_statistics)")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        config, played, tokenizer = played_of(run_dir, transcripts=args.guesses)
        print(table(run_dir, transitions_of(config, played)), "\n", flush=True)
        if args.guesses:
            print(guess_table(run_dir, config, played, tokenizer), "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
