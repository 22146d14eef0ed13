"""The transformer family: parity with transformers' PyTorch Qwen3/Llama, KV cache, round trip, load errors."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metarl_jax.models import ModelConfig, Transformer, init_cache, load_pretrained, preset, save_pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6)


def torch_reference(kind, out_dir, **extra):
    """A randomly initialised PyTorch model saved with save_pretrained (safetensors)."""
    torch.manual_seed(0)
    if kind == "qwen3":
        cfg = transformers.Qwen3Config(**TINY, **extra)
        model = transformers.Qwen3ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**TINY, **extra)
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # non-trivial norm weights, so a mis-mapped norm shows up
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    return model


def torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


CASES = [("qwen3", {}), ("qwen3", {"tie_word_embeddings": True}), ("llama", {}), ("llama", {"attention_bias": True, "mlp_bias": True})]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c[0] + "".join(f"-{k}" for k in c[1]))
def pair(request, tmp_path_factory):
    kind, extra = request.param
    d = str(tmp_path_factory.mktemp(kind))
    ref = torch_reference(kind, d, **extra)
    return ref, load_pretrained(d), d


TOKENS = np.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, 24))


def positions(b, t):
    return jnp.broadcast_to(jnp.arange(t), (b, t))


def test_full_sequence_logits_match_pytorch(pair):
    ref, ours, _ = pair
    logits, _ = ours(jnp.asarray(TOKENS), positions(*TOKENS.shape))
    np.testing.assert_allclose(np.asarray(logits), torch_logits(ref, TOKENS), atol=1e-4, rtol=0)


def test_cached_prefill_and_decode_match_full_forward(pair):
    _, ours, _ = pair
    full, _ = ours(jnp.asarray(TOKENS), positions(*TOKENS.shape))
    cache = init_cache(ours.config, 2, 32)
    call = jax.jit(lambda tokens, pos, cache: ours(tokens, pos, cache))  # one compile per shape, not per call
    out, cache = call(jnp.asarray(TOKENS[:, :10]), positions(2, 10), cache)
    outs = [out]
    for t in range(10, 24):
        out, cache = call(jnp.asarray(TOKENS[:, t:t + 1]), jnp.full((2, 1), t), cache)
        outs.append(out)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full), atol=1e-5, rtol=0)
    assert np.asarray(cache.length).tolist() == [24, 24]


def test_left_padding_gives_the_unpadded_logits(pair):
    _, ours, _ = pair
    pad = 5
    padded = np.concatenate([np.zeros((2, pad), int), TOKENS[:, :12]], axis=1)
    mask = np.concatenate([np.zeros((2, pad), bool), np.ones((2, 12), bool)], axis=1)
    pos = np.concatenate([np.zeros((2, pad), int), np.arange(12)[None].repeat(2, 0)], axis=1)
    cache = init_cache(ours.config, 2, 32)
    padded_logits, _ = ours(jnp.asarray(padded), jnp.asarray(pos), cache, jnp.asarray(mask))
    plain, _ = ours(jnp.asarray(TOKENS[:, :12]), positions(2, 12))
    np.testing.assert_allclose(np.asarray(padded_logits[:, pad:]), np.asarray(plain), atol=1e-5, rtol=0)


def test_save_then_transformers_load_gives_same_logits(pair, tmp_path):
    ref, ours, _ = pair
    save_pretrained(ours, str(tmp_path))
    cls = transformers.Qwen3ForCausalLM if ours.config.model_type == "qwen3" else transformers.LlamaForCausalLM
    back = cls.from_pretrained(str(tmp_path)).eval()
    np.testing.assert_allclose(torch_logits(back, TOKENS), torch_logits(ref, TOKENS), atol=1e-5, rtol=0)


def test_decode_step_compiles_once():
    model = Transformer(preset("tiny", 50), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def decode(state, token, pos, cache):
        logits, cache = nnx.merge(graphdef, state)(token, pos, cache)
        return logits, cache

    cache = init_cache(model.config, 3, 16)
    for t in range(8):
        _, cache = decode(state, jnp.full((3, 1), t, jnp.int32), jnp.full((3, 1), t, jnp.int32), cache)
    chex.clear_trace_counter()
    assert np.asarray(cache.length).tolist() == [8, 8, 8]


def test_loading_errors_name_the_cause(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(str(tmp_path / "nowhere"))
    d = tmp_path / "ok"
    torch_reference("qwen3", str(d))
    # unsupported architecture
    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported architecture model_type='gpt2'"):
        load_pretrained(str(bad))
    # missing shard
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(d / "model.safetensors"))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((d / "config.json").read_text())
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:10]}, str(sharded / "a.safetensors"))
    weight_map = {k: ("a.safetensors" if i < 10 else "b.safetensors") for i, k in enumerate(names)}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(FileNotFoundError, match=r"shard\(s\) \['b.safetensors'\]"):
        load_pretrained(str(sharded))
    # shape mismatch
    wrong = dict(tensors)
    wrong["model.norm.weight"] = np.ones((7,), np.float32)
    os.remove(str(d / "model.safetensors"))
    save_file(wrong, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="'model.norm.weight' has shape \\(7,\\)"):
        load_pretrained(str(d))
    # missing tensor
    del wrong["model.norm.weight"]
    save_file(wrong, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="missing tensor.*model.norm.weight"):
        load_pretrained(str(d))


def test_model_config_refuses_uneven_heads_and_unknown_presets():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        ModelConfig(num_heads=6, num_kv_heads=4)
    with pytest.raises(KeyError, match="unknown model preset"):
        preset("huge", 10)


MESH_SCRIPT = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np
from metarl_jax.models import load_pretrained
d = sys.argv[1]
mesh = jax.make_mesh((2, 2), ("data", "model"))
model = load_pretrained(d, mesh=mesh)
kernel = model.layers.attn.q_proj.kernel[...]  # [L, in, out], every layer's
assert len(jax.devices()) == 4 and kernel.sharding.mesh.shape == mesh.shape, kernel.sharding
assert len(kernel.sharding.device_set) == 4
tokens = jnp.asarray(np.load(sys.argv[2]))
logits, _ = model(tokens, jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape))
np.save(sys.argv[3], np.asarray(logits))
"""


