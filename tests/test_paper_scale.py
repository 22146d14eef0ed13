"""The paper-scale path: real Qwen3 configs load, and their parameter counts are the released models'."""

import json

import pytest

from metarl_jax.models.config import QWEN3_SIZES, qwen3_config_json
from metarl_jax.models.hf_io import read_config

# Parameter counts of the released checkpoints (their model cards), in billions.
RELEASED = {"0.6B": 0.6, "1.7B": 1.7, "4B": 4.0, "8B": 8.2, "14B": 14.8}


@pytest.mark.parametrize("size", list(QWEN3_SIZES))
def test_qwen3_configs_load_with_the_released_parameter_counts(size, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(qwen3_config_json(size)))
    c = read_config(str(tmp_path))
    assert (c.model_type, c.vocab_size, c.num_kv_heads, c.head_dim, c.rope_theta) == ("qwen3", 151936, 8, 128, 1e6)
    per_layer = (c.hidden_size * c.num_heads * c.head_dim * 2 + 2 * c.hidden_size * c.num_kv_heads * c.head_dim
                 + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size + 2 * c.head_dim)
    total = c.num_layers * per_layer + c.vocab_size * c.hidden_size * (1 if c.tie_embeddings else 2) + c.hidden_size
    assert abs(total / 1e9 - RELEASED[size]) < 0.05, total
