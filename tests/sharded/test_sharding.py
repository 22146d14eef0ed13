"""Sharding on 8 fake CPU devices (run alone: ``python -m pytest -q tests/sharded``; see conftest.py).

- one GRPO ``train_step`` of the tiny config under data parallel and under FSDP gives the loss and updated
  params of the single-device step (within 1e-5), traces and compiles once over two calls, and constrains the
  rollout batch to the ``data`` axis;
- FSDP really shards the parameters (8 devices, not replicated), and keeps them sharded across steps;
- with LoRA adapters or prompt vectors trained and the rest frozen, the FSDP step equals the single-device one;
- a checkpoint saved from 8 devices restores onto 8 (same and other layout) and onto 1 device (in this process
  and in a fresh single-device process) with equal values;
- tensor parallel gives the single-device forward; ``make_mesh`` errors are clear; distributed start-up logic.

The step comparison uses the tiny config's model, tasks, GRPO settings and gradient clipping with plain SGD at
learning rate 1 in place of AdamW, so that "updated params" = params - clipped grads and 1e-5 bounds the
gradients themselves. (AdamW's first step maps g to lr * g / (|g| + eps): for entries with |g| near eps = 1e-8 it
turns the ~1e-9 reassociation noise of an 8-way all-reduce into ~1e-5 parameter differences, whatever the
sharding; measured 1.2e-5 under data parallel and 4.8e-5 under FSDP at lr 3e-3.)
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from metarl_jax import build
from metarl_jax import multihost
from metarl_jax import sharding as sh
from metarl_jax.algos.grpo import init_train_state, make_sharded_train_step, make_train_step
from metarl_jax.algos.optim import guard_non_finite
from metarl_jax.checkpoints import Checkpointer

ROOT = pathlib.Path(__file__).resolve().parents[2]
from metarl_jax.configs import tiny

DEVICES = 8
pytestmark = pytest.mark.skipif(
    jax.device_count() < DEVICES,
    reason=f"needs {DEVICES} devices, found {jax.device_count()}: run `python -m pytest -q tests/sharded` as its own "
           f"invocation (XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES} is set before jax is imported)")

KEY, KEY2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
TOL = 1e-5


def tiny_config():
    """configs/tiny.py with 4 tasks x 2 rollouts (8 rows per env: one per device), a 256-token context and no
    warmup (the first step moves the weights)."""
    c = tiny.get_config()
    c.num_tasks, c.group_size = 4, 2
    c.context_len = 256
    c.optimizer.warmup_steps = 0
    return c


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def max_diff(a, b):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    # booleans (the NaN guard's last_finite) as 0 / 1
    return max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0)) for x, y in zip(la, lb))


def find_leaf(tree, *names):
    """The first leaf whose key path mentions every one of ``names``."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if all(n in jax.tree_util.keystr(path) for n in names):
            return leaf
    raise KeyError(names)


@pytest.fixture(scope="module")
def run():
    return build.build_run(tiny_config())


@pytest.fixture(scope="module")
def sgd(run):
    return optax.chain(optax.clip_by_global_norm(tiny_config().optimizer.grad_clip), optax.sgd(1.0))


@pytest.fixture(scope="module")
def reference(run, sgd):
    """The single-device step: (initial state as numpy, updated state, metrics)."""
    state0 = jax.tree.map(np.asarray, init_train_state(run.model_state, sgd))
    step = jax.jit(make_train_step(run.graphdef, run.train_tasks, sgd, run.hyper))
    new, metrics = step(jax.device_put(state0, jax.devices()[0]), KEY)
    return state0, jax.tree.map(np.asarray, new), jax.device_get(metrics)


