"""A Flax NNX decoder-only transformer covering Qwen3 and Llama, with a functional KV cache.

Shapes: B batch, T tokens in this call, S cache slots, D hidden, H query heads, K kv heads, E head dim.

``model(tokens, positions, cache=None, token_mask=None) -> (logits, cache)``:

* without a cache, attention is causal over the T tokens of the call;
* with a cache (:func:`init_cache`), the T tokens are written at slots ``cache.length[b] ...`` of each row and
  attend to every valid earlier slot. The same code does chunked prefill (T > 1) and single-token decode
  (T = 1) under ``jit``, ``vmap`` and ``lax.scan``;
* ``token_mask`` (bool[B, T], default all True) marks padding: padded tokens take a slot but are never
  attended to, which supports left and ragged padding. ``positions`` are the RoPE positions (for a padded row,
  count only real tokens).

Numerics follow the ``transformers`` PyTorch reference (RMSNorm in float32, RoPE with the rotate-half
convention, softmax in float32), so logits match it to 1e-4 in float32.

The L decoder layers are one :class:`Block` whose variables are stacked on a leading layer axis (a kernel is
[L, in, out]) and run in a ``lax.scan`` (unrolled up to :data:`UNROLL_LAYERS` layers), so compile time does not
grow with depth. ``remat`` (:data:`REMAT_POLICIES`) recomputes each layer's activations in the backward pass of
the cache-free (teacher-forced) call. The attention kernels are in :mod:`metarl_jax.models.attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from metarl_jax.models.attention import (VISIBLE, apply_rope, attend_prefix, causal_attention, rope_tables,
                                        take_token)
from metarl_jax.models.config import ModelConfig
from metarl_jax.models.prompt import embed_tokens


@struct.dataclass
class KVCache:
    """A preallocated key/value cache.

    Attributes:
      k, v: [L, B, K, S, E], every layer's cached keys and values, heads-major per layer so that attention reads
        a prefix of the slots without a transpose. The layer scan carries them and writes each layer's new
        tokens in place (a scatter at layer i); attention reads layer i's slots straight from the stacked array.
      valid: bool[B, S], slots holding a real (non-padding) token.
      length: int32[B], slots used so far in each row (the next write position).
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    length: jax.Array

    @property
    def max_len(self) -> int:
        return self.k.shape[3]


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    """An empty cache for ``batch`` rows of up to ``max_len`` tokens."""
    shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), valid=jnp.zeros((batch, max_len), bool),
                   length=jnp.zeros((batch,), jnp.int32))


def matmul_rows(x, w):
    """``x @ w`` for x [..., in] and w [in, out], computed as one 2-D product over the flattened rows.

    The result equals ``x @ w``; the difference is speed on CPU: XLA lowers a product whose left side keeps its
    batch dims, and above all the weight gradient that contracts over two of them (B and T), to a slower path.
    Flattened, the tiny model's MLP forward plus backward ran ~3x faster on 2 cores (results/README.md).
    """
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


