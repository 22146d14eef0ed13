"""The stacked, scanned decoder layers: one traced layer body whatever the depth, rematerialisation that changes
no value, and bfloat16 compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metarl_jax.models import Transformer, init_cache, preset
from metarl_jax.models import attention
from metarl_jax.models import transformer as tf

TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 50, size=(3, 40)), jnp.int32)  # 3 rows: no scan over
POS = jnp.broadcast_to(jnp.arange(40), (3, 40))  # the rows (CPU row chunks) has the length of a layer scan


def tiny(layers: int = 2, **kw) -> Transformer:
    return Transformer(preset("tiny", 50).replace(num_layers=layers), rngs=nnx.Rngs(0), **kw)


def equations(jaxpr) -> list:
    """Every equation of a jaxpr, those of its sub-jaxprs (scan bodies, cond branches, custom VJPs) included."""
    out = []
    for eqn in jaxpr.eqns:
        out.append(eqn)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    out += equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    out += equations(sub)
    return out


def traced_programs(layers: int) -> dict[str, list]:
    """The equations of a training step's loss gradient (no cache), a prefill that wants one token per row
    (``last_at``) and a cached call on a subset of the cache's rows, for a tiny model of ``layers`` layers."""
    model = tiny(layers)
    graphdef, state = nnx.split(model)

    def grad(state):
        return jax.grad(lambda s: nnx.merge(graphdef, s)(TOKENS, POS)[0].mean())(state)

    def prefill(state):
        cache = init_cache(model.config, 3, 64)
        return nnx.merge(graphdef, state).hidden_states(TOKENS, POS, cache, last_at=jnp.asarray([3, 39, 0]))

    def on_rows(state):
        cache = init_cache(model.config, 5, 64)
        return nnx.merge(graphdef, state).hidden_states(TOKENS, POS, cache, rows=jnp.asarray([2, 0, 4]))

    return {name: equations(jax.make_jaxpr(fn)(state).jaxpr) for name, fn in
            (("grad", grad), ("prefill", prefill), ("on_rows", on_rows))}


def test_traced_program_does_not_grow_with_depth():
    """A 2-layer and an 8-layer model trace to the same number of equations (one layer body in a scan, plus the
    last layer apart for ``last_at``): the program XLA compiles has one layer body whatever the depth. The
    2-layer scan is fully unrolled when compiled (at most UNROLL_LAYERS layers), the 8-layer one is not."""
    assert 2 <= tf.UNROLL_LAYERS < 8
    shallow, deep = traced_programs(2), traced_programs(8)
    for name in shallow:
        assert len(shallow[name]) == len(deep[name]), name
    for layers, programs in ((2, shallow), (8, deep)):
        scans = [e for e in programs["grad"] if e.primitive.name == "scan" and e.params["length"] == layers]
        assert scans  # the forward pass and its transpose (split by partial evaluation) scan over the layers
        assert all((e.params["unroll"] == 1) == (layers > tf.UNROLL_LAYERS) for e in scans)
        scans = [e for e in programs["prefill"] if e.primitive.name == "scan" and e.params["length"] == layers - 1]
        assert len(scans) == 1  # the first L - 1 layers; the last runs apart, one token per row querying


@pytest.mark.parametrize("layers", [2, pytest.param(6, marks=pytest.mark.slow)])
@pytest.mark.parametrize("remat", ["full", pytest.param("dots", marks=pytest.mark.slow),
                                   pytest.param("nested", marks=pytest.mark.slow)])
def test_remat_gives_the_same_values_and_gradients(layers, remat):
    """Rematerialised layers (unrolled scan: 2 layers; rolled: 6) give the logits and parameter gradients of
    the plain pass, to 1e-5, and the remat policy is really in the traced program ("nested" on 6 rolled
    layers: a checkpointed scan over 3 groups of 2 checkpointed layers)."""
    def loss_and_grad(model):
        graphdef, state = nnx.split(model)

        def loss(state):
            logits, _ = nnx.merge(graphdef, state)(TOKENS, POS)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 7] * jnp.arange(40)), logits

        checkpoints = [e for e in equations(jax.make_jaxpr(loss)(state).jaxpr)
                       if e.primitive.name in ("checkpoint", "remat2")]
        (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
        return value, logits, grads, len(checkpoints)

    value, logits, grads, n_plain = loss_and_grad(tiny(layers))
    value_r, logits_r, grads_r, n_remat = loss_and_grad(tiny(layers, remat=remat))
    assert n_plain == 0 and n_remat > 0
    if remat == "nested" and layers > tf.UNROLL_LAYERS:
        assert tf.remat_group_size(layers) == 2 and n_remat == 2 * n_plain_remat(layers)
    np.testing.assert_allclose(float(value_r), float(value), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(logits_r), np.asarray(logits), atol=1e-5, rtol=0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0), grads_r, grads)


