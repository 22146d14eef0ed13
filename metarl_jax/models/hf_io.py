"""Loading and saving Hugging Face checkpoints (safetensors only; never pickle, never remote code).

``load_pretrained(local_dir)`` reads ``config.json`` with ``transformers.AutoConfig`` (local files only), builds
the model abstractly with ``nnx.eval_shape``, and places each tensor of the safetensors shards. Bad input is
refused at load time, naming the cause: an unsupported architecture (``model_type`` / ``architectures`` other
than a Qwen3 or Llama causal LM), a quantized or unknown weight dtype (``torch_dtype``, ``quantization_config``,
float8 tensors), a compute dtype the backend cannot run, missing shards, pickle-only or corrupt weight files,
and missing, unexpected or mis-shaped tensors (named).
``save_pretrained(model, dir)`` writes ``config.json`` and ``model.safetensors`` (float32, LoRA adapters merged)
that transformers' PyTorch classes load. A model's prompt vectors (:mod:`metarl_jax.models.prompt`) go to
``prompt.safetensors`` beside them, which ``load_pretrained`` attaches again.

HF's per-layer tensors ``model.layers.{i}.…`` are slice i of our stacked layer parameters ([L, ...]).
"""

from __future__ import annotations

import errno
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metarl_jax.models.config import ModelConfig
from metarl_jax.models.prompt import PROMPT_FILE, add_prompt, load_prompt, save_prompt
from metarl_jax.models.transformer import Transformer


def hf_names(config: ModelConfig) -> dict[str, tuple[tuple, bool, int | None]]:
    """HF tensor name -> (path of our parameter, whether the HF tensor is its transpose, its layer: the index
    into the parameter's leading layer axis, or None for a parameter outside the stacked layers)."""
    names: dict[str, tuple[tuple, bool, int | None]] = {}
    def add(name, path, transpose, layer=None):
        names[name] = (path, transpose, layer)

    add("model.embed_tokens.weight", ("embed",), False)
    add("model.norm.weight", ("norm", "weight"), False)
    if not config.tie_embeddings:
        add("lm_head.weight", ("lm_head", "kernel"), True)
    for i in range(config.num_layers):
        hf, ours = f"model.layers.{i}.", ("layers",)
        add(hf + "input_layernorm.weight", ours + ("input_norm", "weight"), False, i)
        add(hf + "post_attention_layernorm.weight", ours + ("post_norm", "weight"), False, i)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            add(hf + f"self_attn.{proj}.weight", ours + ("attn", proj, "kernel"), True, i)
            if config.attention_bias:
                add(hf + f"self_attn.{proj}.bias", ours + ("attn", proj, "bias"), False, i)
        if config.qk_norm:
            add(hf + "self_attn.q_norm.weight", ours + ("attn", "q_norm", "weight"), False, i)
            add(hf + "self_attn.k_norm.weight", ours + ("attn", "k_norm", "weight"), False, i)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            add(hf + f"mlp.{proj}.weight", ours + ("mlp", proj, "kernel"), True, i)
            if config.mlp_bias:
                add(hf + f"mlp.{proj}.bias", ours + ("mlp", proj, "bias"), False, i)
    return names


def _variable(model, path):
    """The attribute of ``model`` at ``path`` (names), e.g. the stacked variable ("layers", "attn", "q_proj",
    "kernel")."""
    obj = model
    for p in path:
        obj = getattr(obj, p)
    return obj


# Causal-LM classes whose weights ``hf_names`` maps, per config.json ``model_type``.
ARCHITECTURES = {"qwen3": ("Qwen3ForCausalLM",), "llama": ("LlamaForCausalLM",)}
# Storage dtypes a checkpoint may declare (config.json ``torch_dtype`` / ``dtype``) and hold (safetensors
# dtype codes); the weights are cast to the model's ``param_dtype`` when loaded.
STORAGE_DTYPES = ("float32", "bfloat16", "float16", "float64")
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
# Compute / parameter dtypes the model runs in on every backend (float64 also needs ``jax_enable_x64``).
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}; it must be the JSON file saved with the model") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data


# config.json's sizes: each a positive int when present.
SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim")