@pytest.fixture(scope="module")
def sharded(run, sgd, reference):
    """``get(mode)``: the mode's step run twice on an 8-device mesh (memoised)."""
    memo = {}

    def get(mode):
        if mode not in memo:
            state0 = reference[0]
            mesh = sh.make_mesh(data=-1, model=1)
            traces = []

            def count(fn):
                def counted(*args):
                    traces.append(1)
                    return fn(*args)
                return counted

            state = sh.shard_train_state(state0, mesh, mode)
            step = make_sharded_train_step(run.graphdef, run.train_tasks, sgd, run.hyper, state, mesh, mode, wrap=count)
            hlo = step.lower(state, KEY).as_text()
            new, metrics = step(state, KEY)
            first = (jax.tree.map(np.asarray, new), jax.device_get(metrics))
            new2, _ = step(new, KEY2)  # donates `new`; same shardings in and out, so no new trace or compile
            memo[mode] = {"mesh": mesh, "step": step, "traces": len(traces), "hlo": hlo, "new": first[0],
                          "metrics": first[1], "live": new2}
        return memo[mode]

    return get


@pytest.mark.parametrize("mode", ["data", "fsdp"])
def test_sharded_step_matches_single_device_and_compiles_once(mode, sharded, reference):
    state0, ref_new, ref_metrics = reference
    out = sharded(mode)
    moved = max_diff(ref_new.params, state0.params)
    assert moved > 1e-3, "the reference step must move the weights for the comparison to mean anything"
    d_loss = abs(float(out["metrics"]["loss"]) - float(ref_metrics["loss"]))
    d_params = max_diff(out["new"].params, ref_new.params)
    d_grad_norm = abs(float(out["metrics"]["grad_norm"]) - float(ref_metrics["grad_norm"]))
    print(f"\n{mode}: |d loss| = {d_loss:.3g}, max |d params| = {d_params:.3g}, |d grad_norm| = {d_grad_norm:.3g}, "
          f"max |update| = {moved:.3g}")
    assert d_loss <= TOL and d_params <= TOL and d_grad_norm <= TOL
    assert int(out["new"].step) == 1 and int(out["live"].step) == 2
    assert out["traces"] == 1, f"the {mode} step traced {out['traces']} times over lower + 2 calls"
    assert out["step"]._cache_size() == 1, "the second call recompiled"
    # The rollout batch is pinned to the data axis (XLA propagates it to the update).
    assert re.search(r'sharding_constraint[^\n]*\{"data"\}', out["hlo"]) or re.search(
        r"sharding_constraint[^\n]*devices=\[8", out["hlo"]), "no sharding constraint on the data axis in the step"


@pytest.mark.parametrize("trainable", ["lora", "prompt"])
def test_a_frozen_model_trains_under_fsdp_as_on_one_device(trainable, sgd):
    """LoRA adapters or prompt vectors, the rest frozen: the FSDP step gives the single-device update (within
    1e-5), the frozen part comes back bit-identical and sharded, and only the trained part has optimizer state."""
    c = tiny_config()
    c.trainable, c.lora.rank, c.prompt.length = trainable, 2, 3
    run_ = build.build_run(c)
    state0 = jax.tree.map(np.asarray, init_train_state(run_.model_state, sgd, trainable=build.trainable_filter(c)))
    ref, ref_metrics = jax.jit(make_train_step(run_.graphdef, run_.train_tasks, sgd, run_.hyper))(state0, KEY)
    mesh = sh.make_mesh(data=-1, model=1)
    state = sh.shard_train_state(state0, mesh, "fsdp")
    step = make_sharded_train_step(run_.graphdef, run_.train_tasks, sgd, run_.hyper, state, mesh, "fsdp")
    new, metrics = step(state, KEY)
    assert max_diff(ref.params, state0.params) > 1e-3, "the step must move what trains"
    assert max_diff(new.params, ref.params) <= TOL
    assert abs(float(metrics["loss"]) - float(ref_metrics["loss"])) <= TOL
    for x, y in zip(leaves(new.frozen), leaves(state0.frozen)):
        np.testing.assert_array_equal(x, y)
    embed = find_leaf(new.frozen, "embed")
    assert not embed.sharding.is_fully_replicated and len(embed.sharding.device_set) == DEVICES