def n_plain_remat(layers):
    """The checkpoint equations of one ``remat="full"`` pass of ``layers`` layers."""
    graphdef, state = nnx.split(tiny(layers, remat="full"))
    jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(TOKENS, POS)[0])(state).jaxpr
    return len([e for e in equations(jaxpr) if e.primitive.name in ("checkpoint", "remat2")])


def test_remat_group_size():
    """Groups of about sqrt(L) layers that divide L: 40 layers -> 5 (8 + 5 inputs kept), 28 -> 4, 36 -> 6; a
    prime depth has no groups."""
    assert [tf.remat_group_size(n) for n in (40, 28, 36, 6, 7)] == [5, 4, 6, 2, 1]


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="remat='most' is not a rematerialisation policy"):
        tiny(remat="most")


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32():
    """bfloat16 compute over float32 weights (``param_dtype=float32, dtype=bfloat16``), cached (bfloat16 cache)
    and not, against float32 compute of the same weights: logits within 1e-2 absolute (the largest difference
    measured over 3 seeds of this 2-layer tiny model, cached or not, was 4.6e-3, for logits of magnitude up
    to ~1.4). The
    gradient of the weights is float32 and finite."""
    f32 = tiny()
    bf16 = tiny(param_dtype=jnp.float32, dtype=jnp.bfloat16)
    assert bf16.layers.attn.q_proj.kernel[...].dtype == jnp.float32
    reference, _ = f32(TOKENS, POS)
    logits, _ = bf16(TOKENS, POS)
    assert logits.dtype == jnp.float32
    cache = init_cache(bf16.config, 3, 48, jnp.bfloat16)
    first, cache = bf16(TOKENS[:, :30], POS[:, :30], cache)
    rest, cache = bf16(TOKENS[:, 30:], POS[:, 30:], cache)
    assert cache.k.dtype == jnp.bfloat16
    for got in (logits, jnp.concatenate([first, rest], axis=1)):
        difference = float(jnp.abs(got - reference).max())
        assert 0 < difference < 1e-2  # bfloat16 really ran (not float32), and stays close
    grads = jax.grad(lambda m: m(TOKENS, POS)[0].mean())(bf16)
    kernel = grads.layers.mlp.down_proj.kernel[...]
    assert kernel.dtype == jnp.float32 and bool(jnp.isfinite(kernel).all()) and float(jnp.abs(kernel).max()) > 0


def test_stacked_layers_and_cache_shapes():
    """Every layer variable has a leading layer axis, and the cache is [L, B, K, S, E]."""
    model = tiny(3)
    cfg = model.config
    assert model.layers.attn.q_proj.kernel.shape == (3, cfg.hidden_size, cfg.num_heads * cfg.head_dim)
    assert model.layers.input_norm.weight.shape == (3, cfg.hidden_size)
    cache = init_cache(cfg, 5, 24)
    assert cache.k.shape == cache.v.shape == (3, 5, cfg.num_kv_heads, 24, cfg.head_dim)
    assert cache.max_len == 24


def attention_inputs(t: int):
    """Random q [3, t, 2, 2, 8], k, v [3, t, 2, 8], ragged key validity (row 0's first 5 keys invalid) and an
    output weight that is zero on the queries without a valid key."""
    kq, kk, kv, km, kw = jax.random.split(jax.random.PRNGKey(t), 5)
    q = jax.random.normal(kq, (3, t, 2, 2, 8))
    k, v = jax.random.normal(kk, (3, t, 2, 8)), jax.random.normal(kv, (3, t, 2, 8))
    valid = (jax.random.uniform(km, (3, t)) > 0.3).at[0, :5].set(False)
    weight = jax.random.normal(kw, q.shape) * (jnp.cumsum(valid, axis=1) > 0)[:, :, None, None, None]
    return q, k, v, valid, weight


