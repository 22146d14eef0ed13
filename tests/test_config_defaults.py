"""One source of truth for the step's settings: the object API's defaults (``GRPOHyper()``, ``make_optimizer()``,
``CrossEpisodeMetaLearner``) are the README main run's config, and a config maps onto them field by field."""

import dataclasses
import importlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax import build, configs
from metarl_jax.algos.grpo import GRPOHyper
from metarl_jax.algos.optim import make_optimizer
from metarl_jax.configs import default


def test_grpo_defaults_are_the_main_runs_config():
    config = default.get_config("orbit")
    assert build.hyper_from_config(config) == GRPOHyper()
    # Every field of the config that names a GRPOHyper field reaches it: changing one changes the hyperparameters.
    for field in dataclasses.fields(GRPOHyper):
        if field.name in config and isinstance(config[field.name], (int, float)) and not isinstance(config[field.name], bool):
            changed = config.copy_and_resolve_references()
            changed[field.name] = config[field.name] + 1
            assert getattr(build.hyper_from_config(changed), field.name) == config[field.name] + 1, field.name
    no_discount = config.copy_and_resolve_references()
    no_discount.discount = False
    assert build.hyper_from_config(no_discount).gamma_step is None
    orbit = GRPOHyper.orbit()
    assert (orbit.observation_coef, orbit.answer_coef, orbit.gamma_step, orbit.gamma_traj) == (0.0, 0.0, None, None)


def test_optimizer_defaults_are_the_main_runs_config():
    config = default.get_config("orbit")
    defaults = {k: p.default for k, p in inspect.signature(make_optimizer).parameters.items()}
    imitation = {k: defaults.pop(k) for k in ("imitation_steps", "imitation_rate")}  # config.pretrain's
    assert defaults == dict(config.optimizer)
    # The library's optimizer has no imitation phase unless asked (the config's pretrain.steps), at the config's rate.
    assert imitation == dict(imitation_steps=0, imitation_rate=config.pretrain.learning_rate)
    config.pretrain.steps = 0  # the RL phase's optimizer
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)}
    grads = {"w": jnp.arange(6.0).reshape(2, 3) - 2.5}
    ours, theirs = make_optimizer(), build.build_optimizer(config)
    s1, s2 = ours.init(params), theirs.init(params)
    for _ in range(12):  # through the warm-up
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = theirs.update(grads, s2, params)
        np.testing.assert_array_equal(np.asarray(u1["w"]), np.asarray(u2["w"]))
    assert float(jnp.abs(u1["w"]).max()) > 0


@pytest.mark.parametrize("name", configs.NAMES)
def test_the_built_in_configs_are_locked_and_type_safe_with_open_model_overrides(name):
    c = importlib.import_module(f"metarl_jax.configs.{name}").get_config()
    with pytest.raises(AttributeError, match='Did you mean "num_tasks"'):
        c.num_task = 3
    with pytest.raises(AttributeError, match='Did you mean "learning_rate"'):
        c.optimizer.learnig_rate = 1e-3
    with pytest.raises(TypeError, match="intro"):
        c.intro = 1
    c.model.overrides.hidden_size = 64  # ModelConfig's fields, checked by config_check
    c.num_tasks = 3
    assert c.num_tasks == 3 and c.model.overrides.hidden_size == 64


def test_requested_variant_reads_the_config_argument_or_the_files_default(tmp_path):
    assert configs.requested_variant(configs.path("default") + ":single") == "single"
    assert configs.requested_variant(configs.path("default")) == "compare"
    assert configs.requested_variant(configs.path("tiny")) == "orbit"
    plain = tmp_path / "plain.py"
    plain.write_text("import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict()\n")
    assert configs.requested_variant(str(plain)) == ""
    assert default.get_config("single").single_episode and not default.get_config("compare").single_episode
    with pytest.raises(ValueError, match="unknown config variant"):
        default.get_config("both")


@pytest.mark.slow  # two compiles of the main run's step: about 2 minutes on 2 cores
def test_cross_episode_meta_learner_defaults_build_the_main_runs_step():
    """``CrossEpisodeMetaLearner`` with nothing but the model and the tasks takes the same step as
    ``train_and_evaluate`` on configs/default.py: equal losses and metrics on one batch, equal parameters after it."""
    import metarl_jax
    from metarl_jax.algos.grpo import init_train_state, make_sharded_train_step
    from metarl_jax import sharding

    config = default.get_config("orbit")
    config.pretrain.steps = 0  # the main run's RL phase (the object API has no imitation phase)
    run = build.build_run(config)
    assert dataclasses.replace(run.hyper, rollout_rows=0, update_rows=0) == GRPOHyper()
    meta = metarl_jax.CrossEpisodeMetaLearner(metarl_jax.InContextLearner(run.graphdef, run.model_state), run.train_tasks)
    mesh = sharding.mesh_from_config(config.mesh)
    state = init_train_state(jax.tree.map(jnp.copy, run.model_state), run.optimizer)
    step = make_sharded_train_step(run.graphdef, run.train_tasks, run.optimizer, run.hyper, state, mesh,
                                   config.mesh.mode, donate=False)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
    ours, ours_metrics = meta.step(meta.init_state(), key)
    theirs, theirs_metrics = step(state, key)
    flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}  # noqa: E731
    a, b = flat(ours_metrics), flat(theirs_metrics)
    assert a.keys() == b.keys() and float(a["['loss']"]) != 0.0
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for x, y in zip(jax.tree.leaves(ours.params), jax.tree.leaves(theirs.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
