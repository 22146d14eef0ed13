"""The built-in ``tiny`` config, addressable from a checkout (``--config=configs/tiny.py``); it lives in
``metarl_jax/configs/tiny.py``, whose docstring gives the command and the expected result."""

from metarl_jax.configs.tiny import *  # noqa: F401,F403
from metarl_jax.configs.tiny import get_config  # noqa: F401