@pytest.mark.parametrize("groups", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_looped_causal_pass_equals_the_unrolled_one(monkeypatch, groups):
    """Past MAX_UNROLLED_QUERY_BLOCKS query blocks the causal pass loops over groups of blocks; its output and
    gradients (q, k, v) equal the block-by-block pass's to 1e-5. 300 tokens: 5 blocks, the last one partial
    (padded in the loop), in 2 or 3 key groups."""
    q, k, v, valid, weight = attention_inputs(300)

    def value_and_grads():
        def loss(q, k, v):
            return (attention.causal_attention(q, k, v, valid) * weight).sum()
        def both(q, k, v):
            return attention.causal_attention(q, k, v, valid), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
        return jax.jit(both)(q, k, v)

    out, grads = value_and_grads()
    monkeypatch.setattr(attention, "MAX_UNROLLED_QUERY_BLOCKS", 2)
    monkeypatch.setattr(attention, "KEY_GROUPS", groups)
    assert len(attention.key_groups(300)) == groups and attention._looped(300)
    looped_out, looped_grads = value_and_grads()
    has_key = np.asarray(weight != 0)
    np.testing.assert_allclose(np.asarray(looped_out) * has_key, np.asarray(out) * has_key, atol=1e-5, rtol=0)
    for name, got, want in zip("qkv", looped_grads, grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0, err_msg=f"d{name}")
    assert float(jnp.abs(grads[2]).max()) > 0.1


@pytest.mark.slow
def test_looped_causal_pass_in_a_model(monkeypatch):
    """A tiny model's loss and parameter gradients over 300 tokens with the looped causal pass (threshold
    lowered to 2 blocks) equal those of the block-by-block pass, to 1e-5."""
    model = tiny()
    graphdef, state = nnx.split(model)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 50, size=(2, 300)), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(300), (2, 300))

    def run():
        def loss(state):
            logits, _ = nnx.merge(graphdef, state)(tokens, pos)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 3]), logits
        return jax.jit(jax.value_and_grad(loss, has_aux=True))(state)

    (value, logits), grads = run()
    monkeypatch.setattr(attention, "MAX_UNROLLED_QUERY_BLOCKS", 2)
    (value_l, logits_l), grads_l = run()
    np.testing.assert_allclose(float(value_l), float(value), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(logits_l), np.asarray(logits), atol=1e-5, rtol=0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0), grads_l, grads)


def test_long_causal_pass_traces_a_bounded_program():
    """Past MAX_UNROLLED_QUERY_BLOCKS blocks the traced causal pass (forward and gradient) has as many equations
    at 80 blocks (5,120 tokens) as at 40: KEY_GROUPS block bodies, not one per block."""
    def program(t):
        q, k, v, valid, weight = (jax.ShapeDtypeStruct(x.shape[:1] + (t,) + x.shape[2:], x.dtype)
                                  for x in attention_inputs(2))
        loss = lambda q, k, v, valid, weight: (attention.causal_attention(q, k, v, valid) * weight).sum()  # noqa: E731
        return equations(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v, valid, weight).jaxpr)

    assert attention.MAX_UNROLLED_QUERY_BLOCKS < 40
    assert len(program(40 * attention.QUERY_BLOCK)) == len(program(80 * attention.QUERY_BLOCK))


def test_row_constraint_applies_to_each_layer_input():
    """``with_row_constraint`` puts a function on every layer's input of the cache-free pass (FSDP's sharding
    constraint); an identity there leaves the logits as they were, and the function sees [B, T, D] inputs."""
    model = tiny(6)
    graphdef, state = nnx.split(model)
    seen = []

    def constrain(x):
        seen.append(x.shape)
        return x

    constrained = tf.with_row_constraint(graphdef, state, constrain)
    logits = jax.jit(lambda s: nnx.merge(constrained, s)(TOKENS, POS)[0])(state)
    assert seen and all(shape == (TOKENS.shape[0], TOKENS.shape[1], model.config.hidden_size) for shape in seen)
    plain = jax.jit(lambda s: nnx.merge(graphdef, s)(TOKENS, POS)[0])(state)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(plain), atol=1e-6, rtol=0)
    assert nnx.merge(graphdef, state).constrain_rows is None  # the original graphdef is unchanged
