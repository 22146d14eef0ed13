"""The compiled GRPO step: traced once, finite metrics, parameters move."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from metarl_jax import envs
from metarl_jax.agents import ActionTable
from metarl_jax.algos.grpo import init_train_state, make_train_step
from metarl_jax.models import Transformer, preset
from metarl_jax.text import Codec, WordTokenizer


def test_train_step_compiles_once_and_updates():
    env, params = envs.make_trial("game:GuessTheNumber-v0-easy", total_step_cap=4, intro=False)
    tok = WordTokenizer()
    codec, table = Codec(env, tok), ActionTable(env, tok)
    graphdef, model_state = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    optimizer = optax.adam(1e-3)
    step_fn = make_train_step(graphdef, env, params, codec, table, optimizer, num_tasks=2, group_size=4)
    train_step = jax.jit(chex.assert_max_traces(step_fn, n=1), donate_argnums=0)
    state = init_train_state(model_state, optimizer)
    before = jax.tree.map(np.asarray, state.params)
    moved = False
    for i in range(20):
        state, metrics = train_step(state, jax.random.PRNGKey(i))
        assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
        assert 0.0 <= float(metrics["mean_return"]) <= env.total_step_cap
        moved = moved or float(metrics["grad_norm"]) > 0
    chex.clear_trace_counter()
    assert int(state.step) == 20
    assert moved, "some group must have had unequal returns, giving a gradient"
    after = jax.tree.map(np.asarray, state.params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)))
