"""Scaling past one device with ``jax.sharding``: a ``("data", "model")`` mesh, sharded train states and steps.

Modes (``config.mesh.mode``):

- ``"none"``: one device, as a 1 x 1 mesh: every run takes the same jitted path (:func:`jit_on_mesh`).
- ``"data"``: data parallel. Parameters and optimizer state are replicated; the trial batch (the
  ``num_tasks * group_size`` rows each env plays per step) is sharded on ``"data"``; XLA all-reduces the grads.
- ``"fsdp"``: as ``"data"``, and every parameter (and its optimizer moments) is also sharded on ``"data"`` along
  its largest axis that the ``"data"`` size divides; XLA all-gathers them where they are used.
- ``"tensor"``: parameters sharded on ``"model"`` (column-parallel on their output axis, row-parallel on the
  input axis of ``o_proj`` / ``down_proj``), batch on ``"data"`` (of size 1 on a ``data=1, model=N`` mesh).

No pmap and no per-device code: states are placed with :class:`~jax.sharding.NamedSharding`, the step is one
``jax.jit`` with in/out shardings, and the rollout batch is pinned with ``jax.lax.with_sharding_constraint``;
XLA's partitioner inserts the collectives. Leaves with no divisible axis, or smaller than ``min_size``
elements, stay replicated. The decoder layers' parameters are stacked [L, ...] (any leaf under ``layers``):
they are never sharded on the layer axis L (the layer scan slices it), and are placed as one layer's
parameter would be, on the same axes shifted by one, and counted per layer against ``min_size``.

Usage::

    multihost.maybe_initialize_distributed(config.mesh.distributed)  # several hosts: before any other jax call
    mesh = make_mesh(config.mesh.data, config.mesh.model)
    state = shard_train_state(init_train_state(...), mesh, config.mesh.mode)
    step = grpo.make_sharded_train_step(graphdef, tasks, optimizer, hyper, state, mesh, config.mesh.mode)
    state, metrics = step(state, key)

Checkpoints: :class:`metarl_jax.checkpoints.Checkpointer` saves sharded arrays as they are (orbax writes each
shard from its owner) and restores into the template's shardings, so a template placed by
:func:`shard_train_state` (or :func:`abstract_train_state`) restores sharded, and a single-device template
restores onto one device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


AXES = ("data", "model")
MODES = ("none", "data", "fsdp", "tensor")
BATCH = P("data")  # the rows of a batch on the data axis
MIN_SHARD_SIZE = 1024  # leaves with fewer elements stay replicated under fsdp / tensor
ROW_PARALLEL = ("o_proj", "down_proj")  # tensor mode: shard these kernels on their input axis


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """``mode`` in :data:`MODES`; ``data``, ``model``: mesh axis sizes (``-1``: all remaining devices);
    ``distributed``: :func:`metarl_jax.multihost.maybe_initialize_distributed`'s flag (None: decide from the environment)."""

    mode: str = "none"
    data: int = -1
    model: int = 1
    distributed: bool | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mesh mode {self.mode!r} is not one of {MODES}")


def mesh_spec(spec) -> MeshSpec:
    """A :class:`MeshSpec` from a mode string, a MeshSpec, or a dict / ConfigDict with some of its fields."""
    if isinstance(spec, MeshSpec):
        return spec
    if spec is None:
        return MeshSpec()
    if isinstance(spec, str):
        return MeshSpec(mode=spec)
    get = spec.get if hasattr(spec, "get") else lambda k, d=None: getattr(spec, k, d)
    fields = {f.name: get(f.name, f.default) for f in dataclasses.fields(MeshSpec)}
    known = {f.name for f in dataclasses.fields(MeshSpec)}
    if hasattr(spec, "keys"):
        unknown = set(spec.keys()) - known
        if unknown:
            raise ValueError(f"mesh spec: unknown field(s) {sorted(unknown)}; fields: {sorted(known)}")
    return MeshSpec(**fields)


