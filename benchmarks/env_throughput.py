"""Env steps per second: our jit(vmap) text games vs GEM's Python games, side by side on this machine.

    python benchmarks/env_throughput.py                       # all games both libraries have
    python benchmarks/env_throughput.py --games=game:GuessTheNumber-v0-hard --batch=4096

Ours: a batch of ``--batch`` envs stepped inside one ``jit(lax.scan)`` with uniformly random actions, gymnax
auto-reset, and the observation rendered to token ids by the codec (built-in word vocabulary). We also time
the multi-episode trial wrapper. The peer: GEM's env for the same game, stepped one env at a time in Python
with random action strings (the loop of the ORBIT/rLLM pipeline), timed three ways: returning strings only,
plus tokenizing each observation with a byte-level BPE ``transformers`` tokenizer (the Qwen scheme, trained
locally), and plus our word tokenizer in Python. Ratios are ours / peer. Results go to
``benchmarks/results/env_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from metarl_jax import envs
from metarl_jax.text import Codec, HFTokenizer, WordTokenizer
from metarl_jax.text.tiny import make_bpe_tokenizer


def gem_env(env_id: str, ours):
    """GEM's env for one of our ids, with the same settings; secrets are drawn by GEM itself."""
    from gem.envs.game_env import guess_the_number, mastermind, minesweeper, wordle

    if env_id.startswith("game:GuessTheNumber"):
        return guess_the_number.GuessTheNumberEnv(ours.low, ours.high, ours.default_max_turns)
    if env_id == "game:Mastermind-v0-random":
        return mastermind.MastermindEnv(code_length=3, num_numbers=6, duplicate_numbers=False, max_turns=3)
    if env_id == "game:Minesweeper-v0-only-reveal":
        return minesweeper.MinesweeperEnv(rows=5, cols=5, num_mines=5, max_turns=8)
    if env_id == "game:Wordle-v0-hard":
        # GEM's constructor downloads an nltk corpus; build it by hand with our word list instead.
        from metarl_jax.envs.words import load_words

        env = wordle.WordleEnv.__new__(wordle.WordleEnv)
        env.word_length, env.only_real_words, env.max_turns, env._is_random = 5, True, 10, False
        env.all_words = load_words(5)
        env.reset()
        return env
    raise KeyError(env_id)


PEER_GAMES = ["game:GuessTheNumber-v0-hard", "game:Mastermind-v0-random", "game:Minesweeper-v0-only-reveal", "game:Wordle-v0-hard"]


def time_ours(env, params, codec, batch: int, steps: int, repeats: int, trial: bool) -> float:
    """Env steps per second of ``batch`` envs, tokens rendered, over ``repeats`` compiled scans of ``steps``."""
    step = env.step_env if trial else env.step  # the trial runs to its cap; games auto-reset

    @jax.jit
    def run(keys, state):
        def body(carry, t):
            keys, state = carry
            keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
            actions = jax.vmap(lambda k: jax.random.randint(k, (), 0, env.num_actions))(keys)
            out = jax.vmap(step, in_axes=(0, 0, 0, None))(keys, state, actions, params)
            obs, state = out[0], out[1]
            tokens, lengths = jax.vmap(codec.tokens)(obs)
            return (keys, state), lengths.sum() + tokens[:, -1].sum()

        (keys, state), check = jax.lax.scan(body, (keys, state), jnp.arange(steps))
        return keys, state, check.sum()

    keys = jax.random.split(jax.random.PRNGKey(0), batch)
    _, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    jax.block_until_ready(run(keys, state))  # compile
    best = 0.0
    for _ in range(repeats):
        _, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
        start = time.perf_counter()
        jax.block_until_ready(run(keys, state))
        best = max(best, batch * steps / (time.perf_counter() - start))
    return best


def time_peer(peer, action_texts, encode, seconds: float) -> float:
    """Steps per second of one GEM env stepped in a Python loop (resets included, as in a rollout)."""
    rng = random.Random(0)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        obs, _ = peer.reset()
        if encode:
            encode(obs)
        done = False
        while not done:
            obs, _, terminated, truncated, _ = peer.step(rng.choice(action_texts))
            done = terminated or truncated
            if encode:
                encode(obs)
            n += 1
    return n / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--games", default=",".join(PEER_GAMES))
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=64, help="steps per compiled scan")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0, help="time per peer measurement")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "env_throughput.json"))
    args = p.parse_args(argv)

    word = WordTokenizer()
    results = []
    for env_id in args.games.split(","):
        trial, params = envs.make_trial(env_id)
        game = trial.env
        bpe_dir = make_bpe_tokenizer(list(trial.pieces) * 4, tempfile.mkdtemp(), vocab_size=1024)
        bpe = HFTokenizer(bpe_dir)
        ours_game = time_ours(game, params, Codec(game, word), args.batch, args.steps, args.repeats, trial=False)
        ours_trial = time_ours(trial, params, Codec(trial, word), args.batch, trial.total_step_cap, args.repeats, trial=True)
        peer = gem_env(env_id, game)
        texts = [game.action_text(i) for i in range(game.num_actions)]
        peer_raw = time_peer(peer, texts, None, args.seconds)
        peer_bpe = time_peer(peer, texts, bpe.encode, args.seconds)
        peer_word = time_peer(peer, texts, word.encode, args.seconds)
        row = {
            "env_id": env_id,
            "ours_steps_per_s": ours_game,
            "ours_trial_steps_per_s": ours_trial,
            "gem_steps_per_s": peer_raw,
            "gem_plus_bpe_tokenizer_steps_per_s": peer_bpe,
            "gem_plus_word_tokenizer_steps_per_s": peer_word,
            "ratio_vs_gem_plus_bpe": ours_game / peer_bpe,
            "ratio_vs_gem_plus_word": ours_game / peer_word,
            "ratio_vs_gem_strings_only": ours_game / peer_raw,
            "trial_ratio_vs_gem_plus_bpe": ours_trial / peer_bpe,
        }
        results.append(row)
        print(
            f"{env_id}: ours {ours_game:,.0f} steps/s (trial wrapper {ours_trial:,.0f}); GEM {peer_raw:,.0f} strings only, "
            f"{peer_bpe:,.0f} + BPE tokenizer, {peer_word:,.0f} + word tokenizer -> ratio "
            f"{row['ratio_vs_gem_plus_bpe']:.0f}x vs GEM+BPE, {row['ratio_vs_gem_plus_word']:.0f}x vs GEM+word, "
            f"{row['ratio_vs_gem_strings_only']:.1f}x vs GEM strings only",
            flush=True,
        )
    meta = {
        "batch": args.batch,
        "steps_per_scan": args.steps,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "python": sys.version.split()[0],
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
