"""LoRA adapters and the sampling utilities."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from metarl_jax.models import Transformer, preset
from metarl_jax.models.lora import LoRAParam, add_lora
from metarl_jax.models.sampling import process_logits, sample

TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 50, size=(2, 12)))
POS = jnp.broadcast_to(jnp.arange(12), (2, 12))


def loss_fn(model):
    logits, _ = model(TOKENS[:, :-1], POS[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, TOKENS[:, 1:]).mean()


@pytest.mark.slow
def test_lora_starts_as_the_base_model_and_trains_only_adapters():
    model = Transformer(preset("tiny", 50), rngs=nnx.Rngs(0))
    base_logits, _ = model(TOKENS, POS)
    base_params = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    add_lora(model, rank=4, alpha=8.0, rngs=nnx.Rngs(1))
    lora_logits, _ = model(TOKENS, POS)
    np.testing.assert_allclose(np.asarray(lora_logits), np.asarray(base_logits), atol=1e-6)
    adapters = jax.tree.leaves(nnx.state(model, LoRAParam))  # a and b of 7 projections, stacked over the layers
    assert len(adapters) == 2 * 7 and all(a.shape[0] == model.config.num_layers for a in adapters)

    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=LoRAParam)
    before = float(loss_fn(model))
    for _ in range(5):
        grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, LoRAParam))(model)
        optimizer.update(model, grads)
    assert float(loss_fn(model)) < before
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, after, base_params)  # base weights frozen


def test_lora_rejects_bad_arguments():
    model = Transformer(preset("tiny", 50), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rank must be >= 1"):
        add_lora(model, rank=0, alpha=1.0, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        add_lora(model, rank=2, alpha=1.0, rngs=nnx.Rngs(1), targets=("qkv",))


def test_sampling_respects_mask_top_p_and_temperature():
    logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    draw = jax.jit(jax.vmap(lambda k: sample(k, logits, temperature=1.0, top_p=0.7)))
    tokens, logps = draw(keys)
    freq = np.bincount(np.asarray(tokens), minlength=4) / len(keys)
    # top-p 0.7 keeps {0, 1} (0.5 + 0.3 >= 0.7), renormalised to 0.625 / 0.375.
    np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.015)
    np.testing.assert_allclose(np.exp(np.asarray(logps[tokens == 0])), 0.625, rtol=1e-5)
    mask = jnp.array([False, True, False, True])
    tokens, _ = jax.vmap(lambda k: sample(k, logits, mask=mask))(keys)
    assert set(np.unique(np.asarray(tokens))) <= {1, 3}
    greedy = process_logits(logits[None], temperature=0.0, mask=mask[None])
    assert int(jnp.argmax(greedy[0])) == 1 and float(jnp.exp(greedy).sum()) == pytest.approx(1.0)
    hot = jnp.exp(process_logits(logits, temperature=2.0))
    np.testing.assert_allclose(np.asarray(hot), np.asarray(jax.nn.softmax(logits / 2.0)), rtol=1e-5)


def test_save_pretrained_merges_lora(tmp_path):
    from metarl_jax.models import load_pretrained, save_pretrained

    model = Transformer(preset("tiny", 50), rngs=nnx.Rngs(0))
    add_lora(model, rank=2, alpha=4.0, rngs=nnx.Rngs(1))
    lora_b = model.layers.attn.q_proj.lora_b  # [L, rank, out]: make the adapters non-zero, each layer's its own
    lora_b.set_value(jnp.broadcast_to(0.05 * (1 + jnp.arange(lora_b.shape[0]))[:, None, None], lora_b.shape))
    save_pretrained(model, str(tmp_path))
    expected, _ = model(TOKENS, POS)
    got, _ = load_pretrained(str(tmp_path))(TOKENS, POS)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


@pytest.mark.parametrize("row_chunk", [pytest.param(1, marks=pytest.mark.slow), 2, 64])
@pytest.mark.parametrize("shape", [(3, 150, 2, 2, 8), (2, 40, 1, 3, 4)], ids=["3-blocks", "1-block"])
def test_causal_attention_matches_the_reference_and_its_gradient(monkeypatch, row_chunk, shape):
    """The blocked, row-chunked causal pass with its custom VJP equals plain masked softmax attention, output
    and gradients (q, k, v), on every query that has a valid key; ragged key masks, a padded start and rows that
    do not divide into the chunks included. The 1-block case is shorter than QUERY_BLOCK."""
    from metarl_jax.models import attention

    monkeypatch.setattr(attention, "CPU_ROW_CHUNK", row_chunk)
    b, t, kv, groups, e = shape
    kq, kk, kvv, km, kw = jax.random.split(jax.random.PRNGKey(t), 5)
    q = jax.random.normal(kq, (b, t, kv, groups, e))
    k, v = jax.random.normal(kk, (b, t, kv, e)), jax.random.normal(kvv, (b, t, kv, e))
    valid = (jax.random.uniform(km, (b, t)) > 0.3).at[0, :5].set(False)
    has_key = (jnp.cumsum(valid, axis=1) > 0)[:, :, None, None, None]  # queries 0..4 of row 0 have none
    weight = jax.random.normal(kw, q.shape) * has_key
    mask = jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :]

    def attend(q, k, v):  # plain masked softmax attention, the whole score matrix at once
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k) / jnp.sqrt(e)
        scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
        return jnp.einsum("bkgts,bskd->btkgd", jax.nn.softmax(scores, axis=-1), v)

    def reference(q, k, v):
        return (attend(q, k, v) * weight).sum()

    def blocked(q, k, v):
        return (attention.causal_attention(q, k, v, valid) * weight).sum()

    out = jax.jit(attention.causal_attention)(q, k, v, valid)
    np.testing.assert_allclose(out * has_key, attend(q, k, v) * has_key, atol=2e-6)
    want = jax.grad(reference, argnums=(0, 1, 2))(q, k, v)
    got = jax.jit(jax.grad(blocked, argnums=(0, 1, 2)))(q, k, v)
    for name, g, w in zip("qkv", got, want):
        np.testing.assert_allclose(g, w, atol=1e-5, err_msg=f"d{name}")
    assert float(jnp.abs(got[2]).max()) > 0.1  # the gradient is not trivially zero


@pytest.mark.parametrize("row_chunk,layers", [(2, 2), (64, 2), (2, 6)])
@pytest.mark.slow
def test_cached_calls_on_some_rows_and_one_token_match_the_full_forward(monkeypatch, row_chunk, layers):
    """``hidden_states`` with a cache, called on a subset of the cache's rows (``rows=``, in any order) and asked
    for one token per row (``last_at=``), gives the full causal forward's hidden states at those tokens, advances
    only those rows, and leaves a cache from which a call on every row continues exactly. Row chunks of 2 (5
    rows: a remainder chunk; each chunk split in CPU_CACHE_CHAINS parts) and of the whole batch; 2 layers (the
    unrolled layer scan) and 6 (a rolled scan, more than UNROLL_LAYERS)."""
    from metarl_jax.models import init_cache
    from metarl_jax.models import attention
    from metarl_jax.models import transformer as tf

    monkeypatch.setattr(attention, "CPU_CACHE_ROW_CHUNK", row_chunk)
    assert (layers > tf.UNROLL_LAYERS) == (layers == 6)
    model = Transformer(preset("tiny", 50).replace(num_layers=layers), rngs=nnx.Rngs(4))
    graphdef, state = nnx.split(model)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 50, size=(5, 20)))
    pos = jnp.broadcast_to(jnp.arange(20), (5, 20))
    full, _ = model.hidden_states(tokens, pos)
    first, second = jnp.asarray([3, 0, 4]), jnp.asarray([1, 2])
    last_at = jnp.asarray([5, 2, 0])

    @jax.jit
    def run(state):
        m = nnx.merge(graphdef, state)
        _, cache = m.hidden_states(tokens[:, :8], pos[:, :8], init_cache(m.config, 5, 32))
        one, cache = m.hidden_states(tokens[first, 8:14], pos[first, 8:14], cache, rows=first, last_at=last_at)
        lengths = cache.length
        _, cache = m.hidden_states(tokens[second, 8:14], pos[second, 8:14], cache, rows=second)
        rest, cache = m.hidden_states(tokens[:, 14:], pos[:, 14:], cache)
        return one, lengths, rest, cache.length

    one, lengths, rest, final = run(state)
    assert one.shape == (3, 1, model.config.hidden_size)
    np.testing.assert_allclose(np.asarray(one[:, 0]), np.asarray(full[first, 8 + last_at]), atol=1e-5, rtol=0)
    assert np.asarray(lengths).tolist() == [14, 8, 8, 14, 14]
    assert np.asarray(final).tolist() == [20] * 5
    np.testing.assert_allclose(np.asarray(rest), np.asarray(full[:, 14:]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk,chains", [(3, 2), (2, 2), (8, 1), (3, 3)])
def test_row_chunks_give_the_rows_in_order(chunk, chains):
    """``map_row_chunks`` returns what one call on every row returns: 7 rows, chunks that leave a remainder,
    chunks split into independent parts (and a part count larger than the remainder)."""
    from metarl_jax.models.attention import map_row_chunks

    x = jnp.arange(7 * 3, dtype=jnp.float32).reshape(7, 3)
    scale = jnp.arange(7, dtype=jnp.float32) + 1

    def fn(x, s):  # rows to rows, each row's own numbers only
        return x * s[:, None] + jnp.cumsum(x, axis=1)

    out = jax.jit(lambda x, s: map_row_chunks(fn, (x, s), chunk, chains))(x, scale)
    np.testing.assert_allclose(np.asarray(out), np.asarray(fn(x, scale)), rtol=1e-6)
