"""The built-in ``paper`` config, addressable from a checkout (``--config=configs/paper.py``); it lives in
``metarl_jax/configs/paper.py``, whose docstring gives the command and the expected result."""

from metarl_jax.configs.paper import *  # noqa: F401,F403
from metarl_jax.configs.paper import get_config  # noqa: F401
