"""The in-context learning table: success at episode 1 / 2 / 3 on held-out trials, one row per method.

Rows: the oracle (the upper bound for regret), uniform random, the classical online learner of each game (elimination, UCB1, Q-learning), RL^2 (a GRU
trained with PPO on the same trials), the base LM (no training; without and with a reflection turn between
episodes, i.e. ReAct-like and Reflexion-like prompting), single-episode RL (GRPO on one-episode
trials) and ORBIT (GRPO on multi-episode trials). Each row is played on the same held-out tasks.

Commands::

    python experiments/table_in_context_learning.py --scale cpu        # this machine, 2 CPU cores
    python experiments/table_in_context_learning.py --scale paper --pretrained_dir=/path/to/Qwen3-4B

``--scale cpu``: a tiny from-scratch transformer (built-in word vocabulary) trained on GuessTheNumber-easy and
-hard trials; held-out *tasks* (validation secrets and seeds) of those envs. Under 30 minutes on 2 cores.
Expected result: random is flat across episodes; elimination rises to 1.0; ORBIT's episode-3 success is above
its episode-1 success and above single-episode RL's episode 3 (see results/README.md for the measured numbers).

``--scale paper``: ORBIT's settings on accelerators: Qwen3 from a local directory (never downloaded), chat
format, free decoding with thinking, 8 rollouts per task, lr 1e-6, temperature 0.6; trained on RPS /
Minesweeper / Hangman / Wordle / Blackjack, held-out *envs* Maze and Mastermind.

Writes ``results/table_in_context_learning_<scale>.{md,csv,png}``; trained runs live under
``results/runs/<scale>/`` and are reused (resumed, or reported again when finished) on a rerun.
"""

from __future__ import annotations

import argparse
import os
import time

import jax

from common import REPO, from_scratch, play_policy_rows, write_table  # experiments/ is on sys.path

from metarl_jax import build, train
from metarl_jax.configs.default import get_config
from metarl_jax.configs.paper import get_config as get_paper_config
from metarl_jax.evaluate import add_regret, make_evaluator, summarize, summarize_eval


def cpu_config(variant: str):
    """The main run's from-scratch setup (:func:`common.from_scratch`), which results/table_in_context_learning_cpu.*
    was recorded with."""
    return from_scratch(get_config(variant))


def paper_config(variant: str, pretrained_dir: str):
    """ORBIT's published setup (configs/paper.py), for accelerators, with the model and tokenizer of
    ``pretrained_dir``."""
    c = get_paper_config(variant)
    c.model.pretrained_dir = c.tokenizer = pretrained_dir
    return c


def lm_rows(config, out_dir: str, log=print) -> list:
    """Base LM, single-episode RL and ORBIT rows (the two runs train into ``out_dir``)."""
    rows = []
    for label, reflection in (("base LM", False), ("base LM + reflection", True)):  # ReAct-like / Reflexion-like
        c = config.copy_and_resolve_references()
        c.reflection = reflection
        if reflection:
            for t in c.eval_tasks:  # room for the reflection turns
                t.context_len = int(t.context_len * 1.5) if t.context_len else 0
        run = build.build_run(c)
        evaluator = make_evaluator(run.graphdef, run.eval_tasks, c.eval_temperature, c.eval_top_p)
        log(f"  {label} (no training)")
        played = jax.device_get(evaluator(run.model_state, jax.random.PRNGKey(c.seed + 1)))
        rows += summarize_eval(played, c.num_episodes_reported, label)
    for label, single in (("single-episode RL", True), ("ORBIT", False)):
        c = config.copy_and_resolve_references()
        c.single_episode = single
        log(f"  {label}: {c.num_steps} GRPO steps")
        rows += train.train_and_evaluate(c, os.path.join(out_dir, "single_episode" if single else "orbit"),
                                         label=label).rows
    return rows


def rl2_rows(entries, num_trials: int, num_episodes: int, updates: int, seed: int, log=print) -> list:
    """RL^2 rows: a GRU policy trained with PPO on each env's multi-episode trials."""
    from metarl_jax.baselines import rl2, rl2_train

    rows = []
    for entry in entries:
        log(f"  RL^2 on {entry['env_id']}: {updates} PPO updates")
        model, _ = rl2_train.train_rl2(entry["env_id"], jax.random.PRNGKey(seed), num_updates=updates,
                                 max_turns_per_episode=entry["max_turns_per_episode"],
                                 total_step_cap=entry["total_step_cap"], log=lambda *a: None)
        played = rl2.evaluate_rl2(model, entry["env_id"], jax.random.PRNGKey(seed + 1), num_trials, num_episodes,
                                  max_turns_per_episode=entry["max_turns_per_episode"],
                                  total_step_cap=entry["total_step_cap"])
        rows.append(summarize(entry["env_id"], "RL^2", played, num_episodes))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("cpu", "paper"), default="cpu")
    parser.add_argument("--pretrained_dir", default="", help="local Qwen3 directory (paper scale)")
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    parser.add_argument("--rl2_updates", type=int, default=300)
    args = parser.parse_args(argv)
    if args.scale == "paper" and not args.pretrained_dir:
        parser.error("--scale paper needs --pretrained_dir (a local Qwen3 directory; nothing is downloaded)")
    config = cpu_config("orbit") if args.scale == "cpu" else paper_config("orbit", args.pretrained_dir)
    build.build_run(config)  # check the config before anything runs
    entries = [dict(e) for e in config.eval_tasks]
    n, k = config.eval_trials, config.num_episodes_reported
    t0 = time.time()
    print(f"[{time.time() - t0:5.0f}s] random and classical baselines", flush=True)
    rows = play_policy_rows(entries, ["oracle", "random", "classical"], n, k, seed=config.seed)
    print(f"[{time.time() - t0:5.0f}s] RL^2", flush=True)
    rows += rl2_rows(entries, n, k, args.rl2_updates, config.seed)
    print(f"[{time.time() - t0:5.0f}s] language models", flush=True)
    rows += lm_rows(config, os.path.join(args.out, "runs", args.scale))
    add_regret(rows, {r.env_id: r.episode_rates for r in rows if r.policy == "oracle"})
    order = {e["env_id"]: i for i, e in enumerate(entries)}
    rows.sort(key=lambda r: order[r.env_id])
    name = f"table_in_context_learning_{args.scale}"
    table = write_table(rows, args.out, name, f"In-context learning across episodes ({args.scale} scale)")
    print(table)
    print(f"wrote {args.out}/{name}.md/.csv/.png in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
