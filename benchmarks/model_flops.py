"""Transformer forward and forward+backward FLOP/s, as a fraction of this machine's measured matmul peak.

    python benchmarks/model_flops.py                          # d=512, 8 layers, 1024 tokens, batch 1, float32
    python benchmarks/model_flops.py --batch=4 --precision=highest
    XLA_FLAGS=--xla_cpu_use_thunk_runtime=false python benchmarks/model_flops.py   # XLA flags pass through

The peak is measured in the same process: the best FLOP/s of a jitted float32 square matmul ``a @ b``
(``--peak-sizes``, default 1024, 2048, 3072), timed exactly like the model (compile first, then best of
``--repeats`` calls with ``block_until_ready``). The model is ``metarl_jax.models.Transformer`` (unchanged),
split with ``nnx.split`` so the jitted functions take the parameter state as an argument:

* forward: ``logits = model(tokens, positions)``;
* forward+backward: ``jax.grad`` w.r.t. the parameters of the mean next-token cross-entropy over the logits.

Model FLOPs are counted analytically (multiply-add = 2 FLOPs; elementwise ops, norms, softmax, RoPE and the
embedding gather are not counted), with B batch, T tokens per sequence, L layers, D hidden, H query heads,
K kv heads, E head dim, F intermediate, V vocab:

    projections  = 2 * B*T * L * (D*H*E + 2*D*K*E + H*E*D + 3*D*F)     # q, k, v, o, gate, up, down
    attention    = L * B * 2 * (2*T*T*H*E)                              # scores q.k and probs.v, FULL T x T
    lm_head      = 2 * B*T * D*V
    forward      = projections + attention + lm_head
    fwd+bwd      = 3 * forward                                          # backward = 2 x forward

The attention term counts the full T x T score matrix, not the causal half: the model computes all of it and
masks, so this is the work actually done. The analytic count is printed next to XLA's own estimate
(``jit(f).lower(...).compile().cost_analysis()['flops']``) as a cross-check; the ratios to peak use the
analytic count. ``--precision`` sets ``jax.default_matmul_precision`` (no effect on float32 CPU matmuls, which
are always full float32; kept to show it was tried). Results go to ``benchmarks/results/model_flops.json``.

Measured on a 2-core AMD EPYC (Zen 4) VM, JAX 0.10.2 CPU: peak ~210-220 GFLOP/s (n=1024 or 2048 best);
defaults give forward ~56-59% and forward+backward ~33-35% of it (target: >= 30%). Tried: ``--batch=2``
(fwd 60%, fwd+bwd 38%, ~2x run time), ``--precision=highest`` (no change beyond noise),
``XLA_FLAGS=--xla_cpu_use_thunk_runtime=false`` (fwd 55%, fwd+bwd 35%: noise). A default run takes ~35 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from metarl_jax.models.config import ModelConfig
from metarl_jax.models.transformer import Transformer


def analytic_flops(cfg: ModelConfig, batch: int, seq: int) -> dict:
    """The formula of the docstring, term by term."""
    d, h, k, e, f, v, L = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size,
                           cfg.vocab_size, cfg.num_layers)
    tokens = batch * seq
    matmul_params_per_layer = d * h * e + 2 * d * k * e + h * e * d + 3 * d * f
    projections = 2 * tokens * L * matmul_params_per_layer
    attention = L * batch * 2 * (2 * seq * seq * h * e)
    lm_head = 2 * tokens * d * v
    forward = projections + attention + lm_head
    return {
        "matmul_params_per_layer": matmul_params_per_layer,
        "projections": projections,
        "attention_full_TxT": attention,
        "lm_head": lm_head,
        "forward": forward,
        "fwd_bwd": 3 * forward,
    }


def xla_flops(compiled) -> float | None:
    """XLA's FLOP estimate of a compiled function, or None where the backend gives none."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def time_best(fn, args, repeats: int) -> float:
    """Best wall time of ``repeats`` calls of an already compiled ``fn``."""
    jax.block_until_ready(fn(*args))  # one untimed call after compiling (allocations, thread pool)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def measure_peak(sizes, repeats: int) -> dict:
    """Best FLOP/s over jitted float32 square matmuls n x n @ n x n (2 n^3 FLOPs each)."""
    rows = []
    for n in sizes:
        ka, kb = jax.random.split(jax.random.PRNGKey(n))
        a = jax.random.normal(ka, (n, n), jnp.float32)
        b = jax.random.normal(kb, (n, n), jnp.float32)
        fn = jax.jit(lambda a, b: a @ b).lower(a, b).compile()
        seconds = time_best(fn, (a, b), repeats)
        flops = 2.0 * n ** 3
        rows.append({"n": n, "flops": flops, "xla_flops": xla_flops(fn), "seconds": seconds,
                     "flop_per_s": flops / seconds})
        print(f"matmul {n}x{n} @ {n}x{n}: {seconds * 1e3:.1f} ms, {flops / seconds / 1e9:.1f} GFLOP/s", flush=True)
    best = max(rows, key=lambda r: r["flop_per_s"])
    return {"sizes": rows, "best_n": best["n"], "flop_per_s": best["flop_per_s"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-type", default="qwen3", choices=["qwen3", "llama"])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-sizes", default="1024,2048,3072")
    p.add_argument("--precision", default=None, help="jax.default_matmul_precision (e.g. highest, default)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "model_flops.json"))
    args = p.parse_args(argv)

    if args.precision:
        jax.config.update("jax_default_matmul_precision", args.precision)

    cfg = ModelConfig(
        model_type=args.model_type, vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=args.head_dim,
    )
    peak = measure_peak([int(n) for n in args.peak_sizes.split(",")], args.repeats)
    peak_fps = peak["flop_per_s"]
    print(f"peak: {peak_fps / 1e9:.1f} GFLOP/s (best of the matmul sizes, n={peak['best_n']})", flush=True)

    model = Transformer(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.float32, dtype=jnp.float32)
    graphdef, state = nnx.split(model)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (args.batch, args.seq), 0, cfg.vocab_size, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(args.seq, dtype=jnp.int32), (args.batch, args.seq))

    def forward(state, tokens, positions):
        logits, _ = nnx.merge(graphdef, state)(tokens, positions)
        return logits

    def loss(state, tokens, positions):
        logits = forward(state, tokens, positions)[:, :-1]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()

    grad = jax.grad(loss)
    formula = analytic_flops(cfg, args.batch, args.seq)
    results = {}
    for name, fn, flops in (("forward", forward, formula["forward"]), ("fwd_bwd", grad, formula["fwd_bwd"])):
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(state, tokens, positions).compile()
        compile_s = time.perf_counter() - t0
        seconds = time_best(compiled, (state, tokens, positions), args.repeats)
        xla = xla_flops(compiled)
        fps = flops / seconds
        results[name] = {
            "analytic_flops": flops, "xla_flops": xla, "xla_over_analytic": (xla / flops) if xla else None,
            "compile_s": compile_s, "seconds": seconds, "flop_per_s": fps, "fraction_of_peak": fps / peak_fps,
        }
        xla_txt = f"{xla / 1e9:.2f}" if xla else "n/a"
        print(
            f"{name}: {flops / 1e9:.2f} GFLOP analytic (XLA {xla_txt}), {seconds * 1e3:.1f} ms, "
            f"{fps / 1e9:.1f} GFLOP/s = {fps / peak_fps:.1%} of matmul peak {peak_fps / 1e9:.1f} GFLOP/s",
            flush=True,
        )

    meta = {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "python": sys.version.split()[0],
        "matmul_precision": args.precision,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "repeats": args.repeats,
    }
    out = {
        "meta": meta,
        "config": {**vars(cfg), "dtype": "float32", "param_dtype": "float32"},
        "batch": args.batch,
        "seq_len": args.seq,
        "tokens": args.batch * args.seq,
        "flops_formula": formula,
        "peak": peak,
        "results": results,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
