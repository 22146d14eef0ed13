"""Multi-episode rollout throughput: our compiled rollout vs a PyTorch + GEM Python loop, same machine, same script.

    python benchmarks/rollout_throughput.py                                   # GuessTheNumber-hard, tiny, batch 32
    python benchmarks/rollout_throughput.py --batch=256   # ORBIT's batch (32 tasks x 8 rollouts); ~4 min on 2 cores
    python benchmarks/rollout_throughput.py --env=game:Mastermind-v0-random --batch=64 --preset=small
    python benchmarks/rollout_throughput.py --compact-text --context-len=1024   # configs/default.py's trial text
    python benchmarks/rollout_throughput.py --quick      # smoke run (< 1 min): batch 4, 1 repeat, JSON to the temp dir

The work, identical on both sides: ``--batch`` trials of one env, each a full multi-episode trial of the
env's ORBIT step cap (GuessTheNumber-hard: 3 episodes of 7 turns = 21 env steps; Mastermind: 3 x 3 = 9),
the same task in every episode of a trial, ORBIT's trial text (intro, ``[Episode k]`` header, rules repeated
each episode), our built-in word tokenizer, constrained decoding of the action text ``\\boxed{...}``
(``table.prefix_len`` forced tokens prefilled with the observation, ``table.decide_len`` sampled tokens, the
rest forced), temperature 1, a from-scratch model of ``--preset`` size with the *same weights* on both sides.

* **Ours**: ``jax.jit`` of task sampling + reset + :func:`metarl_jax.agents.rollout.rollout` (one ``lax.scan`` over
  the trial's turns; env, rendering and decoding inside it). The KV cache is preallocated at ``context_len``,
  by default the trial's worst case (4450 tokens for GuessTheNumber-hard with ORBIT's text), so nothing
  truncates; each prefill and decode call attends only to the used prefix of the cache, rounded up to one of
  16 to 32 buckets (``lax.switch``), on CPU in chunks of rows; observations longer than one prefill block
  run their remaining blocks in row groups, in place on their cache rows; the last layer runs its queries and
  MLP only for the token whose logits are sampled, and sampling projects onto the actions' tokens only.
  ``--context-len`` sets a smaller context, as the training configs do (configs/default.py: 640, compact
  text); truncated trials are then reported. Compile time is measured apart
  (``lower().compile()``); then ``--repeats`` calls, each with ``block_until_ready``, best and median reported.
* **Peer**: ``transformers.Qwen3ForCausalLM`` built from our weights (``hf_io.save_pretrained``), float32,
  default attention (sdpa), ``torch.inference_mode``, a ``DynamicCache`` (the ``cache`` / ``past_key_values``
  argument; it grows with the tokens actually written, padding included), driven by a
  Python loop over the turns around GEM's Python envs (``benchmarks/_peer.py``): each turn it tokenizes the
  B observations with the same word tokenizer, prefills them as one right-padded batch, samples the action
  tokens with the same trie mask (one decode call per sampled token), detokenizes, and steps each GEM env;
  episode boundaries reset the GEM env and restore the trial's secret. **The B trials are batched** in every
  forward (the fair choice; a per-trial loop would be B times slower still). One untimed warm-up rollout,
  then ``--repeats`` timed ones (everything included: GEM resets, tokenization, model, sampling, parsing).

Printed: per side, action tokens/s (every token of every action, forced ones included: what the policy
emits), env steps/s, all tokens processed/s (observation + action tokens), the peer's split between model
time and Python time, our compile time, and the ratios ours / peer. The observation texts differ (ours vs
GEM's wording, both word-tokenized), so observation token counts per trial are printed for both; the
"all tokens/s" ratio normalises for that. The mean trial return of each side is a sanity check only.
JSON goes to ``benchmarks/results/rollout_throughput.json`` (device, date, versions, config, figures).
XLA uses all cores; the peer gets the faster of 1 torch thread and all cores (``--torch-threads=0``, tried on
a warm-up rollout each; the choice is printed and recorded): on a loaded machine torch's multi-threaded small
ops can be 50-100x slower than one thread, which would inflate the ratio. On a GPU machine both sides run on
the GPU (torch on ``cuda`` when available), unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from flax import nnx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # benchmarks/: the shared helpers
sys.path.insert(0, os.path.dirname(HERE))  # a checkout works without `pip install -e .`
from _peer import GemTrials, TorchPeer, bench_meta, seed_everything, torch_qwen3_from_ours  # noqa: E402
from env_throughput import gem_env  # noqa: E402

from metarl_jax.agents.rollout import rollout  # noqa: E402
from metarl_jax.agents.sampler import Sampling  # noqa: E402
from metarl_jax.models.config import preset  # noqa: E402
from metarl_jax.models.transformer import Transformer  # noqa: E402
from metarl_jax.tasks import build_task  # noqa: E402
from metarl_jax.text import WordTokenizer  # noqa: E402

PEER_ENVS = ("game:GuessTheNumber-v0-hard", "game:Mastermind-v0-random")


def make_ours(task, graphdef, batch: int, temperature: float, top_p: float):
    """``play(params, key) -> Transcript``: ``batch`` tasks drawn from the task set, reset, rolled out (one jit)."""

    def play(params, key):
        k_pick, k_reset, k_roll = jax.random.split(key, 3)
        picks = jax.random.randint(k_pick, (batch,), 0, task.task_keys.shape[0])
        tasks = jax.vmap(lambda k: task.env.sample_task(k, task.env_params))(task.task_keys[picks])
        _, trials = jax.vmap(task.env.reset_to_task, in_axes=(0, 0, None))(jax.random.split(k_reset, batch), tasks, task.env_params)
        tr = rollout(graphdef, params, task, k_roll, trials, Sampling(temperature, top_p))
        action_tokens = tr.action_mask.sum()
        return dict(action_tokens=action_tokens, context_tokens=tr.length.sum(), env_steps=(tr.taken & ~tr.reflection).sum(),
                    returns=tr.rewards.sum(1).mean(), truncated=tr.truncated.sum())

    return jax.jit(play)


def time_ours(task, graphdef, params, batch: int, temperature: float, repeats: int) -> dict:
    t0 = time.perf_counter()
    compiled = make_ours(task, graphdef, batch, temperature, 1.0).lower(params, jax.random.PRNGKey(0)).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, jax.random.PRNGKey(1)))  # untimed: first-call allocations
    times, out = [], None
    for r in range(repeats):
        key = jax.random.PRNGKey(100 + r)
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(params, key))
        times.append(time.perf_counter() - start)
    out = {k: float(v) for k, v in jax.device_get(out).items()}
    if out["truncated"]:
        print(f"WARNING: {out['truncated']:.0f} of our trials were truncated (context full): fewer turns than the "
              "peer plays; rates are per token/step actually done. Raise --context-len (0 = worst case).", flush=True)
    return dict(compile_s=compile_s, seconds=times, counts=out)


def time_peer(peer: TorchPeer, make_trials, encode, turns: int, repeats: int, threads: int) -> dict:
    """Warm-up, then ``repeats`` timed rollouts. ``threads`` 0 gives the peer its best thread count: one warm-up
    rollout at 1 thread and one at every core, the faster kept (torch's multi-threaded small ops can be far
    slower than one thread, e.g. when other processes load the cores)."""
    import torch

    peer.rollout(make_trials(), encode, turns)  # untimed warm-up (torch's first calls allocate)
    candidates = sorted({1, os.cpu_count() or 1}) if threads == 0 else [threads]
    warmup = {}
    for n in candidates:
        torch.set_num_threads(n)
        start = time.perf_counter()
        peer.rollout(make_trials(), encode, turns)
        warmup[n] = time.perf_counter() - start
    torch.set_num_threads(min(warmup, key=warmup.get))
    times, counts = [], []
    for _ in range(repeats):
        trials = make_trials()
        start = time.perf_counter()
        c = peer.rollout(trials, encode, turns)
        times.append(time.perf_counter() - start)
        counts.append(c)
    return dict(seconds=times, counts=counts[int(np.argmin(times))], torch_threads=torch.get_num_threads(),
                warmup_seconds_by_threads=warmup)


def rates(seconds: float, action_tokens: float, env_steps: float, tokens: float) -> dict:
    return dict(seconds=seconds, action_tokens_per_s=action_tokens / seconds, env_steps_per_s=env_steps / seconds,
                tokens_per_s=tokens / seconds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default=PEER_ENVS[0], choices=PEER_ENVS)
    p.add_argument("--batch", type=int, default=32, help="trials per rollout (both sides)")
    p.add_argument("--preset", default="tiny", help="model preset (metarl_jax.models.config.PRESETS)")
    p.add_argument("--context-len", type=int, default=0,
                   help="our KV cache / context size; 0 (default) = the trial's worst case, which never truncates")
    p.add_argument("--compact-text", action="store_true",
                   help="configs/default.py's trial text: no intro, rules shown in the first episode only")
    p.add_argument("--repeats", type=int, default=3, help="timed rollouts per side")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--torch-threads", type=int, default=0,
                   help="the peer's torch threads; 0 (default): the faster of 1 and all cores, tried on a warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: batch 4, 1 repeat")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/rollout_throughput.json; "
                   "with --quick a file in the temp dir, so a smoke run never overwrites the results)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = min(args.batch, 4), 1
    if args.out is None:
        args.out = (os.path.join(tempfile.gettempdir(), "rollout_throughput_quick.json") if args.quick else
                    os.path.join(HERE, "results", "rollout_throughput.json"))

    import torch

    seed_everything(args.seed)
    tok = WordTokenizer()
    task = build_task(args.env, tok, split="train", seed=args.seed, num_tasks=512, intro=not args.compact_text,
                      repeat_opening=not args.compact_text, context_len=args.context_len)
    env, game = task.env, task.env.env
    cfg = preset(args.preset, tok.vocab_size)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(args.seed)))
    turns = task.budget.turns
    print(f"{args.env}: {turns} env steps per trial ({env.total_step_cap // game.default_max_turns} episodes of "
          f"{game.default_max_turns} turns), batch {args.batch}, preset {args.preset} ({cfg.hidden_size}d x "
          f"{cfg.num_layers} layers, vocab {cfg.vocab_size}), context {task.context_len}, action "
          f"{task.table.max_len} tokens ({task.table.prefix_len} forced prefix, {task.table.decide_len} sampled)", flush=True)

    ours = time_ours(task, graphdef, params, args.batch, args.temperature, args.repeats)
    oc = ours["counts"]
    print(f"ours: compile {ours['compile_s']:.1f} s, rollout {min(ours['seconds']) * 1e3:.1f} ms (best of {args.repeats})", flush=True)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = torch_qwen3_from_ours(graphdef, params, tempfile.mkdtemp(prefix="peer_qwen3_"), device)
    texts = [game.action_text(i) for i in range(game.num_actions)]
    peer = TorchPeer(hf, np.asarray(task.table.tokens), np.asarray(task.table.lengths), task.table.prefix_len,
                     task.table.decide_len, task.table.pad_id, texts, args.temperature, device, args.seed)
    intro = env._intro_text() if env.intro else ""
    make_trials = lambda: GemTrials(lambda: gem_env(args.env, game), args.batch, env.total_step_cap, intro,  # noqa: E731
                                    env.repeat_opening)
    peer_run = time_peer(peer, make_trials, tok.encode, turns, args.repeats, args.torch_threads)
    pc = peer_run["counts"]
    print(f"peer: rollout {min(peer_run['seconds']) * 1e3:.1f} ms (best of {args.repeats}; model {pc['model_s'] * 1e3:.1f} ms, "
          f"python/GEM {pc['python_s'] * 1e3:.1f} ms; torch threads {peer_run['torch_threads']}, warm-up seconds by "
          f"threads {', '.join(f'{n}: {s:.2f}' for n, s in peer_run['warmup_seconds_by_threads'].items())})", flush=True)

    ours_obs = oc["context_tokens"] - oc["action_tokens"]
    ours_rates = rates(min(ours["seconds"]), oc["action_tokens"], oc["env_steps"], oc["context_tokens"])
    peer_rates = rates(min(peer_run["seconds"]), pc["action_tokens"], pc["env_steps"], pc["obs_tokens"] + pc["action_tokens"])
    ratio = {k: ours_rates[k] / peer_rates[k] for k in ("action_tokens_per_s", "env_steps_per_s", "tokens_per_s")}

    rows = [("ours (JAX, jit rollout)", ours_rates, oc["action_tokens"], ours_obs, oc["returns"]),
            ("peer (PyTorch + GEM loop)", peer_rates, pc["action_tokens"], pc["obs_tokens"], pc["mean_return"])]
    print("\n| side | s / rollout | action tok/s | env steps/s | all tok/s | action tok | obs tok | mean return |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r, act, obs, ret in rows:
        print(f"| {name} | {r['seconds']:.3f} | {r['action_tokens_per_s']:,.0f} | {r['env_steps_per_s']:,.0f} | "
              f"{r['tokens_per_s']:,.0f} | {act:,.0f} | {obs:,.0f} | {ret:.2f} |")
    print(f"\nratio ours / peer: {ratio['action_tokens_per_s']:.1f}x action tokens/s, {ratio['env_steps_per_s']:.1f}x env "
          f"steps/s, {ratio['tokens_per_s']:.1f}x all tokens/s (compile {ours['compile_s']:.1f} s excluded)", flush=True)

    out = {
        "meta": bench_meta(torch_threads=peer_run["torch_threads"], torch_device=device,
                           torch_attn=getattr(hf.config, "_attn_implementation", None)),
        "config": {
            "env_id": args.env, "batch": args.batch, "preset": args.preset, "model": dict(vars(cfg)),
            "turns_per_trial": turns, "episodes": env.total_step_cap // game.default_max_turns,
            "turns_per_episode": game.default_max_turns, "context_len": task.context_len, "intro": env.intro,
            "repeat_opening": env.repeat_opening, "tokenizer": "word", "decoding": "constrained",
            "action_len": task.table.max_len, "prefix_len": task.table.prefix_len, "decide_len": task.table.decide_len,
            "temperature": args.temperature, "repeats": args.repeats, "quick": args.quick,
            "peer": "transformers Qwen3ForCausalLM (same weights), DynamicCache, batched over trials with right "
                    "padding + attention_mask, Python loop over turns around GEM envs",
        },
        "ours": {**ours_rates, "compile_s": ours["compile_s"], "all_seconds": ours["seconds"],
                 "median_seconds": statistics.median(ours["seconds"]), "obs_tokens": ours_obs, **oc},
        "peer": {**peer_rates, "all_seconds": peer_run["seconds"], "median_seconds": statistics.median(peer_run["seconds"]),
                 "torch_threads": peer_run["torch_threads"], "warmup_seconds_by_threads": peer_run["warmup_seconds_by_threads"],
                 **pc},
        "ratio_ours_over_peer": ratio,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
