"""The in-context learner's network: a Flax NNX Qwen3/Llama transformer, KV cache and HF checkpoint I/O."""

from metarl_jax.models.config import PRESETS, ModelConfig, preset
from metarl_jax.models.hf_io import load_pretrained, read_config, save_pretrained
from metarl_jax.models.transformer import KVCache, Transformer, init_cache

__all__ = ["PRESETS", "ModelConfig", "preset", "load_pretrained", "read_config", "save_pretrained", "KVCache", "Transformer", "init_cache"]
