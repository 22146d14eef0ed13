"""Configuration of the decoder-only transformer family (Qwen3, Llama) and small from-scratch presets."""

from __future__ import annotations

import dataclasses
from typing import Any

SUPPORTED_MODEL_TYPES = ("qwen3", "llama")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a causal transformer.

    Attributes:
      model_type: "qwen3" (q/k RMSNorm per head) or "llama".
      vocab_size, hidden_size, intermediate_size, num_layers: the usual sizes.
      num_heads, num_kv_heads, head_dim: grouped-query attention (num_heads % num_kv_heads == 0).
      rope_theta: RoPE base; rms_norm_eps: RMSNorm epsilon.
      tie_embeddings: the output projection reuses the token embedding.
      attention_bias: q/k/v/o projections have biases (some Llama variants); mlp_bias likewise for the MLP.
    """

    model_type: str = "qwen3"
    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads} (grouped-query attention)"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "qwen3"

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_hf(cls, hf_config: Any) -> "ModelConfig":
        """From a ``transformers`` config object (``AutoConfig.from_pretrained(local_dir)``)."""
        model_type = getattr(hf_config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported architecture model_type={model_type!r}; metarl_jax loads {SUPPORTED_MODEL_TYPES}"
            )
        rope = getattr(hf_config, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type != "default":
            raise ValueError(f"rope_type {rope_type!r} is not supported yet (only 'default' RoPE)")
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {hf_config.hidden_act!r} is not supported (SwiGLU with silu only)")
        heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
        return cls(
            model_type=model_type,
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            rope_theta=float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))),
            rms_norm_eps=float(hf_config.rms_norm_eps),
            tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            attention_bias=bool(getattr(hf_config, "attention_bias", False)),
            mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
        )

    def to_hf(self):
        """The equivalent ``transformers`` config (for ``save_pretrained``)."""
        from transformers import LlamaConfig, Qwen3Config

        common = dict(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim, rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_embeddings, attention_bias=self.attention_bias,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
        )
        if self.model_type == "qwen3":
            return Qwen3Config(**common)
        return LlamaConfig(mlp_bias=self.mlp_bias, **common)


PRESETS = {
    # From-scratch models for CPU runs.
    "tiny": ModelConfig(hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16),
    "small": ModelConfig(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8, num_kv_heads=4, head_dim=32),
}


def preset(name: str, vocab_size: int) -> ModelConfig:
    """A from-scratch preset (``tiny``, ``small``) with the given vocabulary size."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name].replace(vocab_size=vocab_size)


# The released Qwen3 dense models' shapes (the ``config.json`` of each Hugging Face checkpoint): hidden size,
# MLP width, layers, query heads, tied embeddings. All have 8 kv heads of 128 dims, a 151,936-token vocabulary,
# RoPE theta 1e6 and RMSNorm epsilon 1e-6.
QWEN3_SIZES = {
    "0.6B": (1024, 3072, 28, 16, True),
    "1.7B": (2048, 6144, 28, 16, True),
    "4B": (2560, 9728, 36, 32, True),
    "8B": (4096, 12288, 36, 32, False),
    "14B": (5120, 17408, 40, 40, False),
}


def qwen3_config_json(size: str, **overrides) -> dict:
    """The ``config.json`` dict of a Qwen3 size (a key of :data:`QWEN3_SIZES`), as its checkpoint ships it;
    ``overrides`` replace fields (e.g. ``num_hidden_layers`` for a shallower random model of the same widths).
    Written to a directory it loads with :func:`metarl_jax.models.hf_io.read_config`, no weights needed."""
    if size not in QWEN3_SIZES:
        raise KeyError(f"unknown Qwen3 size {size!r}; sizes: {list(QWEN3_SIZES)}")
    hidden, mlp, layers, heads, tied = QWEN3_SIZES[size]
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": hidden,
        "intermediate_size": mlp, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": tied, "attention_bias": False,
        "attention_dropout": 0.0, "torch_dtype": "bfloat16", "bos_token_id": 151643, "eos_token_id": 151645,
        **overrides,
    }
