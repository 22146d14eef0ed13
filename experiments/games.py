"""ORBIT beyond GuessTheNumber: the main run's recipe on other games of the suite, against single-episode RL,
RL^2, the classical online learner where one applies, and random play.

For each game and seed: the imitation prior (a scripted player who reasons inside each episode only,
``baselines.players.episode_player``, on independent games back to back), then ORBIT and single-episode RL from
that prior with the same budget and losses as the README's main run (no answer loss: nothing the policy does not
see). RL^2 (a GRU trained with PPO on the same multi-episode trials), the classical learner and random play are
measured on the same held-out tasks. Rows pool the seeds (95% Student-t intervals over seeds).

Command (2 CPU cores; the wall time of every run is printed and recorded in the table's JSON)::

    python experiments/games.py --seeds 0,1,2
    python experiments/games.py --games mastermind --seeds 0     # one game, one seed

Writes ``results/games.{md,csv,json,png}`` and ``results/games_per_seed.json``; runs live under
``results/runs/games/<game>/seed<k>/`` and are reused (resumed, or reported again when finished) on a rerun.
Training per seed on 2 cores (2026-12-06/07): Mastermind 14 minutes, Mastermind two digits 16 (19 with 4 turns),
Hangman 25, Wordle 19, Blackjack 23, plus 1 to 4 for RL^2 and the other baselines.

Expected result (seed 0, held-out episode 1 / 2 / 3 success): Hangman, ORBIT 0.453 / 0.566 / 0.582 against
single-episode RL 0.449 / 0.461 / 0.457 from the same prior; two-digit Mastermind with 4 turns, ORBIT 0.305 / 0.406
/ 0.422 against 0.141 / 0.133 / 0.137 (seed 2 alike; seed 1's ORBIT collapsed to a fixed guess sequence). No gain
on ORBIT's Mastermind, two-digit Mastermind with 3 turns and Wordle (the prior does not learn to win them more often
than random play), nor on Blackjack (ORBIT 0.324 / 0.293 / 0.316, single-episode RL 0.246 / 0.305 / 0.316).
Details: results/README.md ("Beyond GuessTheNumber").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from common import REPO, play_policy_rows, pool_seeds, write_table  # experiments/ is on sys.path
from table_in_context_learning import rl2_rows

from metarl_jax import build, train
from metarl_jax.configs.default import get_config, task
from metarl_jax.prior import rl_phase, train_prior

# game -> (env id, turns per episode, training context, held-out context), in tokens. Three episodes a trial; the
# turns leave room above the scripted player's first episode (results/README.md gives its success rates). The
# held-out context holds three full episodes, so that no policy's episode 3 is cut off by the context (ORBIT's
# truncation); training keeps it where it binds only on long trials.
GAMES = {
    "mastermind": ("game:Mastermind-v0-random", 3, 160, 160),  # ORBIT's held-out setting
    "mastermind_two_digits": ("game:Mastermind-v0-two-digits", 3, 160, 160),  # 30 codes instead of 120
    "mastermind_two_digits_4_turns": ("game:Mastermind-v0-two-digits", 4, 208, 224),  # the prior's teacher wins 0.71
    "hangman": ("game:Hangman-v0-easy", 10, 320, 416),  # ORBIT's training setting
    "wordle": ("game:Wordle-v0-hard", 3, 192, 192),  # ORBIT: 10 turns, which the scripted player always wins
    "blackjack": ("game:Blackjack-v0", 4, 256, 288),  # ORBIT's game; its episodes last 1 to 4 turns
}


def game_config(game: str, variant: str, seed: int):
    """The main run's config (configs/default.py) on one game: its terse text, the game as the only train and
    held-out env, and the default's batch of 8 tasks a step over one env instead of 4 over two."""
    env_id, turns, train_context, eval_context = GAMES[game]
    c = get_config(variant)
    c.seed, c.eval_every = seed, 0
    c.train_tasks = [task(env_id, turns, 3 * turns, context_len=train_context)]
    c.eval_tasks = [task(env_id, turns, 3 * turns, context_len=eval_context)]
    c.num_tasks = 8
    return c


