"""8 fake CPU devices for the sharding tests: ``python -m pytest -q tests/sharded`` (its own invocation).

XLA reads ``--xla_force_host_platform_device_count`` once, when jax initialises its backends, so the flag is set
in ``pytest_configure`` (before any test module imports jax) and only when every path on the command line lies
in this directory: the main suite (``python -m pytest``) keeps its single device, and these tests skip there.
"""

import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
DEVICES = 8
FLAG = f"--xla_force_host_platform_device_count={DEVICES}"


def _dedicated(config) -> bool:
    """Whether every command-line path (``config.args``, node ids stripped) is in or under this directory."""
    base = pathlib.Path(config.invocation_params.dir)
    paths = [(base / a.split("::")[0]).resolve() for a in config.args]
    return bool(paths) and all(p == HERE or HERE in p.parents for p in paths)


def pytest_configure(config):
    if "jax" in sys.modules or not _dedicated(config):
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