def check_hf_config(raw: dict, where: str) -> None:
    """Refuses a ``config.json`` this library cannot run, naming the field and the cause.

    Checks ``model_type`` (qwen3 or llama), the sizes (:data:`SIZE_FIELDS`: positive ints), ``architectures`` (a
    causal LM of that type), the declared weight
    dtype (``torch_dtype`` / ``dtype``: one of :data:`STORAGE_DTYPES`; float8 and integer types are quantized
    checkpoints) and ``quantization_config`` (not supported).
    """
    model_type = raw.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unsupported architecture model_type={model_type!r} in {where}; supported: "
                         f"{', '.join(ARCHITECTURES)} (a Qwen3 or Llama causal LM)")
    for field in SIZE_FIELDS:
        value = raw.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31):
            raise ValueError(f"{field}={value!r} in {where} must be a positive int below 2**31; the config.json is "
                             "damaged or not the one saved with these weights")
    archs = raw.get("architectures")
    if archs is not None:
        if isinstance(archs, str):
            archs = [archs]
        if not isinstance(archs, list) or not any(a in ARCHITECTURES[model_type] for a in archs):
            raise ValueError(f"unsupported architectures={archs!r} in {where} for model_type={model_type!r}; "
                             f"metarl_jax loads {' or '.join(ARCHITECTURES[model_type])} (a causal LM with "
                             "lm_head); give the directory of the causal-LM checkpoint")
    for key in ("torch_dtype", "dtype"):
        value = raw.get(key)
        if value is None or value == "auto":
            continue
        name = str(value).removeprefix("torch.")
        if name not in STORAGE_DTYPES:
            quantized = name.startswith(("float8", "int", "uint", "float4")) or name in ("fp8", "fp4", "e4m3", "e5m2")
            why = (f"a quantized dtype, which cannot run here: metarl_jax has no float8 / integer kernels on any "
                   f"backend (this one: {jax.default_backend()}); dequantize the checkpoint first (e.g. save it in "
                   "bfloat16 with transformers)" if quantized else "not a dtype name")
            raise ValueError(f"{key}={value!r} in {where} is {why}; supported weight dtypes: {', '.join(STORAGE_DTYPES)}")
    if raw.get("quantization_config"):
        method = raw["quantization_config"].get("quant_method", "?") if isinstance(raw["quantization_config"], dict) else "?"
        raise ValueError(f"{where} describes a quantized checkpoint (quantization_config, quant_method={method!r}); "
                         "metarl_jax loads float weights only: dequantize it first (e.g. save it in bfloat16 with transformers)")


def check_compute_dtype(dtype, name: str = "dtype") -> None:
    """Refuses a compute / parameter dtype the default backend cannot run, naming the backend."""
    try:
        dt = jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"{name}={dtype!r} is not a dtype; use one of {', '.join(COMPUTE_DTYPES)}") from e
    platform = jax.default_backend()
    if dt.name == "float64" and jax.config.jax_enable_x64:
        return
    if dt.name not in COMPUTE_DTYPES:
        extra = " (float64 needs jax.config.update('jax_enable_x64', True))" if dt.name == "float64" else ""
        raise ValueError(f"{name}={dt.name} cannot run on this {platform} backend{extra}; the model runs in "
                         f"{', '.join(COMPUTE_DTYPES)} (bfloat16 halves the memory of float32)")


def _check_link(path: str) -> None:
    """Refuses a symbolic link that leads nowhere, naming it: a loop (``OSError`` ELOOP) or a missing target
    (``FileNotFoundError``), which would otherwise read as a missing file or a truncated download."""
    if not os.path.islink(path):
        return
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{path} is a symbolic link loop (it leads back to itself); replace it with "
                          "the file or a link to the file") from None
        raise FileNotFoundError(f"{path} is a broken symbolic link (to {os.readlink(path)!r}, which does not "
                                "exist); replace it with the file or fix the link") from None