def test_fsdp_params_are_sharded_and_stay_sharded(sharded):
    out = sharded("fsdp")
    embed = find_leaf(out["live"].params, "embed")
    s = embed.sharding
    assert isinstance(s, NamedSharding) and s.spec == P(None, "data"), s
    assert len(s.device_set) == DEVICES and not s.is_fully_replicated
    assert {sh_.data.shape for sh_ in embed.addressable_shards} == {(embed.shape[0], embed.shape[1] // DEVICES)}
    big = [x for x in jax.tree.leaves(out["live"].params) if x.size >= sh.MIN_SHARD_SIZE]
    assert big and all(not x.sharding.is_fully_replicated for x in big)
    data = sharded("data")["live"].params
    assert all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == DEVICES for x in jax.tree.leaves(data))


def test_tensor_parallel_forward_matches_single_device(run):
    from flax import nnx

    mesh = sh.make_mesh(data=2, model=4)
    params = run.model_state
    tp = sh.shard_train_state(params, mesh, "tensor")
    q = find_leaf(tp, "q_proj")
    o = find_leaf(tp, "o_proj")
    # stacked layer kernels [L, in, out]: never sharded on L; column-parallel q, row-parallel o
    assert q.sharding.spec == P(None, None, "model") and o.sharding.spec == P(None, "model", None)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 16), 0, 100)
    positions = jnp.broadcast_to(jnp.arange(16), (4, 16))

    def forward(p, t, pos):
        return nnx.merge(run.graphdef, p)(t, pos)[0]

    ref = jax.jit(forward)(params, tokens, positions)
    batch = sh.global_batch({"t": np.asarray(tokens), "p": np.asarray(positions)}, mesh, P("data"))
    got = jax.jit(forward)(tp, batch["t"], batch["p"])
    d = float(jnp.max(jnp.abs(got - ref)))
    print(f"\ntensor forward: max |d logits| = {d:.3g}")
    assert d <= TOL


# ------------------------------------------------------------------------------------------ checkpoints


_RESTORE_ON_ONE = r"""
import os, sys, json
import numpy as np
sys.path.insert(0, {tests!r})
import jax
from metarl_jax import build
from metarl_jax.algos.grpo import init_train_state
from metarl_jax.checkpoints import Checkpointer
from test_sharding import tiny_config
run = build.build_run(tiny_config())
template = init_train_state(run.model_state, run.optimizer)
with Checkpointer({ckpt!r}) as ckpt:
    state, key, config, step = ckpt.restore_latest(template, jax.random.PRNGKey(0))
kinds = sorted({{type(x.sharding).__name__ for x in jax.tree.leaves(state)}})
np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves(state)], key=np.asarray(key))
print(json.dumps(dict(devices=jax.device_count(), step=step, shardings=kinds)))
"""


@pytest.fixture(scope="module")
def saved_fsdp(run, tmp_path_factory):
    """A TrainState (AdamW with non-zero moments) sharded FSDP on 8 devices, saved at step 3."""
    mesh = sh.make_mesh()
    state = sh.shard_train_state(init_train_state(run.model_state, run.optimizer), mesh, "fsdp")
    shardings = sh.state_shardings(state, mesh, "fsdp")

    def fake_update(state):
        grads = jax.tree.map(lambda p: jnp.sin(p * 7.0), state.params)
        updates, opt = guard_non_finite(run.optimizer).update(grads, state.opt_state, state.params)
        return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt, step=state.step + 3)

    state = jax.jit(fake_update, out_shardings=shardings)(state)
    mu = find_leaf(state.opt_state, "mu", "embed")
    assert mu.sharding.spec == P(None, "data") and float(jnp.abs(mu).max()) > 0
    directory = tmp_path_factory.mktemp("sharded_ckpt") / "checkpoints"
    key = jax.random.PRNGKey(7)
    with Checkpointer(directory) as ckpt:
        ckpt.save(3, state, key, {"note": "saved from 8 devices"})
    return directory, state, key, mesh


