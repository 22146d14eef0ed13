"""What the meta-learner trains (``config.trainable``): with ``"lora"`` (adapters) or ``"prompt"`` (a learned initial
context) only those variables change and have optimizer state, the frozen model is bit-identical after a step and
is not stored in checkpoints (its fingerprint is), the rollout's log-probabilities equal the teacher-forced ones,
a resumed run equals an uninterrupted one, and export merges the adapters or writes the prompt beside the model."""

import jax
import numpy as np
import pytest
from flax import nnx

from metarl_jax import build, train
from metarl_jax.agents.rollout import rollout
from metarl_jax.algos.grpo import init_train_state, make_sharded_train_step, model_state
from metarl_jax.algos.scoring import observation_targets, teacher_forced_logp
from metarl_jax.checkpoints import Checkpointer, CheckpointMismatchError
from metarl_jax.configs import tiny
from metarl_jax.models.lora import LoRAParam
from metarl_jax.models.prompt import PromptParam, load_prompt, prompt_ids
from metarl_jax.sharding import mesh_from_config

# Every test here trains, rolls out or checkpoints a LoRA or prompt-tuned model: about 10 minutes on 2 cores.
pytestmark = pytest.mark.slow

TRAINED = {"lora": LoRAParam, "prompt": PromptParam}


def trainable_config(trainable, **fields):
    c = tiny.get_config()
    c.trainable = trainable
    c.lora.rank = 2
    c.prompt.length = 3
    c.eval_before_training, c.eval_every = False, 0
    c.optimizer.warmup_steps = 0  # the first step moves the adapters' b (a gets no gradient while b is 0), the next a
    for name, value in fields.items():
        c[name] = value
    return c


@pytest.fixture(scope="module", params=["lora", "prompt"])
def stepped(request):
    """A tiny run's train state before and after two compiled steps, and the steps' metrics, training the LoRA
    adapters or the prompt."""
    config = trainable_config(request.param)
    run = build.build_run(config)
    state = init_train_state(run.model_state, run.optimizer, trainable=build.trainable_filter(config))
    before = jax.tree.map(np.asarray, state)
    step = make_sharded_train_step(run.graphdef, run.train_tasks, run.optimizer, run.hyper, state,
                                   mesh_from_config(config.mesh), config.mesh.mode, donate=False)
    metrics = []
    for i in range(2):
        state, m = step(state, jax.random.PRNGKey(i))
        metrics.append(jax.device_get(m))
    return request.param, run, before, state, metrics