def test_load_onto_a_mesh_places_weights_on_every_device(tmp_path):
    import subprocess
    import sys

    d = str(tmp_path / "qwen3")
    ref = torch_reference("qwen3", d)
    np.save(tmp_path / "tokens.npy", TOKENS)
    script = tmp_path / "mesh.py"
    script.write_text(MESH_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # importable without an install too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    subprocess.run([sys.executable, str(script), d, str(tmp_path / "tokens.npy"), str(tmp_path / "out.npy")],
                   check=True, env=env, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), torch_logits(ref, TOKENS), atol=1e-4, rtol=0)


def test_decode_inside_lax_scan_matches_full_forward():
    model = Transformer(preset("tiny", TINY["vocab_size"]), rngs=nnx.Rngs(3))
    graphdef, state = nnx.split(model)
    tokens = jnp.asarray(TOKENS[:, :16])
    full, _ = model(tokens, positions(2, 16))

    @jax.jit
    def prefill_then_scan(state, tokens):
        m = nnx.merge(graphdef, state)
        first, cache = m(tokens[:, :4], positions(2, 4), init_cache(m.config, 2, 16))

        def step(cache, t):
            logits, cache = nnx.merge(graphdef, state)(jax.lax.dynamic_slice_in_dim(tokens, t, 1, axis=1), jnp.full((2, 1), t), cache)
            return cache, logits[:, 0]

        _, rest = jax.lax.scan(step, cache, jnp.arange(4, 16))
        return jnp.concatenate([first, jnp.swapaxes(rest, 0, 1)], axis=1)

    np.testing.assert_allclose(np.asarray(prefill_then_scan(state, tokens)), np.asarray(full), atol=1e-5, rtol=0)


def test_bfloat16_load_stores_bf16_and_stays_close(pair):
    ref, _, d = pair
    model = load_pretrained(d, dtype=jnp.bfloat16)
    assert model.layers.mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    logits, _ = model(jnp.asarray(TOKENS), positions(*TOKENS.shape))
    np.testing.assert_allclose(np.asarray(logits), torch_logits(ref, TOKENS), atol=5e-2, rtol=0)
