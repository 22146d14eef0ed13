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

import pathlib

NAMES = ("default", "tiny", "paper")


def path(name: str) -> str:
    """The file of the built-in config ``name`` (one of :data:`NAMES`), for ``--config=``."""
    if name not in NAMES:
        raise ValueError(f"unknown built-in config {name!r}; the built-in configs are {list(NAMES)}")
    return str(pathlib.Path(__file__).resolve().parent / f"{name}.py")