def test_only_the_trained_variables_change_and_the_rest_is_bit_identical(stepped):
    trainable, _, before, after, _ = stepped
    kind = TRAINED[trainable]
    assert {type(v) for v in jax.tree.leaves(after.params, is_leaf=lambda x: isinstance(x, nnx.Variable))} == {kind}
    assert not any(isinstance(v, kind)
                   for v in jax.tree.leaves(after.frozen, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    for x, y in zip(jax.tree.leaves(before.frozen), jax.tree.leaves(after.frozen)):
        np.testing.assert_array_equal(x, np.asarray(y))
    changed = [not np.array_equal(x, np.asarray(y)) for x, y in zip(jax.tree.leaves(before.params),
                                                                    jax.tree.leaves(after.params))]
    assert all(changed), "every trained variable (a and b of each targeted projection; the prompt) moves"


def test_the_optimizer_state_holds_only_the_trained_variables(stepped):
    _, _, _, after, _ = stepped
    adapters = {tuple(x.shape) for x in jax.tree.leaves(after.params)}
    moments = [x for x in jax.tree.leaves(after.opt_state) if x.ndim > 0]
    assert moments and {tuple(x.shape) for x in moments} <= adapters
    assert sum(x.size for x in moments) == 2 * sum(x.size for x in jax.tree.leaves(after.params))  # Adam: mu, nu
    assert sum(x.size for x in jax.tree.leaves(after.frozen)) > 10 * sum(x.size for x in jax.tree.leaves(after.params))


def test_rollout_log_probs_equal_the_teacher_forced_ones(stepped):
    """With update_epochs=1 the update's importance ratio compares the teacher-forced log-probabilities with the
    rollout's: on-policy they must agree, also in the second step, when the adapters are no longer zero."""
    *_, metrics = stepped
    for m in metrics:
        env = m["game:GuessTheNumber-v0-easy"]
        assert abs(float(env["ratio_mean"]) - 1.0) < 1e-5 and abs(float(env["approx_kl"])) < 1e-5


def test_checkpoints_hold_the_trained_part_and_refuse_another_base(stepped, tmp_path):
    _, _, _, after, _ = stepped
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(2, after, jax.random.PRNGKey(0), {"seed": 0})
        saved = ckpt.manager.item_metadata(2)["state"]["train_state"]
        assert saved.get("frozen") is None
        restored, _, config = ckpt.restore(2, after, jax.random.PRNGKey(1))
        assert "frozen_fingerprint" in config
        for x, y in zip(jax.tree.leaves(model_state(restored)), jax.tree.leaves(model_state(after))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        other = after.replace(frozen=jax.tree.map(lambda x: x + 1e-3, after.frozen))
        with pytest.raises(CheckpointMismatchError, match="trained on other frozen weights"):
            ckpt.restore(2, other, jax.random.PRNGKey(1))


@pytest.fixture(scope="module")
def prompted():
    """A tiny model with 3 random prompt vectors (far from any token embedding) and its rollout of 4
    GuessTheNumber-easy trials."""
    config = trainable_config("prompt")
    run = build.build_run(config)
    graphdef, state = run.graphdef, run.model_state
    state["prompt"].set_value(jax.random.normal(jax.random.PRNGKey(7), state["prompt"].shape))
    task = run.train_tasks[0]
    _, trials = jax.vmap(task.env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), 4), task.env_params)
    transcript = jax.jit(lambda st: rollout(graphdef, st, task, jax.random.PRNGKey(1), trials))(state)
    return graphdef, state, task, transcript


def test_every_trial_opens_with_the_prompt_and_its_log_probs_match_the_teacher_forced_pass(prompted):
    graphdef, state, task, tr = prompted
    ids = prompt_ids(nnx.merge(graphdef, state))
    np.testing.assert_array_equal(np.asarray(tr.tokens)[:, :3], np.broadcast_to(ids, (4, 3)))
    assert (np.asarray(tr.tokens)[:, 3:] < ids[0]).all(), "the virtual tokens appear only at the start"
    assert int(np.asarray(tr.action_start)[:, 0].min()) > 3
    forced = jax.jit(lambda st: teacher_forced_logp(graphdef, st, tr, task.table))
    mask = np.asarray(tr.action_mask)
    np.testing.assert_allclose(np.asarray(forced(state))[mask], np.asarray(tr.logp)[mask], atol=1e-5)
    moved = jax.tree.map(lambda x: x, state)  # another prompt gives other probabilities: the model reads it
    moved["prompt"].set_value(state["prompt"][...] + 1.0)
    assert np.abs(np.asarray(forced(moved))[mask] - np.asarray(tr.logp)[mask]).max() > 1e-3


def test_the_observation_loss_never_scores_the_prompt(prompted):
    graphdef, state, task, tr = prompted
    target, scored = observation_targets(tr, task.observation_vocab, nnx.merge(graphdef, state).config.vocab_size)
    assert not np.asarray(scored)[:, :2].any(), "slots 1 and 2 hold virtual tokens"
    assert np.asarray(scored)[:, 2].all(), "the first observation token is predicted from the prompt"
    assert (np.asarray(target)[np.asarray(scored)] >= 0).all()


def test_eval_transcripts_show_the_prompt_as_vectors(prompted):
    from metarl_jax.evaluate import render_samples
    from metarl_jax.text.tokenizers import load_tokenizer

    *_, tr = prompted
    played = {"env": {"sample_tokens": np.asarray(tr.tokens)[:2], "sample_length": np.asarray(tr.length)[:2]}}
    texts = render_samples(played, load_tokenizer("word"))
    assert len(texts) == 2 and all(t.startswith("    [3 prompt vectors] ") and "boxed" in t for t in texts.values())


@pytest.mark.parametrize("trainable", ["lora", "prompt"])
def test_a_resumed_run_equals_an_uninterrupted_one_and_exports(trainable, tmp_path, compile_cache):
    from metarl_jax.export import export
    from metarl_jax.models.hf_io import load_pretrained

    full = train.train_and_evaluate(trainable_config(trainable, num_steps=4), str(tmp_path / "full"), quiet=True)
    train.train_and_evaluate(trainable_config(trainable, num_steps=2), str(tmp_path / "cut"), quiet=True)
    resumed = train.train_and_evaluate(trainable_config(trainable, num_steps=4), str(tmp_path / "cut"), quiet=True)
    for x, y in zip(jax.tree.leaves(model_state(full.state)), jax.tree.leaves(model_state(resumed.state))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [r.episode_rates for r in full.rows] == [r.episode_rates for r in resumed.rows]

    export(str(tmp_path / "full"), str(tmp_path / "hf"))
    loaded = load_pretrained(str(tmp_path / "hf"))
    trained = nnx.merge(full.graphdef, model_state(full.state))
    tokens = np.arange(1, 9, dtype=np.int32)[None]
    if trainable == "prompt":  # written beside the model, loaded back with it, and read through its virtual tokens
        np.testing.assert_array_equal(load_prompt(str(tmp_path / "hf")), np.asarray(trained.prompt[...]))
        tokens = np.concatenate([prompt_ids(trained)[None], tokens], axis=1)
    positions = np.arange(tokens.shape[1], dtype=np.int32)[None]
    np.testing.assert_allclose(np.asarray(loaded(tokens, positions)[0]), np.asarray(trained(tokens, positions)[0]),
                               atol=1e-5)
