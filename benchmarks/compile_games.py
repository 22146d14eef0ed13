"""Compile time of the ORBIT train step against the number of games: one program per game vs one mixture.

    python benchmarks/compile_games.py                   # 1, 2 and 5 of ORBIT's train games, both layouts
    python benchmarks/compile_games.py --games=1,5 --layouts=mixture --rows=16 --out=/tmp/c16.json
    python benchmarks/compile_games.py --each            # also each of the five games alone

Setup: ``configs/tiny.py`` (the tiny from-scratch model, 2 tasks x 2 rows, GEM's text, constrained decoding,
the observation loss) with ``train_tasks`` = the first N of ORBIT's five training games (rock-paper-scissors,
Minesweeper, Hangman, Wordle, Blackjack; their registry turns and step caps). Two layouts:

* ``per-game`` (``mix_games=False``): every game's rollout and update are traced apart inside the step, so the
  program holds N copies of the model's rollout and update, each of ``--rows`` rows;
* ``mixture`` (``mix_games=True``): one :class:`~metarl_jax.envs.mixture.GameMixture` whose batch of ``--rows``
  rows mixes the games, one rollout and one update whatever N.

The row count shapes the program too (on CPU, cached attention runs in chunks of 8 rows, plus one for a
remainder), so compare layouts at the same ``--rows``.

Each (N, layout) runs in a fresh subprocess (no compile cache): trace + lower seconds, XLA compile seconds, and
the first step's run seconds. The ratio to N = 1 is printed per layout. JSON goes to
``benchmarks/results/compile_games.json``. The peer is the same step built per game: the ratio of the two
layouts at the same N is the gain. (A one-game mixture is the same program as one game; N = 1 runs once.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAMES = ["rockpaperscissors", "game:Minesweeper-v0-only-reveal", "game:Hangman-v0-easy", "game:Wordle-v0-hard",
         "game:Blackjack-v0"]


def measure(num_games: int, mixture: bool, rows: int = 4, game: int | None = None) -> dict:
    """Builds the step for the first ``num_games`` games (or for game number ``game`` alone) and times its
    trace + lower, compile and first run."""
    import jax

    from metarl_jax import build
    from metarl_jax.configs.tiny import get_config
    from metarl_jax.algos.grpo import init_train_state, make_train_step

    config = get_config("orbit")
    games = GAMES[:num_games] if game is None else [GAMES[game]]
    config.train_tasks = [dict(env_id=g) for g in games]
    config.mix_games = mixture
    config.answer_coef = 0.0  # not every game has an answer action
    config.num_tasks = rows // config.group_size  # rows per program: per env (per-game), per mixture (mixture)
    run = build.build_run(config)
    state = init_train_state(run.model_state, run.optimizer)
    step = jax.jit(make_train_step(run.graphdef, run.train_tasks, run.optimizer, run.hyper), donate_argnums=0)
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    lowered = step.lower(state, key)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out, metrics = compiled(state, key)
    jax.block_until_ready(metrics)
    t3 = time.perf_counter()
    return dict(games=len(games), names=games, layout="mixture" if mixture else "per-game", rows=config.num_tasks * config.group_size
                * (1 if mixture else num_games), lower_s=t1 - t0, compile_s=t2 - t1, first_run_s=t3 - t2,
                total_s=t3 - t0, context_len=[t.context_len for t in run.train_tasks])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", default="1,2,5", help="numbers of games (the first N of ORBIT's five)")
    parser.add_argument("--layouts", default="per-game,mixture")
    parser.add_argument("--rows", type=int, default=4, help="rows per program (tasks x 2 rollouts): per env in "
                        "the per-game layout, per mixture in the mixture layout (the tiny config: 2 x 2)")
    parser.add_argument("--each", action="store_true", help="also time each of the five games alone (one-game "
                        "programs differ with the game's text and context lengths)")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: one measurement, print JSON
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "compile_games.json"))
    args = parser.parse_args(argv)
    if args.one:
        game = int(args.one[2])
        print("RESULT " + json.dumps(measure(int(args.one[0]), args.one[1] == "mixture", args.rows,
                                             None if game < 0 else game)), flush=True)
        return 0
    runs = []  # (number of games, layout, the one game's index or -1 for the first N)
    for n in (int(x) for x in args.games.split(",")):
        for layout in args.layouts.split(","):
            if not (n == 1 and layout == "mixture" and "per-game" in args.layouts):  # else the same program
                runs.append((n, layout, -1))
    if args.each:
        runs += [(1, "per-game", g) for g in range(1, len(GAMES))]  # the first game alone is N = 1 above
    rows = []
    for n, layout, game in runs:
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), layout, str(game), f"--rows={args.rows}"],
                              capture_output=True, text=True,
                              cwd=REPO, env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{n} games, {layout}: failed")
        rows.append(json.loads(line[0][len("RESULT "):]))
        r = rows[-1]
        name = f" ({r['names'][0]})" if n == 1 else ""
        print(f"{n} game(s){name}, {layout:8s}: lower {r['lower_s']:6.1f} s, compile {r['compile_s']:6.1f} s, "
              f"first run {r['first_run_s']:5.1f} s, total {r['total_s']:6.1f} s", flush=True)
    base = next((r for r in rows if r["games"] == 1), None)
    if base:
        print("\n| games | layout | rows / step | trace + lower s | compile s | first run s | total s | total / 1 game |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            r["ratio_to_one_game"] = r["total_s"] / base["total_s"]
            games = f"1 ({r['names'][0]})" if r["games"] == 1 else str(r["games"])
            print(f"| {games} | {r['layout']} | {r['rows']} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | "
                  f"{r['first_run_s']:.1f} | {r['total_s']:.1f} | {r['ratio_to_one_game']:.2f}x |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    import jax

    with open(args.out, "w") as f:
        json.dump(dict(device=str(jax.devices()[0].device_kind), date=time.strftime("%Y-%m-%d"), cpus=os.cpu_count(),
                       rows_per_program=args.rows, results=rows), f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