class Linear(nnx.Module):
    """``y = x @ kernel + bias``; kernel [in, out] (the transpose of a PyTorch weight)."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, rngs: nnx.Rngs, param_dtype, dtype):
        init = nnx.initializers.normal(0.02)
        self.kernel = nnx.Param(init(rngs.params(), (d_in, d_out), param_dtype))
        self.bias = nnx.Param(jnp.zeros((d_out,), param_dtype)) if bias else None
        self.dtype = dtype
        # Optional LoRA adapters (see metarl_jax.models.lora.add_lora).
        self.lora_a = self.lora_b = None
        self.lora_scale = 0.0

    def __call__(self, x):
        x = x.astype(self.dtype)
        y = matmul_rows(x, self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora_a is not None:
            y = y + self.lora_scale * matmul_rows(matmul_rows(x, self.lora_a[...].astype(self.dtype)),
                                                  self.lora_b[...].astype(self.dtype))
        return y

    def merged_kernel(self):
        """The kernel with any LoRA adapter folded in: [in, out], or [L, in, out] for stacked layers (each
        layer's own adapters folded into its kernel)."""
        if self.lora_a is None:
            return self.kernel[...]
        return self.kernel[...] + self.lora_scale * (self.lora_a[...] @ self.lora_b[...])


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x):
        """Normalised in float32, scaled by the weight, returned in x's dtype (bfloat16 compute stays bfloat16
        with float32 weights: a float32 result would turn the queries and keys, and the KV cache read with
        them, into float32)."""
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.weight[...] * y.astype(x.dtype)).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs, param_dtype, dtype):
        kw = dict(bias=cfg.attention_bias, rngs=rngs, param_dtype=param_dtype, dtype=dtype)
        self.q_proj = Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, **kw)
        self.k_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, **kw)
        self.v_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, **kw)
        self.o_proj = Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, **kw)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, param_dtype=param_dtype)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, param_dtype=param_dtype)
        else:
            self.q_norm = self.k_norm = None
        self.cfg = cfg

    def __call__(self, x, cos, sin, keys_fn, query_at=None):
        """x [B, T, D]; ``keys_fn(k, v) -> (k_all, v_all, mask, used, rows, layer)`` supplies the attended keys
        and values and the mask: without a cache, the call's own keys [B, T, K, E], the keys' visibility
        int32[B, T] (the token until which each key is seen, 0 for padding; attention is causal) and ``used``,
        ``rows`` and ``layer`` None; with a cache, the stacked
        cache [L, B', K, S, E] (this layer's new keys written), a function ``n -> bool[B, T, n]`` (the mask of
        the first n slots), ``used`` int32[]: no query attends past slot ``used - 1``, ``rows`` (int32[B] or
        None): the cache rows of the call's rows (None: the same), and ``layer`` int32[]: this layer's index.
        ``query_at`` (int32[B], cache only): every token's keys and values are computed, but only token
        ``query_at[b]`` of each row queries; the output is then [B, 1, D]."""
        cfg = self.cfg
        b, t, _ = x.shape
        k = self.k_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        v = self.v_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        if self.k_norm is not None:
            k = self.k_norm(k)
        k = apply_rope(k, cos, sin)
        k_all, v_all, mask, used, rows, layer = keys_fn(k, v)
        if query_at is not None:
            x, cos, sin = (take_token(a, query_at) for a in (x, cos, sin))
            mask = lambda n, full=mask: take_token(full(n), query_at)  # noqa: E731
            t = 1
        q = self.q_proj(x).reshape(b, t, cfg.num_heads, cfg.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        q = apply_rope(q, cos, sin)
        groups = cfg.num_heads // cfg.num_kv_heads
        q = q.reshape(b, t, cfg.num_kv_heads, groups, cfg.head_dim)
        if used is not None:  # a cache: attend only to the slots in use, rounded up to a bucket
            out = attend_prefix(q, k_all, v_all, mask, used, rows, layer)  # ``mask(n)``: the first n slots' mask
        else:  # one causal pass over the call's tokens; ``mask`` is the keys' visibility int32[B, T]
            out = causal_attention(q, k_all, v_all, mask > 0, mask)
        return self.o_proj(out.reshape(b, t, cfg.num_heads * cfg.head_dim))


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs, param_dtype, dtype):
        kw = dict(bias=cfg.mlp_bias, rngs=rngs, param_dtype=param_dtype, dtype=dtype)
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs, param_dtype, dtype):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.attn = Attention(cfg, rngs=rngs, param_dtype=param_dtype, dtype=dtype)
        self.post_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(cfg, rngs=rngs, param_dtype=param_dtype, dtype=dtype)

    def __call__(self, x, cos, sin, keys_fn, query_at=None):
        """x [B, T, D] -> [B, T, D], or [B, 1, D] with ``query_at`` (see :meth:`Attention.__call__`)."""
        attended = self.attn(self.input_norm(x), cos, sin, keys_fn, query_at)
        x = (x if query_at is None else take_token(x, query_at)) + attended
        return x + self.mlp(self.post_norm(x))


# A model of at most this many layers runs its layer scan fully unrolled: XLA then schedules the layers as
# one program, as a Python loop would (the tiny 2-layer model's train step is no slower than a loop); deeper
# models run a rolled scan, one traced layer body whatever the depth.
UNROLL_LAYERS = 4
# Rematerialisation policies of the cache-free pass, per layer (``jax.checkpoint``): "none" stores every
# activation the backward pass needs; "full" stores only each layer's input and recomputes the rest of the
# layer in the backward pass (least memory, one more forward pass); "dots" also stores the outputs of the
# projections (matmuls without batch dimensions), recomputing only the cheap elementwise ops, norms and
# attention (whose custom VJP stores only its output and softmax statistics either way); "nested" is "full"
# within groups of about sqrt(L) layers (:func:`remat_group_size`) and keeps only each group's input across the
# model: the backward pass reruns a group's forward to get its layers' inputs, then each layer's, so the update
# costs one more forward pass than "full" for L / g + g layer inputs instead of L (13 instead of 40 for 40
# layers).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "nested": jax.checkpoint_policies.nothing_saveable,
}


