import os
import sys

# Tests run on CPU; keep XLA from grabbing every core's worth of threads per compile.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running tests, run with `pytest -m slow`")
    config.addinivalue_line("markers", "peer: rule-conformance tests against GEM (needs gem-llm)")