# ----------------------------------------------------------------------------------------------- mesh


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
    """A ``Mesh`` of shape ``(data, model)`` with axes ``("data", "model")`` over ``devices`` (default: all).

    One of ``data`` / ``model`` may be ``-1``: all the devices the other axis leaves. Raises ``ValueError``
    naming the device count when the sizes do not multiply to it.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if n == 0:
        raise ValueError("make_mesh: no devices")
    sizes = {"data": data, "model": model}
    for name, size in sizes.items():
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or (size < 1 and size != -1):
            raise ValueError(f"make_mesh: {name}={size!r}; axis sizes are positive integers or -1 (all remaining devices)")
    if data == -1 and model == -1:
        raise ValueError("make_mesh: at most one of data / model may be -1")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if -1 in sizes.values():
        if n % fixed:
            other = "model" if data == -1 else "data"
            raise ValueError(f"make_mesh: {n} devices do not divide by {other}={fixed}; choose a {other} size "
                             f"that divides {n} (divisors: {_divisors(n)})")
        sizes = {k: (n // fixed if v == -1 else v) for k, v in sizes.items()}
    elif fixed != n:
        raise ValueError(f"make_mesh: data={data} x model={model} = {fixed} devices, but there are {n}; the "
                         f"sizes must multiply to {n} (or set one to -1; sizes that divide {n}: {_divisors(n)})")
    grid = np.asarray(devices, dtype=object).reshape(sizes["data"], sizes["model"])
    if devices[0].platform == "tpu":  # a topology-aware order of the ICI torus; the plain order elsewhere
        from jax.experimental import mesh_utils

        with contextlib.suppress(Exception):  # the plain order is always valid
            grid = mesh_utils.create_device_mesh((sizes["data"], sizes["model"]), devices)
    return Mesh(grid, AXES)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def mesh_from_config(spec) -> Mesh:
    """The mesh of a :class:`MeshSpec`-like spec; mode ``"none"`` is a 1 x 1 mesh of the first local device, which
    a multi-process job refuses (each process would train a model of its own)."""
    spec = mesh_spec(spec)
    if spec.mode == "none" and jax.process_count() > 1:
        raise ValueError(f"config.mesh.mode='none' runs on one device, but this job has {jax.process_count()} "
                         "processes: set --config.mesh.mode=data (or fsdp, tensor) so that they train one model")
    return make_mesh(1, 1, devices=jax.local_devices()[:1]) if spec.mode == "none" else make_mesh(spec.data, spec.model)


# ----------------------------------------------------------------------------------------- parameters


def path_names(path) -> list[str]:
    """``["train_state", "params", "embed", "value"]`` from a jax key path (dict keys, attributes and indices
    alike)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return parts


def leaf_spec(shape, mesh: Mesh, mode: str, path=(), min_size: int = MIN_SHARD_SIZE) -> P:
    """The ``PartitionSpec`` of one state leaf of ``shape`` under ``mode`` (see the module docstring).

    A leaf whose ``path`` passes through ``layers`` and has at least 2 axes is a stacked decoder-layer
    parameter [L, ...]: axis 0 is never sharded, and the other axes are chosen as for one layer's parameter."""
    if mode not in MODES:
        raise ValueError(f"mesh mode {mode!r} is not one of {MODES}")
    shape = tuple(shape)
    names = path_names(path)
    first = 1 if "layers" in names and len(shape) >= 2 else 0  # the first axis that may be sharded
    if mode in ("none", "data") or not shape or math.prod(shape[first:]) < min_size:
        return P()
    axis_name = "data" if mode == "fsdp" else "model"
    size = mesh.shape[axis_name]
    if size == 1:
        return P()
    divisible = [i for i, d in enumerate(shape) if i >= first and d % size == 0]
    if not divisible:
        return P()
    if mode == "fsdp":
        axis = max(divisible, key=lambda i: (shape[i], -i))  # the largest; the first of equals
    else:
        row_parallel = any(r in names for r in ROW_PARALLEL) and len(shape) - first >= 2
        preferred = first if row_parallel else len(shape) - 1
        axis = preferred if preferred in divisible else max(divisible, key=lambda i: (shape[i], -i))
    spec = [None] * len(shape)
    spec[axis] = axis_name
    return P(*spec)


def state_shardings(state, mesh: Mesh, mode: str, min_size: int = MIN_SHARD_SIZE):
    """The ``NamedSharding`` tree of ``state`` (any pytree of arrays: a TrainState, params, opt state).

    Optimizer moments get the same spec as their parameter (same shape and path names); scalars such as the
    step counter are replicated.
    """
    mode = mesh_spec(mode).mode

    def one(path, leaf):
        return NamedSharding(mesh, leaf_spec(np.shape(leaf), mesh, mode, path, min_size))

    return jax.tree_util.tree_map_with_path(one, state)


def shard_train_state(state, mesh: Mesh, mode: str, min_size: int = MIN_SHARD_SIZE):
    """``state`` placed on ``mesh`` per ``mode`` (``jax.device_put`` with :func:`state_shardings`)."""
    return jax.device_put(state, state_shardings(state, mesh, mode, min_size))


def abstract_train_state(state, mesh: Mesh | None, mode: str, min_size: int = MIN_SHARD_SIZE):
    """``jax.ShapeDtypeStruct`` s of ``state`` carrying the target shardings (a checkpoint restore template);
    with ``mesh=None`` they carry the first local device's ``SingleDeviceSharding``."""
    if mesh is None:
        single = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=single), state)
    shardings = state_shardings(state, mesh, mode, min_size)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), state, shardings)