def read_config(local_dir: str) -> ModelConfig:
    """The :class:`ModelConfig` of a local Hugging Face model directory (``config.json``, checked first with
    :func:`check_hf_config`; nothing is downloaded)."""
    if not os.path.isdir(local_dir):
        raise FileNotFoundError(f"model directory {local_dir!r} does not exist (models are never downloaded)")
    path = os.path.join(local_dir, "config.json")
    _check_link(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{local_dir!r} has no config.json; it is not a Hugging Face model directory")
    check_hf_config(_read_json(path), path)
    from transformers import AutoConfig

    return ModelConfig.from_hf(AutoConfig.from_pretrained(local_dir, local_files_only=True, trust_remote_code=False))


def _shards(local_dir: str) -> list[str]:
    index = os.path.join(local_dir, "model.safetensors.index.json")
    _check_link(index)
    if os.path.exists(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no 'weight_map' (tensor name -> shard file); re-save the model")
        files = sorted(set(weight_map.values()))
        root = os.path.realpath(local_dir)
        outside = [s for s in files if os.path.commonpath([root, os.path.realpath(os.path.join(root, s))]) != root]
        if outside:
            raise ValueError(f"{index} points to shard(s) {outside} outside {local_dir}; every shard must be a file of "
                             "the model directory (re-save the model, or fix the index's weight_map)")
        for s in files:
            _check_link(os.path.join(local_dir, s))
        missing = [s for s in files if not os.path.exists(os.path.join(local_dir, s))]
        if missing:
            raise FileNotFoundError(f"shard(s) {missing} listed in {index} are missing; copy every shard of the "
                                    "checkpoint into the directory")
        return [os.path.join(local_dir, s) for s in files]
    files = sorted(f for f in glob.glob(os.path.join(local_dir, "*.safetensors")) if os.path.basename(f) != PROMPT_FILE)
    for path in files:
        _check_link(path)
    if not files:
        others = sorted(os.path.basename(p) for p in glob.glob(os.path.join(local_dir, "*.bin")) + glob.glob(os.path.join(local_dir, "*.pt")))
        found = f" (found {others}: pickle checkpoints are never loaded; convert them to safetensors)" if others else ""
        raise FileNotFoundError(f"no .safetensors weights in {local_dir!r}{found}; copy the checkpoint's "
                                "*.safetensors files (and model.safetensors.index.json when sharded) into it")
    return files


def load_pretrained(local_dir: str, dtype=jnp.float32, param_dtype=None, mesh=None, remat: str = "none") -> Transformer:
    """Loads a Qwen3 or Llama checkpoint from a local directory into a :class:`Transformer`.

    Args:
      dtype: compute dtype; ``param_dtype`` (default ``dtype``) is the storage dtype of the weights.
      mesh: a ``jax.sharding.Mesh``; the weights are then placed replicated on it.
      remat: the per-layer rematerialisation policy of the training pass (see :class:`Transformer`).

    Raises ``FileNotFoundError`` (no directory, no config.json, no safetensors weights, missing shards) or
    ``ValueError`` (unsupported architecture or dtype, quantized or corrupt weights, missing, unexpected or
    mis-shaped tensors), each naming the cause and the fix.
    """
    from safetensors import safe_open

    config = read_config(local_dir)
    param_dtype = dtype if param_dtype is None else param_dtype
    check_compute_dtype(dtype, "dtype")
    check_compute_dtype(param_dtype, "param_dtype")
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), param_dtype=param_dtype, dtype=dtype,
                                               remat=remat))
    expected = hf_names(config)
    seen: dict[str, str] = {}  # tensor name -> the file it came from
    stacks: dict[tuple, np.ndarray] = {}  # path -> the stacked layer parameter, assembled on the host
    sharding = None
    if mesh is not None:
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    for shard in _shards(local_dir):
        try:
            handle = safe_open(shard, framework="numpy")
        except Exception as e:  # safetensors raises its own SafetensorError on a corrupt or truncated file
            raise ValueError(f"cannot read weights file {shard}: {e}; it is not a valid safetensors file "
                             "(truncated download or another format)") from e
        with handle as f:
            for name in f.keys():
                if name not in expected:
                    if name.endswith("rotary_emb.inv_freq"):
                        continue
                    raise ValueError(f"unexpected tensor {name!r} in {shard} for a {config.model_type} model as "
                                     "described by config.json; the weights belong to another architecture or size")
                stored = f.get_slice(name).get_dtype()
                if stored not in SAFETENSORS_DTYPES:
                    raise ValueError(f"tensor {name!r} in {shard} is stored as {stored}, which cannot be loaded "
                                     f"(float8 and integer tensors are quantized weights); supported: "
                                     f"{', '.join(SAFETENSORS_DTYPES)}. Dequantize the checkpoint first")
                if name in seen:
                    raise ValueError(f"tensor {name!r} is stored twice: in {seen[name]} and in {shard}; a stale weights "
                                     f"file lies in {local_dir} (remove the files that are not part of the checkpoint)")
                path, transpose, layer = expected[name]
                array = f.get_tensor(name)
                _check_values(array, name, shard, param_dtype)
                if transpose:
                    array = array.T
                var = _variable(model, path)
                shape = tuple(var.shape) if layer is None else tuple(var.shape[1:])
                if tuple(array.shape) != shape:
                    raise ValueError(
                        f"tensor {name!r} has shape {array.shape} (after transpose: {transpose}), expected "
                        f"{shape} from config.json; the weights and config.json do not match (use the "
                        "config.json saved with these weights)"
                    )
                if layer is None:
                    _place(var, array, param_dtype, sharding)
                else:
                    if path not in stacks:
                        stacks[path] = np.empty(var.shape, np.dtype(param_dtype))
                    stacks[path][layer] = array
                seen[name] = shard
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise ValueError(f"missing tensor(s) in {local_dir}: {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                         f"({len(missing)} of {len(expected)} that config.json implies); copy every weight file "
                         "of the checkpoint, or use the config.json saved with these weights")
    for path, stack in stacks.items():  # complete now: every layer's tensor was seen
        _place(_variable(model, path), stack, param_dtype, sharding)
    prompt = load_prompt(local_dir)  # a learned initial context saved beside the weights (checked finite there)
    if prompt is not None:
        add_prompt(model, prompt.shape[0], nnx.Rngs(0), jax.device_put(jnp.asarray(prompt, jnp.float32), sharding))
    return model