@pytest.mark.parametrize("layout", ["fsdp-8", "tensor-2x4", "one-device"])
def test_checkpoint_from_8_devices_restores(layout, saved_fsdp):
    directory, state, key, mesh = saved_fsdp
    if layout == "fsdp-8":
        template = sh.abstract_train_state(state, mesh, "fsdp")
    elif layout == "tensor-2x4":
        template = sh.abstract_train_state(state, sh.make_mesh(2, 4), "tensor")
    else:
        template = sh.abstract_train_state(state, None, "none")
    with Checkpointer(directory) as ckpt:
        restored, rkey, config, step = ckpt.restore_latest(template, jax.random.PRNGKey(0))
    assert step == 3 and config == {"note": "saved from 8 devices"}
    assert max_diff(restored, state) == 0.0 and np.array_equal(np.asarray(rkey), np.asarray(key))
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(template)):
        if layout == "one-device":
            assert isinstance(got.sharding, SingleDeviceSharding) and len(got.sharding.device_set) == 1
        else:
            assert got.sharding.is_equivalent_to(want.sharding, got.ndim), (got.sharding, want.sharding)
    if layout == "fsdp-8":
        assert not find_leaf(restored.params, "embed").sharding.is_fully_replicated


def test_checkpoint_from_8_devices_restores_in_a_single_device_process(saved_fsdp, tmp_path):
    directory, state, key, _ = saved_fsdp
    out = tmp_path / "restored.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")))
    code = _RESTORE_ON_ONE.format(tests=str(pathlib.Path(__file__).parent), ckpt=str(directory), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"devices": 1, "step": 3, "shardings": ["SingleDeviceSharding"]}
    with np.load(out) as z:
        got = [z[f"arr_{i}"] for i in range(len(z.files) - 1)]
        assert np.array_equal(z["key"], np.asarray(key))
    want = leaves(state)
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))


# ----------------------------------------------------------------------------------- mesh and specs


def test_make_mesh_shapes():
    assert dict(sh.make_mesh().shape) == {"data": 8, "model": 1}
    assert dict(sh.make_mesh(-1, 2).shape) == {"data": 4, "model": 2}
    assert dict(sh.make_mesh(2, -1).shape) == {"data": 2, "model": 4}
    assert dict(sh.make_mesh(2, 2, devices=jax.devices()[:4]).shape) == {"data": 2, "model": 2}
    assert sh.make_mesh(1, 8).axis_names == ("data", "model")
    assert dict(sh.mesh_from_config({"mode": "none"}).shape) == {"data": 1, "model": 1}  # one device: a 1 x 1 mesh
    assert dict(sh.mesh_from_config({"mode": "tensor", "data": 1, "model": -1}).shape) == {"data": 1, "model": 8}


@pytest.mark.parametrize("args, message", [
    ((3,), r"data=3 x model=1 = 3 devices, but there are 8; .*sizes that divide 8: \[1, 2, 4, 8\]"),
    ((3, -1), r"8 devices do not divide by data=3; .*divisors: \[1, 2, 4, 8\]"),
    ((-1, 3), r"8 devices do not divide by model=3"),
    ((2, 2), r"data=2 x model=2 = 4 devices, but there are 8"),
    ((0, 1), r"data=0; axis sizes are positive integers or -1"),
    ((-1, -1), r"at most one of data / model may be -1"),
])
def test_make_mesh_errors_are_clear(args, message):
    with pytest.raises(ValueError, match=message):
        sh.make_mesh(*args)


