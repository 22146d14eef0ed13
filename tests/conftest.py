import os
import sys

import pytest

# Tests run on CPU; keep XLA from grabbing every core's worth of threads per compile.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))


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