def _check_values(array: np.ndarray, name: str, shard: str, param_dtype) -> None:
    """Refuses NaN or infinite weights, and finite ones beyond ``param_dtype``'s range (they would become inf)."""
    if array.dtype.kind == "V":  # bfloat16 (ml_dtypes): checked in float32, which holds every bfloat16 value
        array = array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating) or not array.size:
        return
    finite = np.isfinite(array)
    if not finite.all():
        raise ValueError(f"tensor {name!r} in {shard} holds {int((~finite).sum())} NaN or infinite value(s); the "
                         "checkpoint is corrupt or was saved after a diverged run: use another checkpoint")
    limit = float(jnp.finfo(param_dtype).max)
    if float(np.finfo(array.dtype).max) > limit:  # a wider stored dtype: its values may not fit
        largest = float(np.abs(array).max())
        if largest > limit:
            raise ValueError(f"tensor {name!r} in {shard} holds a value of magnitude {largest:.3g}, beyond the "
                             f"largest {jnp.dtype(param_dtype).name} ({limit:.3g}): it would load as inf; rescale the "
                             "checkpoint or load it with a wider param_dtype")


def _place(var, array, param_dtype, sharding) -> None:
    """Sets ``var`` to the host ``array`` in ``param_dtype``, placed per ``sharding`` (None: the default device)."""
    value = jnp.asarray(np.ascontiguousarray(array), dtype=param_dtype)
    var.set_value(jax.device_put(value, sharding) if sharding is not None else value)


def save_pretrained(model: Transformer, out_dir: str) -> None:
    """Writes ``config.json`` and ``model.safetensors`` loadable by transformers' PyTorch classes, and the model's
    prompt vectors, if any, as ``prompt.safetensors`` (:mod:`metarl_jax.models.prompt`)."""
    from safetensors.numpy import save_file

    config = model.config
    os.makedirs(out_dir, exist_ok=True)
    hf = config.to_hf()
    hf.architectures = ["Qwen3ForCausalLM" if config.model_type == "qwen3" else "LlamaForCausalLM"]
    hf.save_pretrained(out_dir)
    tensors = {}
    values: dict[tuple, np.ndarray] = {}  # path -> the (stacked) parameter on the host, read once
    for name, (path, transpose, layer) in hf_names(config).items():
        if path not in values:
            if path[-1] == "kernel":  # LoRA adapters, if any, are merged into the saved weights
                values[path] = np.asarray(_variable(model, path[:-1]).merged_kernel(), np.float32)
            else:
                values[path] = np.asarray(_variable(model, path)[...], np.float32)
        array = values[path] if layer is None else values[path][layer]
        tensors[name] = np.ascontiguousarray(array.T if transpose else array)
    tmp = os.path.join(out_dir, "model.safetensors.tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
    if model.prompt is not None:
        save_prompt(model, out_dir)
