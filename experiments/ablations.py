"""Ablations, each variant a full training run of the CPU-scale setup (configs/default.py) evaluated on the same
held-out 3-episode trials. Two tables:

* ``ingredients``: ORBIT's ingredients (reflection, the cross-episode discount, the number of training episodes
  per trial, constrained vs free decoding), one seed each;
* ``mechanism``: which training signal makes the cross-episode gain. From the main run's imitation prior (trained
  once per seed, and reported as a row): ORBIT's policy gradient (the README's main run), single-episode RL with
  the same losses, the observation loss alone (``policy_coef=0``), the policy gradient alone
  (``observation_coef=0``), the hindsight answer loss alone, the policy gradient with the answer loss,
  single-episode RL with the policy gradient alone and with the answer loss; and random play. Every row gets the
  same budget and the same seeds; the table gives the mean over seeds with a 95% Student-t interval over seeds.

Commands (2 CPU cores)::

    python experiments/ablations.py --table ingredients [--steps 450] [--only reflection,no_discount]
    python experiments/ablations.py --table mechanism --seeds 0,1,2     # about 100 minutes

Writes ``results/ablations.{md,csv,json,png}`` or ``results/mechanism.{md,csv,json,png}`` (and, for several
seeds, ``results/mechanism_per_seed.json``); runs live under ``results/runs/<ablations|mechanism>/<variant>[/seed<k>]`` and are
reused (a finished run is reported again, an unfinished one resumes). Expected result: the ``ingredients``
baseline row equals the README main run's ORBIT row at the same step count; the mechanism table's conclusion is
recorded in results/README.md. The margins are whatever the runs measure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re

from common import REPO, from_scratch, play_policy_rows, pool_seeds, write_table  # experiments/ is on sys.path

from metarl_jax import build, train
from metarl_jax.configs.default import get_config
from metarl_jax.prior import PRIOR_LABEL, rl_phase, train_prior


def set_(longer=1.0, **kw):
    """A config edit: sets the fields ``kw`` and scales every task's context by ``longer`` (for variants that add
    tokens per turn)."""
    def edit(c):
        for k, v in kw.items():
            setattr(c, k, v)
        for t in list(c.train_tasks) + list(c.eval_tasks):
            t.context_len = int(t.context_len * longer)
    return edit


def ingredient_variants() -> dict:
    """name -> (base config variant, function editing the config in place)."""

    def episodes(n):
        def edit(c):
            for t in c.train_tasks:  # n episodes of training trials; evaluation stays at 3
                t.total_step_cap = n * t.max_turns_per_episode
            c.single_episode = n == 1
        return edit

    table = {
        "baseline": set_(),
        "reflection": set_(reflection=True, longer=1.5),
        "no_discount": set_(discount=False),
        "free_decoding": set_(decoding="free", free_tokens=8, answer_coef=0.0, longer=1.5),
        "train_episodes_1": episodes(1),
        "train_episodes_2": episodes(2),
        "train_episodes_3": episodes(3),
        "train_episodes_5": episodes(5),
    }
    def scratch(edit):  # the table was recorded with the from-scratch main run
        return lambda c: edit(from_scratch(c))

    return {name: ("orbit", scratch(edit)) for name, edit in table.items()}


def mechanism_variants() -> dict:
    """name -> (base config variant, function editing the config in place): what makes the main run's cross-episode
    gain. Every row starts its RL phase from the same imitation prior (trained once per seed) and trains the main
    run's RL steps; the edits change only the RL phase's losses. "the answer loss" is the hindsight one (the action
    that won the row's first won episode, from its own transcript)."""
    return {
        "ORBIT: policy gradient (main run)": ("orbit", set_()),
        "single-episode RL: policy gradient (main run)": ("single", set_()),
        "observation loss only (no policy gradient)": ("orbit", set_(policy_coef=0.0)),
        "ORBIT: policy gradient only (no observation loss)": ("orbit", set_(observation_coef=0.0)),
        "answer loss only (no policy gradient)": ("orbit", set_(answer_coef=10.0, policy_coef=0.0)),
        "ORBIT: policy gradient + answer loss": ("orbit", set_(answer_coef=10.0)),
        "single-episode RL: policy gradient only (no observation loss)": ("single", set_(observation_coef=0.0)),
        "single-episode RL: policy gradient + answer loss": ("single", set_(answer_coef=10.0)),
    }


TABLES = {"ingredients": ingredient_variants, "mechanism": mechanism_variants}


def slug(name: str) -> str:
    """A directory name for a variant."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def run_dir(variant: str, seed: int, seeds: list[int]) -> str:
    """A run's directory under ``results/runs/<table>/``."""
    return slug(variant) + (f"/seed{seed}" if len(seeds) > 1 else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", choices=sorted(TABLES), default="ingredients")
    parser.add_argument("--steps", type=int, default=None,
                        help="GRPO steps per run (default: 450 for ingredients, the main config's for mechanism)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each variant trains once per seed")
    parser.add_argument("--only", default="", help="comma-separated variant names or their directory names (default: all)")
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    args = parser.parse_args(argv)
    table = TABLES[args.table]()
    by_slug = {slug(n): n for n in table}
    names = [by_slug.get(n, n) for n in args.only.split(",") if n] or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {sorted(by_slug)}")
    seeds = [int(x) for x in args.seeds.split(",") if x]
    steps = args.steps or (450 if args.table == "ingredients" else None)
    configs = {}
    for variant in names:  # build and check every config before any training
        for seed in seeds:
            base, edit = table[variant]
            c = get_config(base)
            c.seed, c.eval_every = seed, 0
            pretrain = c.pretrain.to_dict()
            edit(c)
            if c.pretrain.steps and c.pretrain.to_dict() != pretrain:  # steps=0: the row has no prior to share
                raise ValueError(f"{variant!r}: a row may not change the imitation phase (config.pretrain), which "
                                 "every row of a seed shares")
            c.num_steps = steps or c.num_steps  # after the edit: the ingredients' from_scratch sets its own
            build.build_run(c)
            configs[variant, seed] = c
    name = "ablations" if args.table == "ingredients" else args.table  # the ingredients table keeps its old name
    per_seed: dict[int, list] = {seed: [] for seed in seeds}
    priors = {}
    for (variant, seed), c in configs.items():
        if c.pretrain.steps:  # the rows of a seed start from one prior, trained when the first of them needs it
            if seed not in priors:
                print(f"== {PRIOR_LABEL}, seed {seed}", flush=True)
                prior_dir = os.path.join(args.out, "runs", name, run_dir(PRIOR_LABEL, seed, seeds))
                priors[seed], prior_rows = train_prior(c, prior_dir)
                per_seed[seed] += prior_rows
            c = rl_phase(c, priors[seed])
        print(f"== {variant}, seed {seed}", flush=True)
        workdir = os.path.join(args.out, "runs", name, run_dir(variant, seed, seeds))
        evaluated = train.train_and_evaluate(c, workdir, label=variant).rows
        per_seed[seed] += [dataclasses.replace(r, policy=variant) for r in evaluated]  # a reused run keeps its own label
    if args.table == "mechanism":  # random play on the same held-out envs, once per seed
        main = get_config("orbit")
        for seed in seeds:
            per_seed[seed] += play_policy_rows(main.eval_tasks, ["random"], main.eval_trials, main.num_episodes_reported,
                                               seed=seed)
    rows = pool_seeds([per_seed[s] for s in seeds])
    if len(seeds) > 1:
        with open(os.path.join(args.out, f"{name}_per_seed.json"), "w") as f:
            json.dump({str(s): [r.as_dict() for r in rows_] for s, rows_ in per_seed.items()}, f, indent=2)
    c = next(iter(configs.values()))
    budget = (f"{c.pretrain.steps} imitation + {c.num_steps - c.pretrain.steps} RL steps" if c.pretrain.steps
              else f"{c.num_steps} steps")
    what = f"{budget}, seeds {args.seeds}"
    print(write_table(rows, args.out, name, f"Ablations: {args.table} (cpu scale, {what})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
