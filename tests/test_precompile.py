"""``metarl_jax.precompile``: a child process compiles a run's train step into JAX's persistent compilation cache from
a freshly initialized model, and the program is the one the run asks for once it loads the prior's weights."""

import glob
import os

import chex
import jax
import pytest
from flax import nnx

from metarl_jax import sharding
from metarl_jax.build import build_run
from metarl_jax.configs import tiny
from metarl_jax.models.hf_io import save_pretrained
from metarl_jax.precompile import Precompiler
from metarl_jax.train import initial_train_state, jitted_train_step


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """``(stand_in, from_prior, other)``: a tiny run's config with a fresh model, the same config loading a saved
    model of that architecture (what the imitation prior exports; other weights), and a control with another
    batch shape."""
    stand_in = tiny.get_config()
    stand_in.num_steps = 2
    run = build_run(stand_in)
    prior_dir = str(tmp_path_factory.mktemp("prior"))
    save_pretrained(nnx.merge(run.graphdef, run.model_state), prior_dir)
    from_prior = stand_in.copy_and_resolve_references()
    from_prior.model.pretrained_dir = prior_dir
    other = stand_in.copy_and_resolve_references()
    other.group_size = 4
    return stand_in, from_prior, other


def lowered_train_step(config) -> str:
    """The config's train step as the training loop jits it, lowered (not compiled) to StableHLO text."""
    chex.clear_trace_counter()
    run = build_run(config)
    mesh = sharding.mesh_from_config(config.mesh)
    state = initial_train_state(run, config, mesh)
    return jitted_train_step(run, config, state, mesh).lower(state, jax.random.PRNGKey(config.seed)).as_text()


def test_the_stand_in_lowers_to_the_program_of_the_run_from_the_prior(configs):
    stand_in, from_prior, other = (lowered_train_step(c) for c in configs)
    assert stand_in == from_prior  # the persistent cache's key is this program's
    assert stand_in != other


def log_tail(precompiler) -> str:
    with open(precompiler.log_path) as f:
        return f.read()[-3000:]


def train_step_entries(cache_dir) -> set:
    return {os.path.basename(p) for p in glob.glob(os.path.join(cache_dir, "jit_train_step-*"))}


@pytest.mark.slow
def test_the_child_fills_the_cache_that_the_run_from_the_prior_reads(configs, tmp_path):
    stand_in, from_prior, other = configs
    cache = str(tmp_path / "xla_cache")
    first = Precompiler([stand_in], cache)
    assert first.wait() == 0, log_tail(first)
    compiled = train_step_entries(cache)
    assert len(compiled) == 1

    second = Precompiler([from_prior, other], cache)
    assert second.wait() == 0, log_tail(second)
    after = train_step_entries(cache)
    assert compiled < after and len(after) == 2  # the run from the prior found its program; the control did not
    assert not glob.glob(os.path.join(cache, "precompile_*.pkl"))  # the configs' file is removed
