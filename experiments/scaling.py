"""ORBIT's gain (episode-3 minus episode-1 held-out success) against model size.

Commands::

    python experiments/scaling.py --scale cpu                     # from-scratch sizes, 2 CPU cores
    python experiments/scaling.py --scale paper --pretrained_dirs=/m/Qwen3-1.7B,/m/Qwen3-4B,/m/Qwen3-14B

``cpu``: from-scratch transformers of increasing width and depth (hidden 32 / 64 / 128), each meta-trained with
the README main run's setup (configs/default.py) for ``--steps`` steps; about 5 to 15 minutes per size.
``paper``: the local Qwen3 directories with ORBIT's settings (see table_in_context_learning.py).

Writes ``results/scaling_<scale>.{md,csv,png}`` (the per-episode table and plot) and prints the gain per size.
Expected result: a gain per size, as measured; ORBIT reports gains growing with size for Qwen3.
"""

from __future__ import annotations

import argparse
import os

from common import REPO, from_scratch, write_table  # experiments/ is on sys.path
from table_in_context_learning import paper_config

from metarl_jax import build, train
from metarl_jax.configs.default import get_config

CPU_SIZES = {  # ModelConfig overrides of the "tiny" preset
    "h32-l1": dict(hidden_size=32, intermediate_size=96, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16),
    "h64-l2": dict(),
    "h128-l2": dict(hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("cpu", "paper"), default="cpu")
    parser.add_argument("--pretrained_dirs", default="", help="comma-separated local Qwen3 directories (paper)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    args = parser.parse_args(argv)
    configs = {}
    if args.scale == "cpu":
        for name, overrides in CPU_SIZES.items():
            c = from_scratch(get_config("orbit"))  # the from-scratch main run, resized
            c.model.overrides = overrides
            c.num_steps, c.eval_every = args.steps, 0
            configs[name] = c
    else:
        dirs = [d for d in args.pretrained_dirs.split(",") if d]
        if not dirs:
            parser.error("--scale paper needs --pretrained_dirs (local Qwen3 directories; nothing is downloaded)")
        configs = {os.path.basename(d.rstrip("/")): paper_config("orbit", d) for d in dirs}
    for c in configs.values():
        build.build_run(c)  # check every config before training
    rows, gains = [], []
    for name, c in configs.items():
        print(f"== {name}", flush=True)
        run_dir = os.path.join(args.out, "runs", f"scaling_{args.scale}", name)
        for r in train.train_and_evaluate(c, run_dir, label=name).rows:
            rows.append(r)
            gains.append(f"{name:>12} {r.env_id:<32} episode 3 - episode 1 = {r.episode_rates[-1] - r.episode_rates[0]:+.3f}")
    print(write_table(rows, args.out, f"scaling_{args.scale}", f"ORBIT gain vs model size ({args.scale} scale)"))
    print("\n".join(gains))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
