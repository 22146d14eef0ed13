"""Does ORBIT's paper setting fit? AOT-compiles the whole train step for each Qwen3 size and reads XLA's memory.

    python benchmarks/paper_scale.py                               # 0.6B..14B, 1 device and 8 devices (FSDP)
    python benchmarks/paper_scale.py --sizes=1.7B --devices=1
    python benchmarks/paper_scale.py --sizes=14B --devices=8 --mode=fsdp --budget-gb=80
    python benchmarks/paper_scale.py --sizes=14B --devices=1 --trainable=full,lora,prompt --frozen-dtype=bfloat16 \
        --remat=nested --rollout-rows=2 --update-rows=1     # what trains: every weight, LoRA or a prompt

The step is the one ``configs/paper.py`` trains: GRPO over 32 tasks x 8 rollouts a step drawn from the mixture
of ORBIT's five training games (one program), chat format, free decoding (1,024 tokens a turn, the whole
vocabulary), a 32,768-token context, bfloat16 compute with float32 weights and AdamW state, layers scanned and
rematerialised in the update. ``--trainable=lora`` trains rank-16 adapters on every projection and ``prompt`` 64
prompt vectors, the rest frozen (stored as ``--frozen-dtype``), as ``config.trainable`` does. Nothing is run and no weights exist: the parameters are ``nnx.eval_shape``
abstractions of a Qwen3 of each size (``models.config.qwen3_config_json``), the tokenizer a byte-level BPE
trained on the games' text (``text.tiny.make_bpe_tokenizer``; Qwen's own tokenizer is not downloaded: its
151,936-token vocabulary is the model's), and the step is ``jax.jit(...).lower(abstract inputs).compile()``.

The row micro-batches come from ``metarl_jax.memory.plan_micro_batches`` with ``--budget-gb`` per device
(the H200's 141 GB on one device; 80 GB per device on 8). Each (size, devices) runs in its own process: 8 devices
are fake CPU devices (``--xla_force_host_platform_device_count``), so the memory figure is XLA's CPU
compiler's buffer assignment for the partitioned program, an estimate of an accelerator's (whose compiler
fuses and schedules differently). The program traced is the accelerator's: the CPU-only row chunks of the
model's attention (``models.attention.CPU_ROW_CHUNK``, ``CPU_CACHE_ROW_CHUNK``) are turned off.

Printed and written to ``benchmarks/results/paper_scale.json``: per size and mesh, the peak bytes per device
(``memory_analysis()``: arguments + outputs + temporaries - aliased), the parts, the chosen micro-batches,
trace + lower and compile seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_GAMES = ["rockpaperscissors", "game:Minesweeper-v0-only-reveal", "game:Hangman-v0-easy", "game:Wordle-v0-hard",
               "game:Blackjack-v0"]
ALL_GAMES = TRAIN_GAMES + ["maze", "game:Mastermind-v0-random"]


def build_tokenizer(out_dir: str) -> str:
    """A byte-level BPE with a ChatML template, trained on every game's text (the CPU stand-in for Qwen's)."""
    from metarl_jax import envs
    from metarl_jax.text.tiny import make_bpe_tokenizer

    texts = []
    for env_id in ALL_GAMES:
        env, _ = envs.make_trial(env_id)
        texts += list(env.pieces) + [env.action_text(a) for a in range(env.num_actions)]
    return make_bpe_tokenizer(texts, out_dir, vocab_size=1024)


def measure(size: str, devices: int, mode: str, budget_gb: float, tokenizer_dir: str, args) -> dict:
    """One AOT compile of the paper step; returns its figures."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from metarl_jax import memory, sharding
    from metarl_jax.algos.grpo import GRPOHyper, init_train_state, make_sharded_train_step
    from metarl_jax.models import Transformer, attention
    from metarl_jax.models.config import ModelConfig, qwen3_config_json
    from metarl_jax.models.lora import LoRAParam, add_lora
    from metarl_jax.models.prompt import PromptParam, add_prompt
    from metarl_jax.tasks import build_mixture, build_task
    from metarl_jax.text import HFTokenizer

    import transformers

    # The accelerator's program, not the CPU's: on CPU the model runs attention one chunk of rows at a time (a
    # loop over rows, which also keeps a data-parallel mesh from splitting them); accelerators take the batch.
    attention.CPU_ROW_CHUNK = attention.CPU_CACHE_ROW_CHUNK = 1 << 30
    tok = HFTokenizer(tokenizer_dir)
    raw = qwen3_config_json(size)
    cfg = ModelConfig.from_hf(transformers.Qwen3Config(**{k: v for k, v in raw.items()
                                                           if k not in ("architectures", "model_type", "torch_dtype")}))
    prompt_len = args.prompt_length if args.trainable == "prompt" else 0
    tasks = [build_task(dict(env_id=g), tok, split="train", seed=0, num_tasks=512, intro=True, repeat_opening=True,
                        context_len=args.context, free_tokens=args.free_tokens, chat=True, text="gem",
                        prompt_len=prompt_len)
             for g in TRAIN_GAMES]
    mix = build_mixture(tasks, tok)

    def make_model():
        weights = jnp.float32 if args.trainable == "full" else jnp.dtype(args.frozen_dtype)
        model = Transformer(cfg, rngs=nnx.Rngs(0), param_dtype=weights, dtype=jnp.bfloat16,
                            remat=args.remat)
        if args.trainable == "lora":
            add_lora(model, args.lora_rank, 2.0 * args.lora_rank, nnx.Rngs(1))
        if args.trainable == "prompt":
            add_prompt(model, prompt_len, nnx.Rngs(1))
        return model

    graphdef, params = nnx.split(nnx.eval_shape(make_model))
    trainable = {"full": None, "lora": LoRAParam, "prompt": PromptParam}[args.trainable]
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-6, b1=0.9, b2=0.999, weight_decay=0.01))
    state = jax.eval_shape(lambda p: init_train_state(p, optimizer, trainable=trainable), params)
    rows = args.num_tasks * args.group_size
    data = devices if mode in ("data", "fsdp") else 1
    state_bytes = memory.tree_bytes(state) // (devices if mode in ("fsdp", "tensor") else 1)
    plan = memory.plan_micro_batches(cfg, [mix], [mix], rows, rows, budget_bytes=int(budget_gb * 2**30),
                                     state_bytes=state_bytes, cache_dtype=jnp.bfloat16, data_devices=data,
                                     remat=args.remat)
    hp = GRPOHyper.orbit(num_tasks=args.num_tasks, group_size=args.group_size, temperature=0.6, top_p=1.0,
                   rollout_rows=args.rollout_rows or plan.rollout, update_rows=args.update_rows or plan.update)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    t0 = time.perf_counter()
    if devices == 1:
        mesh, mode = sharding.mesh_from_config("none"), "none"
    else:
        mesh = sharding.make_mesh(data=-1 if mode != "tensor" else 1, model=1 if mode != "tensor" else -1)
    step = make_sharded_train_step(graphdef, [mix], optimizer, hp, state, mesh, mode)
    lowered = step.lower(state, key)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    m = compiled.memory_analysis()
    parts = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0) for k in ("argument", "output", "temp", "alias", "generated_code")}
    peak = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
    return dict(size=size, devices=devices, mode=mode if devices > 1 else "single", budget_gb=budget_gb,
                layers=cfg.num_layers, params=int(sum(x.size for x in jax.tree.leaves(params))),
                trained_params=int(sum(x.size for x in jax.tree.leaves(state.params))), trainable=args.trainable,
                weights_dtype="float32" if args.trainable == "full" else args.frozen_dtype, state_bytes=memory.tree_bytes(state),
                rows=rows, context=args.context, free_tokens=args.free_tokens, rollout_rows=hp.rollout_rows,
                update_rows=hp.update_rows, planned_fits=plan.fits, peak_bytes_per_device=peak, parts=parts,
                lower_s=t1 - t0, compile_s=t2 - t1, backend=jax.default_backend(), remat=args.remat)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.6B,1.7B,4B,8B,14B")
    parser.add_argument("--devices", default="1,8", help="device counts (8: fake CPU devices)")
    parser.add_argument("--mode", default="fsdp", choices=("data", "fsdp", "tensor"), help="the mesh of >1 devices")
    parser.add_argument("--budget-gb", type=float, default=0.0, help="per device (0: 141 on 1 device, 80 on more)")
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--free-tokens", type=int, default=1024)
    parser.add_argument("--num-tasks", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--rollout-rows", type=int, default=0, help="0: from the budget")
    parser.add_argument("--update-rows", type=int, default=0, help="0: from the budget")
    parser.add_argument("--remat", default="full")
    parser.add_argument("--trainable", default="full", help="comma-separated, each what trains: full (every "
                        "weight), lora (LoRA adapters, the base frozen) or prompt (prompt vectors, the model frozen)")
    parser.add_argument("--frozen-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="the storage dtype of the frozen weights under lora and prompt (full: float32)")
    parser.add_argument("--lora-rank", type=int, default=16, help="with --trainable=lora (alpha = 2 x rank)")
    parser.add_argument("--prompt-length", type=int, default=64, help="with --trainable=prompt")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "paper_scale.json"))
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # internal: size devices budget tokenizer_dir
    args = parser.parse_args(argv)
    if args.one:
        size, devices, budget, tok_dir = args.one
        row = measure(size, int(devices), args.mode, float(budget), tok_dir, args)
        print("RESULT " + json.dumps(row), flush=True)
        return 0
    tok_dir = build_tokenizer(tempfile.mkdtemp(prefix="paper_scale_tok_"))
    rows = []
    trainables = args.trainable.split(",")
    if set(trainables) - {"full", "lora", "prompt"}:
        parser.error(f"--trainable: each of {trainables} must be full, lora or prompt")
    runs = [(int(d), size, t) for d in args.devices.split(",") for size in args.sizes.split(",") for t in trainables]
    for devices, size, trainable in runs:
        budget = args.budget_gb or (141.0 if devices == 1 else 80.0)
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        if devices > 1:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
        cmd = [sys.executable, __file__, "--one", size, str(devices), str(budget), tok_dir, f"--mode={args.mode}",
               f"--context={args.context}", f"--free-tokens={args.free_tokens}", f"--num-tasks={args.num_tasks}",
               f"--group-size={args.group_size}", f"--rollout-rows={args.rollout_rows}",
               f"--update-rows={args.update_rows}", f"--remat={args.remat}", f"--trainable={trainable}",
               f"--frozen-dtype={args.frozen_dtype}", f"--lora-rank={args.lora_rank}",
               f"--prompt-length={args.prompt_length}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stderr[-6000:], file=sys.stderr)
            raise SystemExit(f"{size} on {devices} device(s): failed")
        r = json.loads(line[0][len("RESULT "):])
        rows.append(r)
        print(f"Qwen3-{size:5s} {r['layers']} layers, {devices} device(s) {r['mode']:6s}, {trainable} "
              f"({r['trained_params'] / 1e6:.1f} M trained, weights {r['weights_dtype']}): peak "
              f"{r['peak_bytes_per_device'] / 1e9:7.1f} GB per device (budget {budget:.0f} GB), micro-batches rollout "
              f"{r['rollout_rows']} / update {r['update_rows']} of {r['rows']} rows, lower {r['lower_s']:.0f} s, "
              f"compile {r['compile_s']:.0f} s", flush=True)
    print("\n| model | trains | weights | layers | devices | peak GB / device | budget GB | peak / budget | rollout rows | "
          "update rows | lower s | compile s |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| Qwen3-{r['size']} | {r['trainable']} | {r['weights_dtype']} | {r['layers']} | {r['devices']} {r['mode']} | "
              f"{r['peak_bytes_per_device'] / 1e9:.1f} | {r['budget_gb']:.0f} | "
              f"{r['peak_bytes_per_device'] / (r['budget_gb'] * 1e9):.2f} | {r['rollout_rows']} | {r['update_rows']} | {r['lower_s']:.0f} | {r['compile_s']:.0f} |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(date=time.strftime("%Y-%m-%d"), cpus=os.cpu_count(), rows=rows), f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
