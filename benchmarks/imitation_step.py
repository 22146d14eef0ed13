"""Cost of the imitation step (``config.pretrain``) against the RL step of the same run, measured in one process.

    python benchmarks/imitation_step.py            # the README main run's config (~3 min on 2 CPU cores)
    python benchmarks/imitation_step.py --quick    # smoke run (~1 min): 1 task x 2 rows per env, 2 calls

Setup: ``configs/default.py`` (both envs, 4 tasks x 8 rows each), built by ``metarl_jax.build.build_run`` and
stepped by ``metarl_jax.algos.grpo.make_train_step`` under ``jax.jit`` (state donated), as ``train_and_evaluate``
runs it: the imitation step (``players=``, the scripted player's trials with a new secret every episode) and
the RL step (the policy's own trials). Also, on GuessTheNumber-hard alone, the two rollouts measured apart: the
player's (the model does not run; :func:`metarl_jax.agents.rollout.rollout` with ``player=``) and the policy's
(sampled, the model runs every turn).

Printed and written (JSON, ``benchmarks/results/imitation_step.json`` by default, with device, date and
versions): compile seconds of each program (``lower().compile()``, excluded from the timings), the median
seconds per call of ``--steps`` calls after one warm-up (``block_until_ready``), and the ratios imitation step /
RL step and player rollout / policy rollout. The RL step is the peer: both run on the same machine in the same
process, so the ratios, not the seconds, are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)  # benchmarks/: the shared helpers
sys.path.insert(0, REPO)  # a checkout works without `pip install -e .`

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _peer import bench_meta  # noqa: E402
from train_step import compile_timed, median_seconds, play_fn  # noqa: E402

from metarl_jax import build  # noqa: E402
from metarl_jax.algos import grpo  # noqa: E402
from metarl_jax.configs.default import get_config  # noqa: E402


def timed_steps(step_fn, state, key, calls: int) -> tuple[float, float]:
    """``(compile seconds, median seconds per call)`` of a train step with its state donated."""
    step, compile_s = compile_timed(step_fn, state, key, donate=(0,))
    holder = {"state": state, "i": 0}

    def one():
        holder["i"] += 1
        holder["state"], _ = step(holder["state"], jax.random.fold_in(key, holder["i"]))
        return holder["state"]

    return compile_s, median_seconds(one, calls)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="timed calls per measurement (default 10; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 task x 2 rows per env, 2 calls")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    calls = args.steps or (2 if args.quick else 10)
    config = get_config("orbit")
    if args.quick:
        config.num_tasks, config.group_size, config.eval_trials = 1, 2, 1
    run = build.build_run(config)
    key = jax.random.PRNGKey(0)

    def init():  # a fresh state of its own per step function (the steps donate theirs)
        return grpo.init_train_state(jax.tree.map(jnp.copy, run.model_state), run.optimizer)

    imitation = grpo.make_train_step(run.graphdef, run.pretrain_tasks, run.optimizer, run.hyper, players=run.players)
    rl = grpo.make_train_step(run.graphdef, run.train_tasks, run.optimizer, run.hyper)
    imitation_compile, imitation_s = timed_steps(imitation, init(), key, calls)
    rl_compile, rl_s = timed_steps(rl, init(), key, calls)

    hard = next(i for i, t in enumerate(run.pretrain_tasks) if t.name.endswith("-hard"))
    rollouts = {}
    for name, task, player in (("player", run.pretrain_tasks[hard], run.players[hard]),
                               ("policy", run.train_tasks[hard], None)):
        play, compile_s = compile_timed(play_fn(run, run.hyper, task, player), run.model_state, key)
        seconds = median_seconds(lambda f=play: f(run.model_state, key), calls)[0]
        rollouts[name] = dict(compile_s=compile_s, seconds=seconds)

    result = dict(
        meta=bench_meta(), config=dict(num_tasks=config.num_tasks, group_size=config.group_size,
                                       envs=[t.name for t in run.train_tasks], calls=calls, quick=args.quick),
        imitation_step=dict(compile_s=imitation_compile, seconds=imitation_s),
        rl_step=dict(compile_s=rl_compile, seconds=rl_s), rollout_hard=rollouts,
        ratio_imitation_over_rl=imitation_s / rl_s,
        ratio_player_rollout_over_policy_rollout=rollouts["player"]["seconds"] / rollouts["policy"]["seconds"],
    )
    print(f"imitation step {imitation_s:.4f} s (compile {imitation_compile:.1f} s), RL step {rl_s:.4f} s "
          f"(compile {rl_compile:.1f} s): imitation / RL = {result['ratio_imitation_over_rl']:.2f}")
    print(f"GuessTheNumber-hard rollout: player {rollouts['player']['seconds']:.4f} s, policy "
          f"{rollouts['policy']['seconds']:.4f} s: player / policy = "
          f"{result['ratio_player_rollout_over_policy_rollout']:.3f}")
    out = args.out or (os.path.join(tempfile.gettempdir(), "imitation_step.json") if args.quick
                       else os.path.join(HERE, "results", "imitation_step.json"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
