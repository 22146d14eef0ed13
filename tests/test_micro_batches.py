"""Memory-bounded rollout and update: micro-batched rollouts equal the unchunked one, accumulated gradients
equal the whole batch's, and log-probabilities and entropy over the vocabulary in chunks equal the full
computation (all float32, tiny models)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from metarl_jax import envs
from metarl_jax.agents import ActionTable
from metarl_jax.agents.context import context_budget
from metarl_jax.agents.rollout import RolloutSpec, rollout
from metarl_jax.agents.sampler import Sampling
from metarl_jax.algos.grpo import GRPOHyper, init_train_state, make_train_step
from metarl_jax.algos.optim import accumulate_over_rows
from metarl_jax.algos.scoring import teacher_forced
from metarl_jax.models import Transformer, preset
from metarl_jax.models.sampling import chunked_logp_entropy, process_logits
from metarl_jax.tasks import build_task
from metarl_jax.text import Codec, WordTokenizer

BATCH = 8


def test_chunked_logp_and_entropy_equal_the_whole_vocabulary():
    """Values and gradients, with a last chunk that runs past the vocabulary (V = 50, chunks of 16)."""
    key = jax.random.PRNGKey(0)
    hidden = jax.random.normal(key, (3, 5, 8))
    weight = jax.random.normal(jax.random.fold_in(key, 1), (8, 50)) * 2.0
    tokens = jax.random.randint(jax.random.fold_in(key, 2), (3, 5), 0, 50)

    def full(hidden, weight):
        logp = process_logits(hidden @ weight, temperature=0.6)
        picked = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
        return picked, -(jnp.exp(logp) * logp).sum(-1)

    def chunked(hidden, weight):
        return chunked_logp_entropy(lambda h, cols: h @ weight[:, cols], hidden, tokens, 50, 0.6, chunk=16)

    for a, b in zip(full(hidden, weight), chunked(hidden, weight)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)
    objective = lambda f: lambda h, w: (f(h, w)[0].sum() + 0.3 * f(h, w)[1].sum())  # noqa: E731
    grads_full = jax.grad(objective(full), argnums=(0, 1))(hidden, weight)
    grads_chunked = jax.grad(objective(chunked), argnums=(0, 1))(hidden, weight)
    for a, b in zip(grads_full, grads_chunked):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="temperature"):
        chunked_logp_entropy(lambda h, cols: h @ weight[:, cols], hidden, tokens, 50, 0.0)


def test_vocabulary_chunks_shrink_with_the_positions_scored():
    from metarl_jax.models.sampling import CHUNK_LOGITS_BYTES, VOCAB_CHUNK, vocab_chunk_for

    assert vocab_chunk_for(100, 151936) == VOCAB_CHUNK
    assert vocab_chunk_for(100, 50) == 50
    big = vocab_chunk_for(8 * 30 * 1024, 151936)  # 8 rows x 30 turns x 1,024 free tokens
    assert big < VOCAB_CHUNK and 8 * 30 * 1024 * big * 4 <= CHUNK_LOGITS_BYTES


def _play(free_tokens: int, rows_per_chunk: int, env_id="game:GuessTheNumber-v0-easy"):
    env, params = envs.make_trial(env_id, total_step_cap=5, intro=False, text="terse")
    tok = WordTokenizer()
    codec, table = Codec(env, tok), ActionTable(env, tok)
    budget = context_budget(env, codec, free_tokens or table.max_len)
    graphdef, state = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    _, trials = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), BATCH), params)
    spec = RolloutSpec(env=env, env_params=params, codec=codec, table=table, budget=budget,
                       context_len=budget.worst_case, free_tokens=free_tokens)
    tr = jax.jit(lambda st, key: rollout(graphdef, st, spec, key, trials, Sampling(temperature=0.9),
                                         rows_per_chunk=rows_per_chunk))(state, jax.random.PRNGKey(1))
    return dict(tr=tr, graphdef=graphdef, state=state, table=table, tok=tok, free=free_tokens > 0)


@pytest.fixture(scope="module", params=[0, 6], ids=["constrained", "free"])
def rollouts(request):
    free = request.param
    return {rows: _play(free, rows) for rows in (0, 2)}


@pytest.mark.slow
def test_micro_batched_rollout_equals_the_unchunked_one(rollouts):
    whole, chunked = rollouts[0]["tr"], rollouts[2]["tr"]
    for name in ("tokens", "length", "actions", "action_tokens", "action_mask", "rewards", "success", "taken"):
        np.testing.assert_array_equal(np.asarray(getattr(chunked, name)), np.asarray(getattr(whole, name)), err_msg=name)
    np.testing.assert_allclose(np.asarray(chunked.logp), np.asarray(whole.logp), atol=1e-5)
    assert np.asarray(whole.taken).sum() > BATCH, "the trials must take several turns for the test to mean much"


@pytest.mark.slow
def test_free_decoding_is_scored_over_vocabulary_chunks(rollouts):
    """The teacher-forced pass of a free-decoding transcript, with vocabulary chunks of 7 columns, equals a
    log-softmax over the whole vocabulary of the model's logits (and the sampler's log-probabilities)."""
    run = rollouts[0]
    if not run["free"]:
        pytest.skip("constrained decoding scores the actions' tokens only (tests/test_rollout.py)")
    tr, graphdef, state = run["tr"], run["graphdef"], run["state"]
    out = teacher_forced(graphdef, state, tr, run["table"], temperature=0.9, free=True, vocab_chunk=7)
    model = nnx.merge(graphdef, state)
    logits, _ = model(tr.tokens, tr.positions, None, tr.token_mask)
    logp_all = jax.nn.log_softmax(logits / 0.9, axis=-1)  # [B, S, V]
    batch, turns, width = tr.action_tokens.shape
    before = tr.action_start[:, :, None] + jnp.arange(width)[None, None, :] - 1
    rows = jnp.arange(batch)[:, None, None]
    picked = logp_all[rows, jnp.clip(before, 0, tr.tokens.shape[1] - 1)]  # [B, T, L, V]
    ref = jnp.take_along_axis(picked, tr.action_tokens[..., None], axis=-1)[..., 0]
    entropy = -(jnp.exp(picked) * picked).sum(-1)
    mask = np.asarray(tr.action_mask)
    np.testing.assert_allclose(np.asarray(out.logp)[mask], np.asarray(ref)[mask], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.entropy)[mask], np.asarray(entropy)[mask], atol=1e-4)
    np.testing.assert_allclose(np.asarray(out.logp)[mask], np.asarray(tr.logp)[mask], atol=1e-4)


def test_accumulate_over_rows_sums_the_micro_batches():
    rows = (jnp.arange(12.0).reshape(6, 2), None)
    fn = lambda r: (r[0].sum(), {"sq": (r[0] ** 2).sum()})  # noqa: E731
    whole = fn(rows)
    for chunk in (1, 2, 3, 6, 0):
        got = accumulate_over_rows(fn, rows, chunk)
        np.testing.assert_allclose(float(got[0]), float(whole[0]))
        np.testing.assert_allclose(float(got[1]["sq"]), float(whole[1]["sq"]))
    with pytest.raises(ValueError, match="divide"):
        accumulate_over_rows(fn, rows, 4)


@pytest.mark.slow
def test_accumulated_gradients_equal_the_whole_batch():
    """One train step with every loss term on (PPO-clip, entropy, KL, observation and answer losses), played
    and updated whole vs in micro-batches of 2 rows: equal losses, metrics and (with plain SGD, whose update is
    the gradient) equal parameters."""
    tok = WordTokenizer()
    task = build_task(dict(env_id="game:GuessTheNumber-v0-easy", total_step_cap=4), tok, split="train", seed=0,
                      num_tasks=8, intro=False, text="terse")
    graphdef, params = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    optimizer = optax.sgd(1.0)
    base = dict(num_tasks=2, group_size=4, entropy_coef=0.01, kl_coef=0.1, observation_coef=1.0, answer_coef=0.5)
    results = []
    for rows in (0, 2):
        hp = GRPOHyper.orbit(**base, answer_from="task", rollout_rows=rows, update_rows=rows)
        step = jax.jit(make_train_step(graphdef, [task], optimizer, hp))
        state = init_train_state(jax.tree.map(jnp.copy, params), optimizer, keep_reference=True)
        results.append(step(state, jax.random.PRNGKey(3)))
    (whole, m_whole), (chunked, m_chunked) = results
    assert float(m_whole["grad_norm"]) > 0
    flat_whole = jax.tree_util.tree_leaves_with_path(m_whole)
    flat_chunked = dict(jax.tree_util.tree_leaves_with_path(m_chunked))
    for path, value in flat_whole:
        np.testing.assert_allclose(np.asarray(flat_chunked[path]), np.asarray(value), atol=1e-5, rtol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(chunked.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)


def test_memory_plan_fits_the_budget():
    """The planner keeps the tiny default whole, and cuts a Qwen3-1.7B row batch at a 32,768-token context
    into micro-batches whose estimated bytes fit one 141 GB device beside the train state."""
    from types import SimpleNamespace

    from metarl_jax import memory
    from metarl_jax.agents.context import ContextBudget
    from metarl_jax.models.config import ModelConfig

    assert memory.largest_rows(256, 10, 75) == 4  # divisors of 256 whose rows fit 75 bytes
    assert memory.largest_rows(256, 10, 75, multiple=8) == 32  # 8 data-parallel devices hold 4 rows each
    assert memory.largest_rows(12, 10, 5) == 1  # none fits: the smallest
    qwen = ModelConfig(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16,
                       num_kv_heads=8, head_dim=128)
    task = SimpleNamespace(context_len=32768, transcript_len=32768,
                           budget=ContextBudget(chunk_len=600, action_len=1024, turns=30, worst_case=40000))
    one_row = memory.kv_cache_bytes(qwen, 1, 32768, "bfloat16")
    assert 3.5e9 < one_row < 4e9  # 28 layers x 2 x 8 heads x 128 x 2 bytes x 32,768 slots
    state = 2_000_000_000 * 12  # float32 weights and two Adam moments
    plan = memory.plan_micro_batches(qwen, [task], [task], 256, 256, budget_bytes=141 * 10**9, state_bytes=state,
                                     cache_dtype="bfloat16", remat="full")
    assert plan.fits and 1 <= plan.rollout < 256 and 1 <= plan.update < 256
    for rows, per_row in ((plan.rollout, memory.rollout_bytes_per_row(qwen, task, "bfloat16")),
                          (plan.update, memory.update_activation_bytes(qwen, [task], 1, "full", "bfloat16"))):
        assert rows * per_row <= memory.USABLE_SHARE * 141e9 - 2 * state < 2 * rows * per_row  # the largest that fits


def test_config_refuses_micro_batches_that_do_not_divide_the_batch():

    from metarl_jax import config_check

    from metarl_jax.configs.default import get_config

    c = get_config("orbit")
    c.rollout_rows = 3
    with pytest.raises(config_check.ConfigError, match=r"config.rollout_rows: must divide num_tasks \* group_size = 32"):
        config_check.check_config(c)
    c.rollout_rows, c.update_rows = 8, 5
    with pytest.raises(config_check.ConfigError, match="config.update_rows"):
        config_check.check_config(c)
    c.update_rows, c.model.dtype = 8, "float16"
    with pytest.raises(config_check.ConfigError, match="config.model.dtype: must be one of"):
        config_check.check_config(c)