def test_leaf_specs_and_spec_parsing():
    mesh = sh.make_mesh(2, 4)
    assert sh.leaf_spec((3972, 64), mesh, "fsdp") == P("data", None)  # the largest axis that divides
    mesh8 = sh.make_mesh()
    assert sh.leaf_spec((3972, 64), mesh8, "fsdp") == P(None, "data")  # 3972 % 8 != 0
    assert sh.leaf_spec((64, 192), mesh8, "fsdp") == P(None, "data")
    assert sh.leaf_spec((64,), mesh8, "fsdp") == P()  # small: replicated
    assert sh.leaf_spec((64, 192), mesh8, "data") == P()
    assert sh.leaf_spec((), mesh8, "fsdp") == P()
    assert sh.leaf_spec((1001, 1001), mesh8, "fsdp") == P()  # nothing divides: replicated
    path = (jax.tree_util.DictKey("mlp"), jax.tree_util.DictKey("down_proj"), jax.tree_util.DictKey("kernel"))
    assert sh.leaf_spec((192, 64), mesh, "tensor", path) == P("model", None)
    assert sh.leaf_spec((64, 192), mesh, "tensor") == P(None, "model")
    # Stacked decoder-layer parameters [L, ...] (under "layers") are never sharded on the layer axis L, even the
    # largest; they are sharded as one layer's parameter would be (and small per layer: replicated)
    def layer(*names):  # the key path of a stacked layer variable's value
        return tuple(map(jax.tree_util.GetAttrKey, ("layers", *names, "value")))

    assert sh.leaf_spec((8, 64, 192), mesh8, "fsdp", layer("mlp", "up_proj", "kernel")) == P(None, None, "data")
    assert sh.leaf_spec((8, 192, 64), mesh8, "fsdp", layer("mlp", "down_proj", "kernel")) == P(None, "data", None)
    assert sh.leaf_spec((256, 16, 128), mesh8, "fsdp", layer("attn", "k_proj", "kernel")) == P(None, None, "data")
    assert sh.leaf_spec((8, 64), mesh8, "fsdp", layer("input_norm", "weight")) == P()  # 64 per layer: small
    assert sh.leaf_spec((8, 192, 64), mesh, "tensor", layer("mlp", "down_proj", "kernel")) == P(None, "model", None)
    assert sh.leaf_spec((8, 64, 192), mesh, "tensor", layer("mlp", "up_proj", "kernel")) == P(None, None, "model")
    assert sh.leaf_spec((8, 512, 4), mesh, "tensor", layer("attn", "o_proj", "lora_a")) == P(None, "model", None)
    assert sh.leaf_spec((8, 4, 1024), mesh, "tensor", layer("attn", "q_proj", "lora_b")) == P(None, None, "model")
    assert sh.leaf_spec((8, 3, 1024), mesh8, "fsdp", layer("attn", "q_proj", "lora_b")) == P(None, None, "data")
    assert sh.mesh_spec("fsdp") == sh.MeshSpec(mode="fsdp")
    assert sh.mesh_spec({"mode": "tensor", "model": 4}) == sh.MeshSpec(mode="tensor", data=-1, model=4)
    with pytest.raises(ValueError, match="mesh mode 'zero3' is not one of"):
        sh.mesh_spec("zero3")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['shape'\]"):
        sh.mesh_spec({"mode": "data", "shape": 8})


def test_batch_that_does_not_split_is_refused(run):
    with pytest.raises(ValueError, match=r"2 \* 2 = 4 rollout rows per env do not split over the mesh's data axis of 8"):
        sh.check_batch(run.hyper.__class__(num_tasks=2, group_size=2), sh.make_mesh(), "data")


def test_global_batch_from_process_local_rows():
    mesh = sh.make_mesh(4, 2)
    local = {"x": np.arange(24, dtype=np.float32).reshape(8, 3), "y": np.arange(8)}
    out = sh.global_batch(local, mesh)
    assert out["x"].shape == (8, 3) and out["x"].sharding.spec == P("data")
    assert {s.data.shape for s in out["x"].addressable_shards} == {(2, 3)}
    assert np.array_equal(np.asarray(out["x"]), local["x"]) and np.array_equal(np.asarray(out["y"]), local["y"])


_LAUNCH_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID", "SLURM_NTASKS",
                "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES")


@pytest.mark.parametrize("flag, env, expected", [
    (None, {}, None),
    (False, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2"}, None),
    (None, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "1"}, None),
    (None, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     {"num_processes": 2, "process_id": 1}),
    (None, {"SLURM_JOB_ID": "42", "SLURM_NTASKS": "1"}, None),
    (None, {"SLURM_JOB_ID": "42", "SLURM_NTASKS": "4"}, {}),
    (None, {"OMPI_COMM_WORLD_SIZE": "2"}, {}),
    (None, {"TPU_WORKER_HOSTNAMES": "h0,h1"}, {}),
    (True, {}, {}),
])
def test_maybe_initialize_distributed(flag, env, expected, monkeypatch):
    calls = []
    for var in _LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    started = multihost.maybe_initialize_distributed(flag)
    assert started == (expected is not None)
    assert calls == ([] if expected is None else [expected])
