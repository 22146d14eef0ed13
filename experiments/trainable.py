"""What the meta-learner trains, on the CPU main task: full weights, LoRA adapters or a learned initial context.

Phase 1 trains the README's ORBIT run (``configs/default.py:orbit``) from scratch for ``--phase1`` steps and
exports it (``python -m metarl_jax.export``). Phase 2 starts every variant from that export
(``config.model.pretrained_dir``) and trains it for the README's budget (``--steps``, 1,000 GRPO steps) with ORBIT
again: ``full`` (every weight, the README's learning rate), ``lora`` (rank 8 adapters on every projection, the rest
frozen) and ``prompt`` (8 prompt vectors opening every trial, the model frozen), each at the learning rates given.
Every row is evaluated on the same held-out trials; "phase 1" is the starting point itself.

Command (2 CPU cores, about 35 minutes)::

    python experiments/trainable.py [--phase1 500] [--steps 1000] [--lora_lr 3e-3,1e-2] [--prompt_lr 1e-2,3e-2]

Writes ``results/trainable.{md,csv,json,png}``; runs live under ``results/runs/trainable/`` and are reused (a finished
run is reported again, an unfinished one resumes). One seed (``--seed``): the table's intervals are the runs' own
Wilson intervals over trials, not over seeds. The margins are whatever the runs measure (results/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from common import REPO, from_scratch, write_table  # experiments/ is on sys.path

from metarl_jax import build, train
from metarl_jax.configs.default import get_config
from metarl_jax.export import export


def phase2_variants(lora_lrs, prompt_lrs, full_lr) -> dict:
    """``{name: (trainable, learning rate)}`` of phase 2."""
    variants = {f"full (lr {full_lr:g})": ("full", full_lr)}
    variants.update({f"lora (lr {lr:g})": ("lora", lr) for lr in lora_lrs})
    variants.update({f"prompt (lr {lr:g})": ("prompt", lr) for lr in prompt_lrs})
    return variants


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase1", type=int, default=500, help="steps of the from-scratch full run (phase 1)")
    parser.add_argument("--steps", type=int, default=None, help="steps of each phase-2 run (default: the README's)")
    parser.add_argument("--lora_lr", default="1e-2", help="comma-separated learning rates of the LoRA runs")
    parser.add_argument("--prompt_lr", default="3e-2", help="comma-separated learning rates of the prompt runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    args = parser.parse_args(argv)
    runs = os.path.join(args.out, "runs", "trainable")

    first = from_scratch(get_config("orbit"))  # the setup results/trainable.* was recorded with
    first.seed, first.num_steps, first.eval_every = args.seed, args.phase1, 0
    phase2 = {}
    variants = phase2_variants([float(x) for x in args.lora_lr.split(",") if x],
                               [float(x) for x in args.prompt_lr.split(",") if x], first.optimizer.learning_rate)
    for name, (trainable, lr) in variants.items():
        c = from_scratch(get_config("orbit"))
        c.seed, c.eval_every, c.trainable = args.seed, 0, trainable
        c.num_steps = args.steps or c.num_steps
        c.optimizer.learning_rate = lr
        c.model.pretrained_dir = os.path.join(runs, "phase1_hf")
        phase2[name] = c
    build.build_run(first)  # the phase-2 configs are checked once phase 1 is exported

    print(f"== phase 1: {args.phase1} steps from scratch", flush=True)
    rows = [dataclasses.replace(r, policy=f"phase 1 ({args.phase1} steps, full)")
            for r in train.train_and_evaluate(first, os.path.join(runs, "phase1"), label="phase 1").rows]
    if not os.path.exists(os.path.join(runs, "phase1_hf", "model.safetensors")):
        export(os.path.join(runs, "phase1"), os.path.join(runs, "phase1_hf"))
    for name, c in phase2.items():
        print(f"== phase 2: {name}, {c.num_steps} steps", flush=True)
        evaluated = train.train_and_evaluate(c, os.path.join(runs, name.split(" ")[0] + "_" + f"{c.optimizer.learning_rate:g}"),
                                             label=name).rows
        rows += [dataclasses.replace(r, policy=f"+ {name}") for r in evaluated]
    title = (f"What the meta-learner trains (cpu scale, seed {args.seed}): phase 1 = {args.phase1} full steps from "
             f"scratch, then {next(iter(phase2.values())).num_steps} steps of each")
    print(write_table(rows, args.out, "trainable", title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
