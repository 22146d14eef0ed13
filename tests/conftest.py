import os
import sys

import pytest

# Tests run on CPU; keep XLA from grabbing every core's worth of threads per compile.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))


# Seconds each test file took in each suite on 2 CPU cores (2026-12-07). The README's commands run the files on two
# pytest-xdist workers (--dist loadfile --no-loadscope-reorder): a worker takes the next file in collection order, so
# the files are collected longest first and the two workers end together (longest-processing-time-first). Files not
# listed follow in their usual order; rough figures suffice.
FILE_SECONDS = {
    "slow": {"test_train.py": 1250, "test_multi_host.py": 1050, "test_trainable.py": 900, "test_faults.py": 790,
             "test_envs_common.py": 630, "test_paper_scale.py": 520, "test_rollout.py": 460, "test_micro_batches.py": 450,
             "test_grpo.py": 410, "test_export.py": 320, "test_render_conformance.py": 300, "test_models_extras.py": 300,
             "test_docs.py": 290, "test_maze.py": 240, "test_strip_thinking.py": 230, "test_mixture.py": 220,
             "test_install.py": 220, "test_learning_easy.py": 200, "test_models_scan.py": 180,
             "test_constrained_decoding.py": 170, "test_baselines.py": 150, "test_config_defaults.py": 150,
             "test_rl2.py": 130, "test_players.py": 100, "test_grpo_bandit.py": 90, "test_notebook.py": 80},
    "default": {"test_models.py": 170, "test_baselines.py": 120, "test_rollout.py": 100,
                "test_render_conformance.py": 90, "test_grpo_reference.py": 80, "test_constrained_decoding.py": 80,
                "test_rock_paper_scissors.py": 70, "test_bad_input.py": 70, "test_envs_common.py": 70,
                "test_players.py": 60, "test_blackjack.py": 60, "test_models_scan.py": 50, "test_models_extras.py": 40,
                "test_free_decoding.py": 40, "test_frozen_lake.py": 40, "test_multi_episode.py": 40, "test_text.py": 30,
                "test_minesweeper.py": 30, "test_checkpoints.py": 30},
}


def pytest_collection_modifyitems(config, items):
    """Longest files first (:data:`FILE_SECONDS` of the suite that runs); a file's own tests keep their order."""
    seconds = FILE_SECONDS["slow" if config.option.markexpr == "slow" else "default"]
    items.sort(key=lambda item: -seconds.get(item.path.name, 0))


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache for this module's in-process runs, restored to the previous settings
    afterwards."""
    import jax
    from jax._src import compilation_cache

    names = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla_cache")),
             "jax_persistent_cache_min_compile_time_secs": 0.0}
    old = {name: getattr(jax.config, name) for name in names}
    for name, value in names.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    yield
    for name, value in old.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
