"""Attention kernels of :mod:`metarl_jax.models.transformer`: rotary position embeddings, cached attention over a
KV cache's used prefix and blockwise causal attention with a custom VJP for the teacher-forced pass.

Shapes: B batch, T query tokens, S (or n) key slots, H query heads, K kv heads, G = H / K query heads per kv head,
E head dim. Queries arrive grouped by kv head, ``q`` [B, T, K, G, E]; keys and values are [B, S, K, E].

* :func:`causal_attention`: one causal pass over the call's tokens; ``key_until`` (int32[B, S]) hides key j from
  the queries at or after ``key_until[b, j]`` (:data:`VISIBLE`: never hidden). The scores are computed in query
  blocks and recomputed in the backward pass, so no [B, H, T, T] array is kept for the gradient.
* :func:`attend_prefix` (used by the cached path): attention over the first ``n`` cache slots, the least
  :func:`cache_prefix_sizes` bucket that holds every query; on CPU in row chunks (:func:`map_row_chunks`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_tables(positions, head_dim: int, theta: float):
    """cos, sin float32[B, T, E] for integer ``positions`` [B, T] (rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """x [B, T, N, E] rotated by the tables [B, T, E]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x.astype(jnp.float32) * cos[:, :, None] + rotated.astype(jnp.float32) * sin[:, :, None]
    return out.astype(x.dtype)


def take_token(x, index):
    """x [B, T, ...] at token ``index[b]`` of each row: [B, 1, ...]."""
    return jnp.take_along_axis(x, index.reshape(-1, *([1] * (x.ndim - 1))), axis=1)


QUERY_BLOCK = 64
# Cached attention covers the first i/N of the slots, the least i that holds every query: N = 16, or up to 32
# for a long cache so that a bucket spans at most ~128 slots. Each bucket is a branch to compile: more buckets
# read fewer idle slots and compile longer (the measurement: benchmarks/RESULTS.md, "Constants of the code").
CACHE_BUCKETS = 16
MAX_CACHE_BUCKETS = 32
BUCKET_SLOTS = 128


def cache_prefix_sizes(slots: int) -> list[int]:
    """The static prefix lengths (ascending) that cached attention over ``slots`` slots may read."""
    buckets = min(max(CACHE_BUCKETS, slots // BUCKET_SLOTS), MAX_CACHE_BUCKETS)
    return sorted({-(-slots * i // buckets) for i in range(1, buckets + 1)})


# Rows per chunk of cached attention on CPU, and the independent parts each chunk is split into. The whole
# batch's scores [B, H, T, n] would stream through memory on every pass of the softmax; a chunk's stay in the
# cache. One chunk's ops form a chain of small ops that each run on one core; two independent chains keep both
# cores of a 2-core machine busy (the measurement: benchmarks/RESULTS.md, "Constants of the code").
CPU_CACHE_ROW_CHUNK = 8
CPU_CACHE_CHAINS = 2


def map_row_chunks(fn, xs, chunk: int, chains: int = 1):
    """``fn(*xs)`` computed over chunks of ``chunk`` rows (a ``lax.map``), each chunk's rows split into
    ``chains`` independent calls of ``fn`` that the runtime may run at once. ``xs``: arrays with a leading row
    axis B; ``fn`` maps rows to rows. Rows past the last whole chunk run as one more chunk; a chunk of at least B
    rows is one call."""
    def on_chunk(part):
        c = part[0].shape[0]
        if chains < 2 or c < chains:
            return fn(*part)
        cuts = [c * i // chains for i in range(chains + 1)]
        return jnp.concatenate([fn(*(x[s:e] for x in part)) for s, e in zip(cuts[:-1], cuts[1:])])

    b = xs[0].shape[0]
    if chunk >= b:
        return on_chunk(xs)
    whole = b // chunk * chunk
    outs = []
    if whole:
        out = jax.lax.map(on_chunk, tuple(x[:whole].reshape(b // chunk, chunk, *x.shape[1:]) for x in xs))
        outs.append(out.reshape(whole, *out.shape[2:]))
    if whole < b:
        outs.append(on_chunk(tuple(x[whole:] for x in xs)))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs)


def attend_prefix(q, k, v, mask_fn, used, cache_rows=None, layer=0):
    """Attention of q [B, T, K, G, E] over only the first ``n`` slots of layer ``layer`` (int32[]) of a stacked
    heads-major cache k, v [L, B', K, S, E] (``cache_rows`` int32[B]: the cache row of each query row; None:
    B' = B, row b is row b); the slots are read from the stacked array, never copied out as a whole layer:
    ``n`` is the least of :func:`cache_prefix_sizes` (multiples of S/16, or finer) that is >= ``used``,
    chosen at run time with ``lax.switch``;
    ``mask_fn(n)`` builds those slots' mask bool[B, T, n]. The slots cut off are masked for every query anyway,
    so the result is the same; a call early in a long preallocated context costs a fraction of a full-cache
    pass (a Python-loop generator's growing cache gets this for free). On CPU the rows run in chunks of
    :data:`CPU_CACHE_ROW_CHUNK`. Returns [B, T, K, G, E]."""
    b, t, kv, groups, e = q.shape
    slots = k.shape[3]
    sizes = cache_prefix_sizes(slots)
    rows = q.transpose(0, 2, 1, 3, 4).reshape(b, kv, t * groups, e)  # a kv head's queries: token-major, then group
    chunk = CPU_CACHE_ROW_CHUNK if jax.default_backend() == "cpu" else b

    def attend(rows, k, v, n):
        def on_rows(rows, k, v, mask, at=None):  # [C, K, R, E], [L, C|B', K, S, E] x2, bool[C, T, n], int32[C]
            if at is None:
                k, v = k[layer, :, :, :n], v[layer, :, :, :n]
            else:
                k, v = k[layer, at, :, :n], v[layer, at, :, :n]
            k, v = k.astype(rows.dtype), v.astype(rows.dtype)
            scores = jnp.einsum("ckrd,cksd->ckrs", rows, k).astype(jnp.float32)
            scores = scores / jnp.sqrt(e).astype(jnp.float32)
            scores = jnp.where(jnp.repeat(mask, groups, axis=1)[:, None], scores, jnp.finfo(jnp.float32).min)
            p = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
            out = jnp.einsum("ckrs,cksd->ckrd", p.astype(v.dtype), v).astype(jnp.float32)
            return (out / p.sum(axis=-1, keepdims=True)).astype(v.dtype)  # normalised after the product: one pass less

        mask = mask_fn(n)
        if chunk >= b:
            return on_rows(rows, k, v, mask, cache_rows)
        at = jnp.arange(b) if cache_rows is None else cache_rows  # chunks read their rows' slots [0, n) only
        return map_row_chunks(lambda r, m, at: on_rows(r, k, v, m, at), (rows, mask, at), chunk, CPU_CACHE_CHAINS)

    branches = [lambda rows, k, v, n=n: attend(rows, k, v, n) for n in sizes]
    if len(sizes) == 1:
        out = branches[0](rows, k, v)
    else:
        out = jax.lax.switch(jnp.searchsorted(jnp.asarray(sizes), used), branches, rows, k, v)
    return out.reshape(b, kv, t, groups, e).transpose(0, 2, 1, 3, 4)


# Rows per chunk of the causal pass on CPU: one chunk's scores then stay in the cache (a whole batch's
# [B, H, T, S] scores stream through memory several times per softmax; on 2 cores the mid-size update ran
# its attention at ~30 GFLOP/s that way). Accelerators take the whole batch in one chunk.
CPU_ROW_CHUNK = 1
# A key's ``key_until`` when every later token sees it.
VISIBLE = jnp.iinfo(jnp.int32).max


def causal_attention(q, k, v, key_valid, key_until=None):
    """Causal softmax attention over one call's tokens: query i attends to the valid keys j <= i.

    q [B, T, K, G, E]; k, v [B, T, K, E]; key_valid bool[B, T] -> [B, T, K, G, E], equal to plain masked
    softmax attention with ``tril & key_valid`` as the mask for every query that has a valid key (the output
    of a query without one, a padding token's, is unspecified and gets no gradient through the keys' scores).
    ``key_until`` (int32[B, T], optional): key j is seen only by the queries before token ``key_until[j]`` (a
    key hidden from the later tokens, as stripped thinking is; see ``Transcript.visible_until`` in
    :mod:`metarl_jax.agents.rollout`); the mask is then ``j <= i < key_until[j]``.

    Computed in query blocks of ``QUERY_BLOCK`` (block i reads keys up to its end only, which skips about half
    of the score matrix; past :data:`MAX_UNROLLED_QUERY_BLOCKS` blocks, a loop over blocks that read keys up to
    the end of their group of :func:`key_groups`, so the traced program stays bounded), over chunks of rows
    (:data:`CPU_ROW_CHUNK` on CPU), with a custom VJP that keeps only
    the output and the softmax statistics and recomputes each block's scores in the backward pass: the
    [B, H, T, T] probabilities are never stored, which saves memory and, on CPU, memory traffic. A block's
    queries of one kv head (its G query heads times its tokens) form the rows of one matrix, so every product
    is a plain batched matmul.
    """
    b = q.shape[0]
    until = jnp.where(key_valid, VISIBLE if key_until is None else key_until, 0).astype(jnp.int32)
    kv_first = (q.transpose(0, 2, 1, 3, 4), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), until)
    chunk = CPU_ROW_CHUNK if jax.default_backend() == "cpu" else b
    return map_row_chunks(_chunk_attention, kv_first, chunk).transpose(0, 2, 1, 3, 4)


def query_blocks(t: int) -> list[tuple[int, int]]:
    """The (start, end) token spans of the causal pass's query blocks over t tokens."""
    return [(s, min(s + QUERY_BLOCK, t)) for s in range(0, t, QUERY_BLOCK)]


# A causal pass over more query blocks than this (T > 2,048 tokens) loops over them instead of tracing each
# block: the blocks fall into KEY_GROUPS groups of consecutive blocks, and a group's blocks run in a
# ``lax.while_loop`` reading keys up to the group's end (its extra keys masked), so the program holds
# KEY_GROUPS block bodies whatever T (32,768 tokens would otherwise trace 512 blocks) for ~1/KEY_GROUPS more
# score FLOPs than the block-causal pass.
MAX_UNROLLED_QUERY_BLOCKS = 32
KEY_GROUPS = 8


def key_groups(t: int) -> list[tuple[int, int, int]]:
    """The looped causal pass's groups over t tokens: (first query block, number of blocks, key end)."""
    blocks = -(-t // QUERY_BLOCK)
    cuts = [blocks * i // KEY_GROUPS for i in range(KEY_GROUPS + 1)]
    return [(a, b - a, min(b * QUERY_BLOCK, t)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _looped(t: int) -> bool:
    return len(query_blocks(t)) > MAX_UNROLLED_QUERY_BLOCKS


def _pad_tokens(x, size: int, value=0):
    """x [C, K, T, ...] padded with ``value`` on axis 2 to ``size``."""
    return jnp.pad(x, [(0, 0), (0, 0), (0, size - x.shape[2])] + [(0, 0)] * (x.ndim - 3), constant_values=value)


def _allowed(query_token, key_until, n: int):
    """bool[C, 1, R, n]: query row r (token ``query_token[r]``) may attend to key j < n: j is at or before it
    and still visible there (``key_until`` int32[C, n])."""
    causal = (query_token[:, None] >= jnp.arange(n)[None, :])[None, None]
    return causal & (query_token[None, None, :, None] < key_until[:, None, None, :])


def _block_scores_at(q, k, key_until, s):
    """:func:`_block_scores` of the ``QUERY_BLOCK`` queries from token ``s`` (int32[]) of q [C, K, T', G, E]
    against every key of k [C, K, n, E] (key_until int32[C, n]); also returns those queries as rows
    [C, K, QUERY_BLOCK * G, E]."""
    c, kv, _, groups, e = q.shape
    rows = jax.lax.dynamic_slice_in_dim(q, s, QUERY_BLOCK, axis=2).reshape(c, kv, QUERY_BLOCK * groups, e)
    scores = jnp.einsum("ckrd,cksd->ckrs", rows, k).astype(jnp.float32) / jnp.sqrt(e).astype(jnp.float32)
    query_token = s + jnp.arange(QUERY_BLOCK * groups) // groups
    allowed = _allowed(query_token, key_until, k.shape[2])
    return jnp.where(allowed, scores, jnp.finfo(jnp.float32).min), allowed, rows


def _rows(x, s: int, e: int):
    """Queries s..e-1 of x [C, K, T, G, ...] as matrix rows [C, K, (e - s) * G, ...]."""
    return x[:, :, s:e].reshape(x.shape[0], x.shape[1], (e - s) * x.shape[3], *x.shape[4:])


def _block_scores(q, k, key_until, s: int, e: int):
    """float32[C, K, (e - s) * G, e]: scores of queries s..e-1 (rows: token-major, then query head) against
    keys 0..e-1, the disallowed ones set to the float32 minimum; and that mask, bool[C, 1, (e - s) * G, e].
    q [C, K, T, G, E], k [C, K, T, E]."""
    groups = q.shape[3]
    scores = jnp.einsum("ckrd,cksd->ckrs", _rows(q, s, e), k[:, :, :e]).astype(jnp.float32)
    scores = scores / jnp.sqrt(q.shape[-1]).astype(jnp.float32)
    query_token = s + jnp.arange((e - s) * groups) // groups
    allowed = _allowed(query_token, key_until[:, :e], e)
    return jnp.where(allowed, scores, jnp.finfo(jnp.float32).min), allowed


def _chunk_forward(q, k, v, key_until):
    """q [C, K, T, G, E], k, v [C, K, T, E] -> (out [C, K, T, G, E], row max and row sum of the exponentials,
    float32[C, K, T * G])."""
    c, kv, t, groups, _ = q.shape
    if _looped(t):
        return _chunk_forward_looped(q, k, v, key_until)
    outs, maxes, sums = [], [], []
    for s, e in query_blocks(t):
        scores, _ = _block_scores(q, k, key_until, s, e)
        top = scores.max(axis=-1, keepdims=True)
        p = jnp.exp(scores - top)
        total = p.sum(axis=-1, keepdims=True)
        outs.append(jnp.einsum("ckrs,cksd->ckrd", (p / total).astype(v.dtype), v[:, :, :e]))
        maxes.append(top[..., 0])
        sums.append(total[..., 0])
    out = jnp.concatenate(outs, axis=2).reshape(c, kv, t, groups, -1)
    return out, jnp.concatenate(maxes, axis=2), jnp.concatenate(sums, axis=2)


def _chunk_forward_looped(q, k, v, key_until):
    """:func:`_chunk_forward` as a loop over the query blocks of each of the :func:`key_groups` (the queries
    padded to whole blocks; the padding's rows are dropped). The loops are ``lax.while_loop`` s that write each
    block's rows into carried buffers (see :func:`_block_loop`)."""
    c, kv, t, groups, e = q.shape
    size = -(-t // QUERY_BLOCK) * QUERY_BLOCK
    padded = _pad_tokens(q, size)
    out = jnp.zeros((c, kv, size * groups, e), v.dtype)
    top = jnp.zeros((c, kv, size * groups), jnp.float32)
    total = jnp.ones((c, kv, size * groups), jnp.float32)
    for first, count, end in key_groups(t):
        def block(j, buffers, k=k[:, :, :end], v=v[:, :, :end], key_until=key_until[:, :end], first=first):
            out, top, total = buffers
            s = (first + j) * QUERY_BLOCK
            scores, _, _ = _block_scores_at(padded, k, key_until, s)
            block_top = scores.max(axis=-1, keepdims=True)
            p = jnp.exp(scores - block_top)
            block_total = p.sum(axis=-1, keepdims=True)
            block_out = jnp.einsum("ckrs,cksd->ckrd", (p / block_total).astype(v.dtype), v)
            put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x, s * groups, axis=2)  # noqa: E731
            return put(out, block_out), put(top, block_top[..., 0]), put(total, block_total[..., 0])

        out, top, total = _block_loop(count, block, (out, top, total))
    rows = t * groups
    return out[:, :, :rows].reshape(c, kv, t, groups, e), top[:, :, :rows], total[:, :, :rows]


def _block_loop(count: int, body, buffers):
    """``body(j, buffers)`` for j = 0..count-1 as a ``lax.while_loop``. Not a ``scan``: when the loop sits in a
    differentiated program (the backward pass of a rematerialised layer), JAX's partial evaluation of a scan
    moves the body's cotangent-free work (the causal and padding masks) into a loop of its own and stacks its
    results over the iterations as residuals (bool[blocks, heads, block rows, keys] per key group); a while loop
    has none, so nothing is stacked."""
    def step(carry):
        j, buffers = carry
        return j + 1, body(j, buffers)

    return jax.lax.while_loop(lambda carry: carry[0] < count, step, (jnp.int32(0), buffers))[1]


@jax.custom_vjp
def _chunk_attention(q, k, v, key_until):
    return _chunk_forward(q, k, v, key_until)[0]


def _chunk_attention_fwd(q, k, v, key_until):
    out, top, total = _chunk_forward(q, k, v, key_until)
    return out, (q, k, v, key_until, out, top, total)


def _chunk_attention_bwd(res, d_out):
    q, k, v, key_until, out, top, total = res
    groups = q.shape[3]
    scale = 1.0 / jnp.sqrt(q.shape[-1]).astype(jnp.float32)
    d_q = []
    d_k = jnp.zeros(k.shape, jnp.float32)
    d_v = jnp.zeros(v.shape, jnp.float32)
    # The softmax backward's row term: sum_j p_ij dp_ij = d_out_i . out_i.
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    delta = delta.reshape(*delta.shape[:2], -1)  # [C, K, T * G], rows as in _rows
    if _looped(q.shape[2]):
        return _chunk_attention_bwd_looped(q, k, v, key_until, d_out, top, total, delta)
    for s, e in query_blocks(q.shape[2]):
        rows = slice(s * groups, e * groups)
        scores, allowed = _block_scores(q, k, key_until, s, e)
        p = jnp.exp(scores - top[..., rows, None]) / total[..., rows, None]
        g = _rows(d_out, s, e)
        d_v = d_v.at[:, :, :e].add(jnp.einsum("ckrs,ckrd->cksd", p.astype(g.dtype), g).astype(jnp.float32))
        d_p = jnp.einsum("ckrd,cksd->ckrs", g, v[:, :, :e]).astype(jnp.float32)
        d_s = jnp.where(allowed, p * (d_p - delta[..., rows, None]) * scale, 0.0)  # masked scores are constants
        d_q.append(jnp.einsum("ckrs,cksd->ckrd", d_s.astype(k.dtype), k[:, :, :e]))
        d_k = d_k.at[:, :, :e].add(jnp.einsum("ckrs,ckrd->cksd", d_s.astype(q.dtype), _rows(q, s, e)).astype(jnp.float32))
    d_q = jnp.concatenate(d_q, axis=2).reshape(q.shape)
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None


def _chunk_attention_bwd_looped(q, k, v, key_until, d_out, top, total, delta):
    """The backward pass of :func:`_chunk_forward_looped`: a loop (:func:`_block_loop`) over each group's query
    blocks that accumulates the gradients of the group's keys and values and writes its queries'. The padding's
    rows have a zero output gradient (and a unit softmax sum, so that they stay finite), so they add nothing."""
    c, kv, t, groups, e = q.shape
    size = -(-t // QUERY_BLOCK) * QUERY_BLOCK
    scale = 1.0 / jnp.sqrt(e).astype(jnp.float32)
    padded, d_out = _pad_tokens(q, size), _pad_tokens(d_out, size)
    top, delta = _pad_tokens(top, size * groups), _pad_tokens(delta, size * groups)
    total = _pad_tokens(total, size * groups, 1.0)
    block_rows = QUERY_BLOCK * groups
    d_q = jnp.zeros((c, kv, size * groups, e), q.dtype)
    d_k = jnp.zeros(k.shape, jnp.float32)
    d_v = jnp.zeros(v.shape, jnp.float32)
    for first, count, end in key_groups(t):
        def block(j, grads, k=k[:, :, :end], v=v[:, :, :end], key_until=key_until[:, :end], first=first):
            d_q, d_k, d_v = grads  # d_k, d_v [C, K, end, E] float32: the group's keys' and values' gradients so far
            s = (first + j) * QUERY_BLOCK
            scores, allowed, rows = _block_scores_at(padded, k, key_until, s)
            at = lambda x: jax.lax.dynamic_slice_in_dim(x, s * groups, block_rows, axis=2)[..., None]  # noqa: E731
            p = jnp.exp(scores - at(top)) / at(total)
            g = jax.lax.dynamic_slice_in_dim(d_out, s, QUERY_BLOCK, axis=2).reshape(c, kv, block_rows, e)
            d_v = d_v + jnp.einsum("ckrs,ckrd->cksd", p.astype(g.dtype), g).astype(jnp.float32)
            d_p = jnp.einsum("ckrd,cksd->ckrs", g, v).astype(jnp.float32)
            d_s = jnp.where(allowed, p * (d_p - at(delta)) * scale, 0.0)  # masked scores are constants
            d_k = d_k + jnp.einsum("ckrs,ckrd->cksd", d_s.astype(rows.dtype), rows).astype(jnp.float32)
            block_d_q = jnp.einsum("ckrs,cksd->ckrd", d_s.astype(k.dtype), k).astype(d_q.dtype)
            return jax.lax.dynamic_update_slice_in_dim(d_q, block_d_q, s * groups, axis=2), d_k, d_v

        zeros = jnp.zeros((c, kv, end, e), jnp.float32)
        d_q, group_k, group_v = _block_loop(count, block, (d_q, zeros, zeros))
        d_k = d_k.at[:, :, :end].add(group_k)
        d_v = d_v.at[:, :, :end].add(group_v)
    d_q = d_q[:, :, :t * groups].reshape(q.shape)
    return d_q, d_k.astype(k.dtype), d_v.astype(v.dtype), None


_chunk_attention.defvjp(_chunk_attention_fwd, _chunk_attention_bwd)
