"""The built-in ``default`` config, addressable from a checkout (``--config=configs/default.py``); it lives in
``metarl_jax/configs/default.py``, whose docstring gives the command and the expected result."""

from metarl_jax.configs.default import *  # noqa: F401,F403
from metarl_jax.configs.default import get_config  # noqa: F401
