"""Several processes, one job (JAX's multi-controller runtime, ``jax.distributed``): starting it from the launcher's
environment, which process writes the run's files (:func:`is_primary`), barriers (:func:`sync`) and compiling every
process's program before any of them runs it (:func:`compile_before_running`). ``docs/multi_host.md`` shows the
launch commands; with one process every function here is free.
"""

from __future__ import annotations

import itertools
import os

import jax


def _int_env(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


def multihost_env() -> str | None:
    """The launcher whose environment variables say this run spans several processes, or None.

    ``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES`` > 1 (or unset); SLURM (``SLURM_JOB_ID`` and
    ``SLURM_NTASKS`` > 1); Open MPI (``OMPI_COMM_WORLD_SIZE`` > 1); a multi-host Cloud TPU slice
    (``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES`` listing several hosts)."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS") and (_int_env("JAX_NUM_PROCESSES") or 2) > 1:
        return "jax"
    if "SLURM_JOB_ID" in env and (_int_env("SLURM_NTASKS") or 1) > 1:
        return "slurm"
    if (_int_env("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "ompi"
    for var in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
        if len([h for h in env.get(var, "").split(",") if h.strip()]) > 1:
            return "tpu"
    return None


def maybe_initialize_distributed(flag: bool | None = None, **kwargs) -> bool:
    """Calls ``jax.distributed.initialize(**kwargs)`` when ``flag`` is True, or when ``flag`` is None and
    :func:`multihost_env` finds a multi-process launch; ``False`` never initializes. Call it before any other
    jax call that touches devices. Returns whether the distributed runtime is up (already-initialized is
    not an error).

    With ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` fill ``num_processes`` /
    ``process_id`` unless given; other launchers are detected by jax itself.
    """
    if flag is False:
        return False
    if flag is None and multihost_env() is None:
        return False
    if jax.distributed.is_initialized():
        return True
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        for key, var in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
            if kwargs.get(key) is None and _int_env(var) is not None:
                kwargs[key] = _int_env(var)
    jax.distributed.initialize(**kwargs)
    return True


def is_primary() -> bool:
    """Whether this process writes the run's files and prints its tables: process 0 (the only one when single)."""
    return jax.process_index() == 0


_barriers = itertools.count()  # the coordination service wants a new name for every barrier


def sync(name: str, timeout_s: int = 3600) -> None:
    """Waits until every process of a multi-process job reaches the point called ``name`` (at most ``timeout_s``
    seconds); free with one process. A barrier of JAX's coordination service, not a device collective: those
    give up after 30 s on CPU (Gloo)."""
    if jax.process_count() > 1:
        from jax._src import distributed

        distributed.global_state.client.wait_at_barrier(f"metarl_jax {next(_barriers)}: {name}", timeout_s * 1000)


def compile_before_running(jitted, name: str):
    """``jitted`` (a ``jax.jit`` function) whose first call compiles it ahead (``lower(...).compile()``, which fills
    jit's own cache), waits until every process has compiled, and then runs it; ``jitted`` itself in a one-process
    job. A process that reaches the program's first collective waits only so long for the others (30 s on CPU),
    and one process may compile for much longer than another (process 0 alone writes JAX's persistent
    compilation cache, so after a restart it may load a program that the others compile)."""
    if jax.process_count() == 1:
        return jitted
    compiled = False

    def call(*args):
        nonlocal compiled
        if not compiled:
            jitted.lower(*args).compile()
            sync(f"{name} compiled")
            compiled = True
        return jitted(*args)

    return call
