"""Command-line entry point. Until the trainer lands, it plays trials with baseline policies.

    python -m metarl_jax.main --env=game:GuessTheNumber-v0-hard --num_trials=256

prints the per-episode success table of the random and oracle policies on multi-episode trials (ORBIT's
step cap: 3 x turns per episode) and, with ``--workdir``, writes it as markdown and JSON.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

_ENVS = flags.DEFINE_list("env", ["game:GuessTheNumber-v0-hard", "maze", "game:Mastermind-v0-random"], "Env ids to play.")
_POLICIES = flags.DEFINE_list("policy", ["random", "oracle"], "Baseline policies to play.")
_NUM_TRIALS = flags.DEFINE_integer("num_trials", 256, "Trials per (env, policy).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_WORKDIR = flags.DEFINE_string("workdir", None, "If set, write success_table.md and success_table.json here.")


def main(argv):
    del argv
    from metarl_jax.play import play_baselines

    rows, table = play_baselines(_ENVS.value, _POLICIES.value, _NUM_TRIALS.value, _SEED.value)
    print(table)
    if _WORKDIR.value:
        os.makedirs(_WORKDIR.value, exist_ok=True)
        with open(os.path.join(_WORKDIR.value, "success_table.md"), "w") as f:
            f.write(table + "\n")
        with open(os.path.join(_WORKDIR.value, "success_table.json"), "w") as f:
            json.dump([r.as_dict() for r in rows], f, indent=2)


if __name__ == "__main__":
    app.run(main)
