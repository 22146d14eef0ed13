"""Loading and saving Hugging Face checkpoints (safetensors only; never pickle, never remote code).

``load_pretrained(local_dir)`` reads ``config.json`` with ``transformers.AutoConfig`` (local files only), builds
the model abstractly with ``nnx.eval_shape``, and places each tensor of the safetensors shards. Unknown
architectures, missing or unexpected tensors and shape mismatches raise errors naming the tensor.
``save_pretrained(model, dir)`` writes ``config.json`` and ``model.safetensors`` (float32, LoRA adapters merged)
that transformers' PyTorch classes load.
"""

from __future__ import annotations

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metarl_jax.models.config import ModelConfig
from metarl_jax.models.transformer import Transformer


def hf_names(config: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """HF tensor name -> (path of our parameter, whether the HF tensor is its transpose)."""
    names: dict[str, tuple[tuple, bool]] = {"model.embed_tokens.weight": (("embed",), False), "model.norm.weight": (("norm", "weight"), False)}
    if not config.tie_embeddings:
        names["lm_head.weight"] = (("lm_head", "kernel"), True)
    for i in range(config.num_layers):
        hf, ours = f"model.layers.{i}.", ("layers", i)
        names[hf + "input_layernorm.weight"] = (ours + ("input_norm", "weight"), False)
        names[hf + "post_attention_layernorm.weight"] = (ours + ("post_norm", "weight"), False)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names[hf + f"self_attn.{proj}.weight"] = (ours + ("attn", proj, "kernel"), True)
            if config.attention_bias:
                names[hf + f"self_attn.{proj}.bias"] = (ours + ("attn", proj, "bias"), False)
        if config.qk_norm:
            names[hf + "self_attn.q_norm.weight"] = (ours + ("attn", "q_norm", "weight"), False)
            names[hf + "self_attn.k_norm.weight"] = (ours + ("attn", "k_norm", "weight"), False)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names[hf + f"mlp.{proj}.weight"] = (ours + ("mlp", proj, "kernel"), True)
            if config.mlp_bias:
                names[hf + f"mlp.{proj}.bias"] = (ours + ("mlp", proj, "bias"), False)
    return names


def _variable(model, path):
    obj = model
    for p in path:
        obj = obj[p] if isinstance(p, int) else getattr(obj, p)
    return obj


def read_config(local_dir: str) -> ModelConfig:
    if not os.path.isdir(local_dir):
        raise FileNotFoundError(f"model directory {local_dir!r} does not exist (models are never downloaded)")
    if not os.path.exists(os.path.join(local_dir, "config.json")):
        raise FileNotFoundError(f"{local_dir!r} has no config.json; it is not a Hugging Face model directory")
    with open(os.path.join(local_dir, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if model_type not in ("qwen3", "llama"):
        raise ValueError(f"unsupported architecture model_type={model_type!r} in {local_dir}; supported: qwen3, llama")
    from transformers import AutoConfig

    return ModelConfig.from_hf(AutoConfig.from_pretrained(local_dir, local_files_only=True, trust_remote_code=False))


def _shards(local_dir: str) -> list[str]:
    index = os.path.join(local_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        missing = [s for s in files if not os.path.exists(os.path.join(local_dir, s))]
        if missing:
            raise FileNotFoundError(f"shard(s) {missing} listed in {index} are missing")
        return [os.path.join(local_dir, s) for s in files]
    files = sorted(glob.glob(os.path.join(local_dir, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {local_dir!r} (pickle checkpoints are not loaded)")
    return files


def load_pretrained(local_dir: str, dtype=jnp.float32, param_dtype=None, mesh=None) -> Transformer:
    """Loads a Qwen3 or Llama checkpoint from a local directory into a :class:`Transformer`.

    Args:
      dtype: compute dtype; ``param_dtype`` (default ``dtype``) is the storage dtype of the weights.
      mesh: a ``jax.sharding.Mesh``; the weights are then placed replicated on it.
    """
    from safetensors import safe_open

    config = read_config(local_dir)
    param_dtype = dtype if param_dtype is None else param_dtype
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), param_dtype=param_dtype, dtype=dtype))
    expected = hf_names(config)
    seen = set()
    sharding = None
    if mesh is not None:
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    for shard in _shards(local_dir):
        with safe_open(shard, framework="numpy") as f:
            for name in f.keys():
                if name not in expected:
                    if name.endswith("rotary_emb.inv_freq"):
                        continue
                    raise ValueError(f"unexpected tensor {name!r} in {shard} for a {config.model_type} model")
                path, transpose = expected[name]
                array = f.get_tensor(name)
                if transpose:
                    array = array.T
                var = _variable(model, path)
                if tuple(array.shape) != tuple(var.shape):
                    raise ValueError(
                        f"tensor {name!r} has shape {array.shape} (after transpose: {transpose}), expected {tuple(var.shape)}"
                    )
                value = jnp.asarray(np.ascontiguousarray(array), dtype=param_dtype)
                var.set_value(jax.device_put(value, sharding) if sharding is not None else value)
                seen.add(name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise ValueError(f"missing tensor(s) in {local_dir}: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return model


def save_pretrained(model: Transformer, out_dir: str) -> None:
    """Writes ``config.json`` and ``model.safetensors`` loadable by transformers' PyTorch classes."""
    from safetensors.numpy import save_file

    config = model.config
    os.makedirs(out_dir, exist_ok=True)
    hf = config.to_hf()
    hf.architectures = ["Qwen3ForCausalLM" if config.model_type == "qwen3" else "LlamaForCausalLM"]
    hf.save_pretrained(out_dir)
    tensors = {}
    for name, (path, transpose) in hf_names(config).items():
        if path[-1] == "kernel":  # LoRA adapters, if any, are merged into the saved weights
            array = np.asarray(_variable(model, path[:-1]).merged_kernel(), np.float32)
        else:
            array = np.asarray(_variable(model, path)[...], np.float32)
        tensors[name] = np.ascontiguousarray(array.T if transpose else array)
    tmp = os.path.join(out_dir, "model.safetensors.tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