# ------------------------------------------------------------------------------------------ the batch


def batch_spec(mode: str) -> P:
    """The ``PartitionSpec`` of a batch's leading (row) axis: ``P("data")`` except in mode ``"none"``."""
    return P() if mesh_spec(mode).mode == "none" else BATCH


def constrain_batch(tree, mesh: Mesh, rows: int, spec: P = BATCH):
    """``with_sharding_constraint`` on every leaf of ``tree`` whose leading axis has ``rows`` entries
    (inside jit); other leaves pass through. ``rows`` must divide by the size of ``spec``'s first axis."""
    sharding = NamedSharding(mesh, spec)

    def one(x):
        if isinstance(x, jax.Array) and x.ndim >= 1 and x.shape[0] == rows:
            return jax.lax.with_sharding_constraint(x, sharding)
        return x

    return jax.tree.map(one, tree)


def global_batch(local, mesh: Mesh, spec: P = BATCH):
    """A global ``jax.Array`` tree from each process's local rows (``jax.make_array_from_process_local_data``).

    ``local`` holds this process's slice of the leading axis (numpy or jax arrays); with one process it is the
    whole batch. Every leaf is sharded per ``spec`` (a prefix spec applies to the leading axes)."""
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def check_batch(hp, mesh: Mesh, mode: str) -> None:
    """Raises ``ValueError`` when the per-env rollout batch does not split evenly over ``"data"``."""
    rows, size = hp.num_tasks * hp.group_size, mesh.shape["data"]
    if mesh_spec(mode).mode != "none" and rows % size:
        raise ValueError(f"num_tasks * group_size = {hp.num_tasks} * {hp.group_size} = {rows} rollout rows per env "
                         f"do not split over the mesh's data axis of {size} devices; make it a multiple of {size}")


def batch_constraint(mesh: Mesh, mode: str, rows: int):
    """``constrain(tree)``: :func:`constrain_batch` of a batch of ``rows`` rows per ``mode`` (a step's
    ``constrain_batch`` argument: the algorithm pins its rows without knowing the mesh)."""
    spec = batch_spec(mode)
    return lambda tree: constrain_batch(tree, mesh, rows, spec)


def row_constraint(mesh: Mesh, mode: str):
    """``constrain(tree, axis=0)``: every array leaf of ``tree`` (a batch: states, a KV cache's arrays) with its
    ``axis`` on the mesh's data axis (``axis=1`` for a stacked cache [L, B, ...]); the identity in mode
    ``"none"``. For micro-batches inside a step, whose row count differs from the batch's."""
    if mesh_spec(mode).mode == "none":
        return lambda tree, axis=0: tree

    def constrain(tree, axis=0):
        def one(x):
            if not isinstance(x, jax.Array) or x.ndim <= axis:
                return x
            spec = [None] * axis + ["data"]
            return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))

        return jax.tree.map(one, tree)

    return constrain


def jit_on_mesh(step, state, mesh: Mesh, mode: str, *, donate: bool = True, min_size: int = MIN_SHARD_SIZE):
    """``jax.jit`` of ``step(state, key) -> (state, metrics)`` on ``mesh``: ``state`` (concrete or abstract)
    fixes the in/out shardings (:func:`state_shardings`); the key and the metrics are replicated; the state is
    donated unless ``donate=False``. One device is a 1 x 1 mesh (mode ``"none"``): the same path."""
    shardings = state_shardings(state, mesh, mesh_spec(mode).mode, min_size)
    replicated = NamedSharding(mesh, P())
    return jax.jit(step, in_shardings=(shardings, replicated), out_shardings=(shardings, replicated),
                   donate_argnums=(0,) if donate else ())


def describe(state, max_leaves: int | None = None) -> str:
    """One line per leaf: path, shape and ``PartitionSpec`` (for logs)."""
    lines = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0][:max_leaves]:
        sharding = getattr(leaf, "sharding", None)
        spec = getattr(sharding, "spec", sharding)
        lines.append(f"{'/'.join(path_names(path))} {tuple(np.shape(leaf))} {spec}")
    return "\n".join(lines)


__all__ = [
    "AXES",
    "MODES",
    "MeshSpec",
    "abstract_train_state",
    "batch_spec",
    "check_batch",
    "constrain_batch",
    "describe",
    "global_batch",
    "leaf_spec",
    "make_mesh",
    "batch_constraint",
    "row_constraint",
    "jit_on_mesh",
    "path_names",
    "mesh_from_config",
    "mesh_spec",
    "shard_train_state",
    "state_shardings",
]
