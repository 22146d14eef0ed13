"""Compiling runs' train steps ahead, in a process of their own, into JAX's persistent compilation cache.

A comparison (``python -m metarl_jax.main``, configs/default.py) trains an imitation prior and then two RL runs
from it. Each RL run's first step compiles its program, about a minute each on 2 CPU cores, while the prior's
training leaves a core partly idle (the tiny model's steps do not keep two cores busy). :class:`Precompiler`
compiles the RL runs' train steps in a child process while the prior trains; the runs then load them from the
cache (``jax_compilation_cache_dir``) instead of compiling. The child builds each run from its config with a
freshly initialized model of the prior's architecture (the prior's weights do not exist yet): the program depends
on the shapes, dtypes and settings only, so it is the one the run will ask for.

Nothing depends on the child: if it fails or is slow, a run compiles its own step as it always does.

Command (what the child runs)::

    python -m metarl_jax.precompile CONFIGS_PICKLE CACHE_DIR
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings


def compile_train_steps(configs, cache_dir: str) -> None:
    """Compiles (traces, lowers and compiles, without running) each config's train step into the persistent cache
    in ``cache_dir``. Each config must not need the weights it names: ``model.pretrained_dir`` empty."""
    import chex
    import jax

    from metarl_jax import sharding
    from metarl_jax.build import build_run
    from metarl_jax.train import initial_train_state, jitted_train_step

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    for config in configs:
        chex.clear_trace_counter()  # each config's step is another program, traced once
        run = build_run(config)
        mesh = sharding.mesh_from_config(config.mesh)
        state = initial_train_state(run, config, mesh)
        jitted_train_step(run, config, state, mesh).lower(state, jax.random.PRNGKey(config.seed)).compile()


class Precompiler:
    """Compiles ``configs``' train steps in a child process (:func:`compile_train_steps`) into ``cache_dir``.

    ``Precompiler(configs, cache_dir)`` starts it; :meth:`wait` waits for it to finish and returns its exit status
    (0: every program is in the cache). Its output goes to ``<cache_dir>/precompile.log``."""

    def __init__(self, configs, cache_dir: str):
        os.makedirs(cache_dir, exist_ok=True)
        fd, self._configs_file = tempfile.mkstemp(prefix="precompile_", suffix=".pkl", dir=cache_dir)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(list(configs), f)
        self.log_path = os.path.join(cache_dir, "precompile.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115  (the child writes it until wait())
        self._process = subprocess.Popen([sys.executable, "-m", "metarl_jax.precompile", self._configs_file, cache_dir],
                                         stdout=self._log, stderr=subprocess.STDOUT)
        self.status = None

    def wait(self) -> int:
        """Waits for the child; returns its exit status."""
        if self.status is None:
            self.status = self._process.wait()
            self._log.close()
            os.remove(self._configs_file)
        return self.status

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None and self._process.poll() is None:  # the parent failed: the programs are not needed
            self._process.kill()
            self.wait()
            return
        waiting = time.perf_counter()
        if self.wait() == 0:
            print(f"[precompile] the next runs' train steps are compiled (waited {time.perf_counter() - waiting:.0f} s "
                  "for them)", flush=True)
        else:
            warnings.warn(f"compiling the next runs' train steps ahead failed ({self.log_path}); each run compiles "
                          "its own", stacklevel=2)


def main(argv) -> None:
    configs_file, cache_dir = argv
    os.nice(19)  # the lowest CPU priority: take the cycles the prior's steps leave idle, not the prior's own
    with open(configs_file, "rb") as f:
        configs = pickle.load(f)
    compile_train_steps(configs, cache_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
