"""Checksums of a checkpoint step: ``<step>/checksums.json`` records the step's number and the SHA-256 of each of its
files (:func:`write_manifest`, once the step has committed); :func:`verify_manifest` checks them before a restore,
so that one flipped byte anywhere in the step, a missing or extra file, or a step directory found under another
number is caught. :func:`tree_fingerprint` identifies the values of a tree of arrays (the frozen base weights that
LoRA adapters were trained on), and :func:`nonfinite_leaves` finds NaN and inf (a checkpoint must not hold them).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.sharding import path_names

MANIFEST = "checksums.json"  # in each step directory: the step number and the SHA-256 of every other file


class CorruptCheckpointError(OSError):
    """A checkpoint step's files differ from the checksums written when it was saved (or it sits under another
    step number than the one it was saved as)."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint step without a checksum manifest (saved by an older version, or stopped right after its
    commit) was restored without verification."""


def _file_digests(step_dir: str) -> dict[str, str]:
    """``{path relative to step_dir: sha256 hex}`` of every file under ``step_dir`` but the manifest."""
    out = {}
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if rel == MANIFEST:
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            out[rel] = digest.hexdigest()
    return dict(sorted(out.items()))


def write_manifest(step_dir: str, step: int) -> None:
    """Writes ``<step_dir>/checksums.json`` (atomically: a temporary file renamed) for the committed ``step``."""
    text = json.dumps({"step": int(step), "sha256": _file_digests(step_dir)}, indent=1)
    tmp = os.path.join(step_dir, f".{MANIFEST}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, MANIFEST))


def verify_manifest(step_dir: str, step: int) -> bool:
    """Checks ``step_dir``'s files against its manifest: True when they match, False when there is no manifest;
    raises :class:`CorruptCheckpointError` naming the first difference."""
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            manifest = json.load(f)
        saved_step, expected = int(manifest["step"]), dict(manifest["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(errno.EIO, f"{path} is damaged ({type(e).__name__}: {e})") from None
    if saved_step != step:
        raise CorruptCheckpointError(errno.EIO, f"{step_dir} holds checkpoint step {saved_step}, not step {step} "
                                     "(a step directory was renamed or copied over another)")
    actual = _file_digests(step_dir)
    for name in sorted(set(expected) | set(actual)):
        if expected.get(name) != actual.get(name):
            what = ("is missing" if name not in actual else "was not part of the save" if name not in expected
                    else "changed since it was saved (checksum mismatch)")
            raise CorruptCheckpointError(errno.EIO, f"checkpoint step {step}: {os.path.join(step_dir, name)} {what}")
    return True


@jax.jit
def _leaf_sums(leaves):
    """uint32[n]: each leaf's bits, as unsigned integers, weighted by odd position factors and summed modulo 2**32
    (integer sums: the same whatever the sharding)."""
    out = []
    for x in leaves:
        width = x.dtype.itemsize
        bits = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[width])
        words = bits.reshape(-1).astype(jnp.uint32)
        weights = (2 * jnp.arange(words.shape[0], dtype=jnp.uint32) + 1) * jnp.uint32(2654435761)
        out.append(jnp.sum(words * weights, dtype=jnp.uint32))
    return jnp.stack(out) if out else jnp.zeros((0,), jnp.uint32)


def tree_fingerprint(tree) -> str:
    """A SHA-256 hex digest of ``tree``'s structure, leaf shapes and dtypes and a position-weighted sum of each leaf's
    bits, computed on the device: any changed value, shape or leaf changes it (up to a 2**-32 chance per leaf)."""
    leaves, treedef = jax.tree.flatten(tree)
    digest = hashlib.sha256(str(treedef).encode())
    for x in leaves:
        digest.update(f"{tuple(x.shape)}{x.dtype}".encode())
    digest.update(np.asarray(jax.device_get(_leaf_sums(leaves))).tobytes())
    return digest.hexdigest()


@jax.jit
def _finite_flags(leaves):
    return jnp.stack([jnp.isfinite(x).all() for x in leaves])


def nonfinite_leaves(tree) -> list[str]:
    """Paths (``params/embed/value``) of the floating-point leaves of ``tree`` holding a NaN or inf."""
    flat = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    if not flat:
        return []
    flags = jax.device_get(_finite_flags([x for _, x in flat]))
    return ["/".join(path_names(p)) for (p, _), ok in zip(flat, flags) if not ok]