def training_seconds(workdir: str) -> float:
    """The wall time a run spent training, from its log (``elapsed_seconds`` of its last training row; a resumed
    run's count starts again at the resume), 0 if it has none."""
    seconds = 0.0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            seconds = json.loads(line).get("elapsed_seconds", seconds)
    return seconds


def model_rows(game: str, seed: int, out: str, log=print) -> tuple[list, dict]:
    """The prior, ORBIT and single-episode RL rows of one game and seed (trained in ``out/runs/games/...``), and
    each run's training wall time in seconds."""
    base = os.path.join(out, "runs", "games", game, f"seed{seed}")
    configs = {label: game_config(game, variant, seed)
               for label, variant in (("ORBIT", "orbit"), ("single-episode RL", "single"))}
    for c in configs.values():
        build.build_run(c)  # every config is checked before anything trains
    t0 = time.time()
    model_dir, rows = train_prior(configs["ORBIT"], os.path.join(base, "imitation"))
    seconds = {"imitation prior": training_seconds(os.path.join(base, "imitation"))}
    log(f"  {game} seed {seed}: prior done at {time.time() - t0:.0f}s")
    for label, c in configs.items():
        workdir = os.path.join(base, "orbit" if label == "ORBIT" else "single_episode")
        evaluated = train.train_and_evaluate(rl_phase(c, model_dir), workdir, label=label).rows
        rows += [dataclasses.replace(r, policy=label) for r in evaluated]
        seconds[label] = training_seconds(workdir)
        log(f"  {game} seed {seed}: {label} done at {time.time() - t0:.0f}s")
    return rows, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", default=",".join(GAMES), help=f"comma-separated, from {sorted(GAMES)}")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--rl2_updates", type=int, default=300)
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    args = parser.parse_args(argv)
    games = [g for g in args.games.split(",") if g]
    unknown = sorted(set(games) - set(GAMES))
    if unknown:
        parser.error(f"unknown game(s) {unknown}; choose from {sorted(GAMES)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    per_seed: dict[int, list] = {s: [] for s in seeds}
    seconds: dict[str, dict] = {}  # "<game> seed <k>" -> run -> training wall seconds
    t0 = time.time()
    for game in games:
        c = game_config(game, "orbit", 0)
        entries = [dict(e) for e in c.eval_tasks]
        for seed in seeds:
            rows, seconds[f"{game} seed {seed}"] = model_rows(game, seed, args.out)
            per_seed[seed] += rows
            start = time.time()
            per_seed[seed] += play_policy_rows(entries, ["random", "classical"], c.eval_trials,
                                               c.num_episodes_reported, seed=seed)
            per_seed[seed] += rl2_rows(entries, c.eval_trials, c.num_episodes_reported, args.rl2_updates, seed)
            baselines = f"RL^2 ({args.rl2_updates} updates), random, classical"
            seconds[f"{game} seed {seed}"][baselines] = time.time() - start
            print(f"[{time.time() - t0:5.0f}s] {game} seed {seed} done", flush=True)
    rows = pool_seeds([per_seed[s] for s in seeds])
    name = "games" if set(games) == set(GAMES) else "games_" + "_".join(games)
    with open(os.path.join(args.out, f"{name}_per_seed.json"), "w") as f:
        json.dump({"seeds": {str(s): [r.as_dict() for r in rs] for s, rs in per_seed.items()},
                   "wall_seconds_on_2_cpu_cores": seconds}, f, indent=2)
    c = game_config(games[0], "orbit", 0)
    title = (f"ORBIT beyond GuessTheNumber (cpu scale, {c.pretrain.steps} imitation + "
             f"{c.num_steps - c.pretrain.steps} RL steps, seeds {args.seeds})")
    print(write_table(rows, args.out, name, title))
    print(f"this call: {time.time() - t0:.0f}s; training wall time per run: {json.dumps(seconds, indent=1)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
