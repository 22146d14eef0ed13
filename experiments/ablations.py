"""Ablations, each variant a full training run of the CPU-scale setup (configs/default.py) evaluated on the same
held-out 3-episode trials. Two tables:

* ``ingredients``: ORBIT's ingredients (reflection, the cross-episode discount, the number of training episodes
  per trial, constrained vs free decoding), one seed each;
* ``imitation``: an imitation phase (``config.pretrain``) as the prior, then ORBIT or single-episode RL
  without the answer loss (results/README.md, "An imitation phase first");
* ``mechanism``: which training signal makes the cross-episode gain. ORBIT's policy gradient alone, the
  auxiliary answer loss alone (``policy_coef=0``), both (the README's main run), single-episode RL with the same
  losses as the main run, the privileged answer loss (the secret) with and without the policy gradient, and
  random play. Every row gets the same budget and the same seeds; the table gives the mean over seeds with a 95%
  Student-t interval over seeds.

Commands (2 CPU cores)::

    python experiments/ablations.py --table ingredients [--steps 450] [--only reflection,no_discount]
    python experiments/ablations.py --table mechanism --seeds 0,1,2     # about 2 hours
    python experiments/ablations.py --table imitation --seeds 0         # about 15 minutes

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

from common import REPO, play_policy_rows, pool_seeds, write_table  # experiments/ is on sys.path

from metarl_jax import build, train
from metarl_jax.configs.default import get_config


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
    return {name: ("orbit", edit) for name, edit in table.items()}


def mechanism_variants() -> dict:
    """name -> (base config variant, function editing the config in place). The main run's answer loss (its
    target as configured) is "the answer loss"; "the secret" is the privileged target."""
    return {
        "ORBIT: policy gradient only": ("orbit", set_(answer_coef=0.0)),
        "answer loss only (no policy gradient)": ("orbit", set_(policy_coef=0.0)),
        "ORBIT: policy gradient + answer loss (main run)": ("orbit", set_()),
        "single-episode RL: policy gradient + answer loss": ("single", set_()),
        "secret answer loss only (privileged, no policy gradient)": ("orbit", set_(answer_from="task", policy_coef=0.0)),
        "ORBIT: policy gradient + secret answer loss (privileged)": ("orbit", set_(answer_from="task")),
    }


def imitation_variants() -> dict:
    """name -> (base config variant, edit): an imitation phase of 600 steps (``config.pretrain``, player noise
    0.25), then 700 RL steps at lr 3e-4 without the answer loss, for ORBIT and the single-episode baseline; and
    the prior alone. Each run trains its own phase, with the same keys, so the priors are the same."""
    def from_prior(rl_steps):
        def edit(c):
            c.answer_coef, c.optimizer.learning_rate = 0.0, 3e-4
            c.pretrain.steps, c.pretrain.noise, c.num_steps = 600, 0.25, 600 + rl_steps
        return edit

    return {
        "imitation prior (no RL)": ("orbit", from_prior(0)),
        "ORBIT from the prior": ("orbit", from_prior(700)),
        "single-episode RL from the prior": ("single", from_prior(700)),
    }


TABLES = {"ingredients": ingredient_variants, "mechanism": mechanism_variants, "imitation": imitation_variants}


def slug(name: str) -> str:
    """A directory name for a variant."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


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
            c.num_steps = steps or c.num_steps
            edit(c)  # may set num_steps itself (the imitation table: its phase plus the RL steps)
            build.build_run(c)
            configs[variant, seed] = c
    name = "ablations" if args.table == "ingredients" else args.table  # the ingredients table keeps its old name
    per_seed: dict[int, list] = {seed: [] for seed in seeds}
    for (variant, seed), c in configs.items():
        print(f"== {variant}, seed {seed}", flush=True)
        workdir = os.path.join(args.out, "runs", name, slug(variant) + (f"/seed{seed}" if len(seeds) > 1 else ""))
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
    what = f"{next(iter(configs.values())).num_steps} steps, seeds {args.seeds}"
    print(write_table(rows, args.out, name, f"Ablations: {args.table} (cpu scale, {what})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
