"""Ablations of ORBIT's ingredients: reflection, the cross-episode discount, the number of training episodes per
trial, and constrained vs free decoding. Each variant is a full training run of the cpu-scale setup
(configs/default.py), evaluated on the same held-out 3-episode trials.

Command (2 CPU cores; about 6 minutes per variant at 450 steps, 8 variants)::

    python experiments/ablations.py [--steps 450] [--only reflection,discount]

Writes ``results/ablations.{md,csv,png}``; runs live under ``results/runs/ablations/<variant>`` and are reused.
Expected result: every row reports per-episode success; the baseline row equals the README main run's ORBIT row
at the same step count. The margins are whatever the runs measure (recorded in results/README.md).
"""

from __future__ import annotations

import argparse
import os

from common import REPO, write_table  # experiments/ is on sys.path
from default import get_config

from metarl_jax import train


def variants() -> dict:
    """name -> function editing a config in place."""

    def episodes(n):
        def edit(c):
            for t in c.train_tasks:  # n episodes of training trials; evaluation stays at 3
                t.total_step_cap = n * t.max_turns_per_episode
            c.single_episode = n == 1
        return edit

    def set_(longer=1.0, **kw):  # longer: scales the contexts for variants that add tokens per turn
        def edit(c):
            for k, v in kw.items():
                setattr(c, k, v)
            for t in list(c.train_tasks) + list(c.eval_tasks):
                t.context_len = int(t.context_len * longer)
        return edit

    return {
        "baseline": set_(),
        "reflection": set_(reflection=True, longer=1.5),
        "discount": set_(discount=True),
        "free_decoding": set_(decoding="free", free_tokens=8, answer_coef=0.0, longer=1.5),
        "train_episodes_1": episodes(1),
        "train_episodes_2": episodes(2),
        "train_episodes_3": episodes(3),
        "train_episodes_5": episodes(5),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    args = parser.parse_args(argv)
    table = variants()
    names = [n for n in args.only.split(",") if n] or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {sorted(table)}")
    configs = {}
    for name in names:  # build and check every config before any training
        c = get_config("orbit")
        c.num_steps, c.eval_every = args.steps, 0
        table[name](c)
        train.build_run(c)
        configs[name] = c
    rows = []
    for name, c in configs.items():
        print(f"== {name}", flush=True)
        rows += train.train_and_evaluate(c, os.path.join(args.out, "runs", "ablations", name), label=name)
    print(write_table(rows, args.out, "ablations", "Ablations (cpu scale)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
