"""``python -m metarl_jax.configs NAME``: prints the file of a built-in config, for ``--config=``."""

import sys

from metarl_jax.configs import NAMES, path

if len(sys.argv) != 2:
    sys.exit(f"usage: python -m metarl_jax.configs NAME  (NAME: one of {', '.join(NAMES)})")
try:
    print(path(sys.argv[1]))
except ValueError as error:
    sys.exit(str(error))
