"""The built-in run configs, one ``ml_collections`` file each (its docstring gives the command and the expected
result):

* ``default``: the README's main run (ORBIT against single-episode RL on GuessTheNumber, 2 CPU cores);
* ``tiny``: a smoke run of seconds (the tests' config);
* ``paper``: ORBIT's published setting (a pretrained Qwen3 on accelerators).

They ship with the package, so ``python -m metarl_jax.main`` finds its default from an installed copy. A file
is given to ``--config`` by path (``--config=$(python -m metarl_jax.configs paper):orbit``, or
``configs/paper.py`` in a checkout, whose ``configs/`` files load these).
"""

from __future__ import annotations

import importlib.util
import inspect
import pathlib

NAMES = ("default", "tiny", "paper")
VARIANTS = ("orbit", "single", "compare")  # the built-in config files' argument (``path.py:<variant>``)


def path(name: str) -> str:
    """The file of the built-in config ``name`` (one of :data:`NAMES`), for ``--config=``."""
    if name not in NAMES:
        raise ValueError(f"unknown built-in config {name!r}; the built-in configs are {list(NAMES)}")
    return str(pathlib.Path(__file__).resolve().parent / f"{name}.py")


def check_variant(variant: str) -> bool:
    """Whether a config file's ``variant`` argument trains single-episode trials; ``ValueError`` for an unknown one.
    ``"compare"`` gives the ORBIT run's config: the command line trains it and the single-episode baseline."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; choose one of {list(VARIANTS)} (path.py:<variant>)")
    return variant == "single"


def requested_variant(spec: str) -> str:
    """The variant a ``--config`` value asks for: the text after ``:`` in ``path.py:variant``, else the default of the
    file's ``get_config`` argument ("" when it takes none)."""
    file, _, variant = spec.partition(":")
    if variant:
        return variant
    loader = importlib.util.spec_from_file_location("_metarl_config_file", file)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    params = list(inspect.signature(module.get_config).parameters.values())
    return params[0].default if params and isinstance(params[0].default, str) else ""