def remat_group_size(num_layers: int) -> int:
    """The layers per group of ``remat="nested"``: the divisor g of ``num_layers`` with the fewest layer inputs
    kept at once (num_layers / g + g), the smaller on a tie; 1 (plain "full") when only 1 and L divide L."""
    divisors = [g for g in range(2, num_layers) if num_layers % g == 0]
    return min(divisors, key=lambda g: (num_layers // g + g, g), default=1)


def stack_modules(modules):
    """One module of the type of ``modules`` (all alike) whose every variable holds theirs stacked on a new
    leading axis [L, ...]."""
    graphdef, first = nnx.split(modules[0])
    states = [first] + [nnx.split(m)[1] for m in modules[1:]]
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


def with_row_constraint(graphdef, params, constrain):
    """The graphdef of the model ``nnx.merge(graphdef, params)`` with ``constrain_rows = constrain`` (params may be
    abstract, ``jax.ShapeDtypeStruct`` leaves)."""
    model = nnx.merge(graphdef, params)
    model.constrain_rows = constrain
    return nnx.graphdef(model)


def layer_slice(state, i):
    """Layer ``i`` (int or int32[]) of a stacked layer state: every leaf [L, ...] -> [...]."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), state)


class Transformer(nnx.Module):
    """The causal LM. ``param_dtype`` stores the weights; ``dtype`` is the compute dtype.

    ``layers`` is one :class:`Block` whose variables are stacked over the L layers ([L, ...]); the layers run in
    a ``lax.scan`` (fully unrolled for at most :data:`UNROLL_LAYERS` layers). ``remat`` names the per-layer
    rematerialisation policy of the cache-free pass (a key of :data:`REMAT_POLICIES`; calls with a cache are
    inference and never rematerialise).

    ``constrain_rows`` (default None): a function applied to each layer's input [B, T, D] in the cache-free pass,
    e.g. a sharding constraint that keeps the rows on a mesh's data axis (:func:`with_row_constraint`). Under
    FSDP the weights and the rows are split over the same axis, and without it XLA may gather every row's
    activations for a matmul instead of the weight."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=jnp.float32,
                 remat: str = "none"):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat={remat!r} is not a rematerialisation policy; choose one of {sorted(REMAT_POLICIES)}")
        self.config = config
        self.dtype = dtype
        self.remat = remat
        self.constrain_rows = None
        self.embed = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (config.vocab_size, config.hidden_size), param_dtype))
        self.layers = stack_modules([Block(config, rngs=rngs, param_dtype=param_dtype, dtype=dtype)
                                     for _ in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        self.prompt = None  # optional prompt vectors, the virtual tokens vocab_size + i (metarl_jax.models.prompt)
        self.lm_head = None if config.tie_embeddings else Linear(
            config.hidden_size, config.vocab_size, bias=False, rngs=rngs, param_dtype=param_dtype, dtype=dtype
        )

    def __call__(self, tokens, positions, cache: KVCache | None = None, token_mask=None):
        """tokens, positions int32[B, T] -> (logits float32[B, T, V], updated cache or None)."""
        hidden, cache = self.hidden_states(tokens, positions, cache, token_mask)
        return self.logits(hidden), cache

    def logits(self, hidden, vocab=None):
        """Output logits float32[..., V] of final hidden states [..., D]; with ``vocab`` (int32[K] token ids)
        only those K columns, float32[..., K] (a cheap projection onto a small sub-vocabulary)."""
        if self.lm_head is None:
            weight = self.embed[...] if vocab is None else self.embed[...][vocab]
            return matmul_rows(hidden, weight.astype(self.dtype).T).astype(jnp.float32)
        if vocab is None:
            return self.lm_head(hidden).astype(jnp.float32)
        out = matmul_rows(hidden.astype(self.dtype), self.lm_head.merged_kernel()[:, vocab].astype(self.dtype))
        if self.lm_head.bias is not None:
            out = out + self.lm_head.bias[...][vocab]
        return out.astype(jnp.float32)

    def hidden_states(self, tokens, positions, cache: KVCache | None = None, token_mask=None, last_at=None,
                      rows=None, key_until=None):
        """Like ``__call__`` but returns the final (normed) hidden states [B, T, D] instead of logits, so a
        caller can project only the positions it needs (the vocabulary projection dominates memory).

        ``last_at`` (int32[B], with a cache): only token ``last_at[b]`` of each row is wanted; returns
        [B, 1, D]. The last layer still writes every token's keys and values to the cache, but its queries,
        attention output and MLP run for that one token: a prefill that needs one token's logits skips most of
        the last layer (the scan then runs the first L - 1 layers and the last one runs after it).

        ``rows`` (int32[B], distinct, with a cache of B' >= B rows): the call's rows are these rows of the cache
        (written at their ``cache.length``, which advances by T); the other cache rows are left as they are.
        A few rows of a large batch then run without copying their caches out and back.

        ``key_until`` (int32[B, T], without a cache): token j is attended to only by the tokens before token
        ``key_until[b, j]`` (see :func:`causal_attention`); None: by every later token."""
        if key_until is not None and cache is not None:
            raise ValueError("key_until applies to the causal pass without a cache (a cache hides slots with valid)")
        if last_at is not None and cache is None:
            raise ValueError("last_at needs a cache (a causal pass without one returns every token)")
        cfg = self.config
        b, t = tokens.shape
        token_mask = jnp.ones((b, t), bool) if token_mask is None else token_mask.astype(bool)
        x = embed_tokens(self.embed[...], None if self.prompt is None else self.prompt[...], tokens, self.dtype)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        layers_def, layers = nnx.split(self.layers)
        num_layers = cfg.num_layers
        unroll = num_layers <= UNROLL_LAYERS

        def scan(body, carry, xs, length):
            if length == 0:
                return carry
            return jax.lax.scan(lambda c, s: (body(c, s), None), carry, xs, length=length,
                                unroll=True if unroll else 1)[0]

        if cache is None:
            # The keys' visibility: until which token each is seen (0: padding, never).
            until = jnp.where(token_mask, VISIBLE if key_until is None else key_until, 0).astype(jnp.int32)

            def keys_fn(k, v):  # the call's own keys; causal_attention adds the causal part to their visibility
                return k, v, until, None, None, None

            def layer(x, params):
                if self.constrain_rows is not None:
                    x = self.constrain_rows(x)
                return nnx.merge(layers_def, params)(x, cos, sin, keys_fn)

            if self.remat != "none":  # a rolled scan already keeps XLA from merging the recomputation away
                layer = jax.checkpoint(layer, policy=REMAT_POLICIES[self.remat], prevent_cse=unroll)
            group = remat_group_size(num_layers) if self.remat == "nested" and not unroll else 1
            if group > 1:  # a scan over groups of layers, each group's scan rematerialised as a whole
                grouped = jax.tree.map(lambda a: a.reshape(num_layers // group, group, *a.shape[1:]), layers)
                group_scan = jax.checkpoint(lambda x, params: scan(layer, x, params, group),
                                            policy=REMAT_POLICIES["nested"], prevent_cse=False)
                return self.norm(scan(group_scan, x, grouped, num_layers // group)), None
            return self.norm(scan(layer, x, layers, num_layers)), None

        slots = jnp.arange(cache.max_len)
        length = cache.length if rows is None else cache.length[rows]  # [B]: where this call writes
        valid = jax.vmap(lambda v, m, i: jax.lax.dynamic_update_slice(v, m, (i,)))(
            cache.valid if rows is None else cache.valid[rows], token_mask, length)
        query_slot = length[:, None] + jnp.arange(t)[None, :]  # [B, T]
        def mask(n):  # [B, T, n]: real tokens at or before each query's slot, among the first n slots
            return valid[:, None, :n] & (slots[None, None, :n] <= query_slot[:, :, None])

        used = jnp.max(length) + t  # every query's keys lie in slots [0, used)

        def write(c, u, i):
            """The stacked cache c [L, B', K, S, E] with this call's keys u [B, T, K, E] at layer i."""
            if rows is None:  # row b at slots length[b] ...: one window [K, T, E] per row, clamped into the cache
                starts = jnp.stack([jnp.full((b,), i, jnp.int32), jnp.arange(b, dtype=jnp.int32), length], axis=1)
                dims = jax.lax.ScatterDimensionNumbers(update_window_dims=(1, 2, 3), inserted_window_dims=(0, 1),
                                                       scatter_dims_to_operand_dims=(0, 1, 3))
                return jax.lax.scatter(c, starts, jnp.swapaxes(u, 1, 2).astype(c.dtype), dims, indices_are_sorted=True,
                                       unique_indices=True, mode=jax.lax.GatherScatterMode.CLIP)
            return c.at[i, rows[:, None], :, query_slot].set(u.astype(c.dtype))  # the indexed slots: [B, T, K, E]

        def layer(carry, i, query_at=None):
            """Layer i (int32[] or int) over the carry (x, k, v), returning it with this layer's keys and values
            written; its parameters are indexed out of the stack here, so the last layer can run apart."""
            x, k_cache, v_cache = carry
            written = []

            def keys_fn(k, v):
                written.append((write(k_cache, k, i), write(v_cache, v, i)))
                return *written[0], mask, used, rows, i

            x = nnx.merge(layers_def, layer_slice(layers, i))(x, cos, sin, keys_fn, query_at)
            return x, *written[0]

        scanned = num_layers if last_at is None else num_layers - 1
        carry = scan(layer, (x, cache.k, cache.v), jnp.arange(scanned), scanned)
        if last_at is not None:
            carry = layer(carry, num_layers - 1, last_at)
        x, new_k, new_v = carry
        if rows is None:
            cache = KVCache(k=new_k, v=new_v, valid=valid, length=length + t)
        else:
            cache = KVCache(k=new_k, v=new_v, valid=cache.valid.at[rows].set(valid),
                            length=cache.length.at[rows].add(t))
        return self.norm(x), cache
