"""Orbax checkpoints for the training loop: the ``TrainState``, the loop's PRNG key and the run's JSON config.

Each step is one orbax directory ``<directory>/<step>/`` with two items: ``state`` (a StandardSave of
``{"train_state": TrainState, "key": key}``) and ``config`` (a JsonSave of the config dict). Orbax writes a step
under ``<step>.orbax-checkpoint-tmp-<ts>`` and renames it when complete, so an interrupted save is never listed.
:meth:`Checkpointer.restore_latest` also survives a listed step that cannot be read (a truncated file after a
crash or full disk): it warns, moves that step aside to ``<step>.unreadable`` and falls back to the previous one.

Usage::

    ckpt = Checkpointer(workdir)
    restored = ckpt.restore_latest(train_state, key)        # templates: fresh state and key
    if restored is not None:
        train_state, key, saved_config, step = restored
    ...
    ckpt.save(step, train_state, key, config)               # async: returns once arrays are copied to host
    ckpt.close()                                            # waits for the last save
"""

from __future__ import annotations

import os
import warnings

import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
    """The checkpoint's tree structure or leaf shapes differ from the restore template."""


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


def _path_str(path) -> str:
    """``train_state/params/embed/value`` from a jax key path."""
    return "/".join(path_names(path))


def _flat(tree) -> dict:
    """``{path string: leaf}`` in the tree's flattening order."""
    return {_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _is_typed_key(key) -> bool:
    return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


class Checkpointer:
    """A thin wrapper on :class:`orbax.checkpoint.CheckpointManager` for (train_state, key, config).

    ``directory`` is made absolute (orbax requires it). ``max_to_keep`` most recent steps are kept; ``async_save``
    writes in a background thread after the device-to-host copy, so the saved arrays may be donated right after
    :meth:`save` returns. Single host: the unreadable-step fallback renames directories locally.
    """

    def __init__(self, directory, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                                 create=True),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler()},
        )

    def save(self, step: int, train_state, key, config: dict, force: bool = False) -> bool:
        """Saves ``step``; returns whether a save started (orbax skips steps <= the latest saved one).

        A typed key (``jax.random.key``) is stored as its raw key data. ``config`` must be JSON-serialisable
        (tuples come back as lists).
        """
        if _is_typed_key(key):
            key = jax.random.key_data(key)
        args = ocp.args.Composite(state=ocp.args.StandardSave({"train_state": train_state, "key": key}),
                                  config=ocp.args.JsonSave(dict(config)))
        return bool(self.manager.save(int(step), args=args, force=force))

    def latest_step(self) -> int | None:
        """The newest complete step (in-progress or interrupted saves are not listed), or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """All complete steps, ascending."""
        return sorted(self.manager.all_steps())

    def _check_against(self, step: int, template: dict) -> None:
        """Raises :class:`CheckpointMismatchError` naming the first leaf whose path or shape differs."""
        meta = self.manager.item_metadata(step)["state"]
        saved = _flat(meta) if meta is not None else {}
        if not saved:  # orbax returns None when the item's metadata file is missing or unreadable
            raise OSError(f"checkpoint step {step} in {self.directory}: no readable metadata for item 'state'")
        expected = _flat(template)
        hint = ("; the run's model/optimizer config differs from the one that wrote the checkpoint: use a fresh "
                "workdir or the original config")
        where = f"checkpoint step {step} in {self.directory}"
        for path, leaf in expected.items():
            want = tuple(leaf.shape)
            if path not in saved:
                raise CheckpointMismatchError(f"{where}: leaf {path!r} is missing (saved shape: absent, "
                                              f"expected shape {want}){hint}")
            got = tuple(getattr(saved[path], "shape", ()))
            if got != want:
                raise CheckpointMismatchError(f"{where}: leaf {path!r} has saved shape {got}, expected shape "
                                              f"{want}{hint}")
        for path, meta in saved.items():
            if path not in expected:
                raise CheckpointMismatchError(f"{where}: saved leaf {path!r} (saved shape "
                                              f"{tuple(getattr(meta, 'shape', ()))}) is not in the template "
                                              f"(expected shape: absent){hint}")

    def restore(self, step: int, template_train_state, template_key):
        """Restores ``step`` into the templates' structure, shapes, dtypes and shardings.

        Templates may be concrete arrays or ``jax.ShapeDtypeStruct`` s (e.g. from ``jax.eval_shape``); dtypes
        are cast to the template's. Returns ``(train_state, key, config)``; raises
        :class:`CheckpointMismatchError` (a ``ValueError``) when the saved tree does not fit the template.
        """
        self.manager.wait_until_finished()
        typed = _is_typed_key(template_key)
        raw_key = jax.random.key_data(template_key) if typed else template_key
        template = {"train_state": template_train_state, "key": raw_key}
        self._check_against(step, template)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self.manager.restore(int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                      config=ocp.args.JsonRestore()))
        key = out.state["key"]
        if typed:
            key = jax.random.wrap_key_data(key, impl=jax.random.key_impl(template_key))
        return out.state["train_state"], key, out.config

    def restore_latest(self, template_train_state, template_key):
        """Restores the newest readable step: ``(train_state, key, config, step)``, or None when there is none.

        A step that fails to read is skipped with a warning and renamed to ``<step>.unreadable`` so that later
        saves of that step number are not refused. A :class:`CheckpointMismatchError` is raised, not skipped.
        Raises ``RuntimeError`` if steps exist but none can be read.
        """
        self.manager.wait_until_finished()
        self.manager.reload()
        steps = self.all_steps()
        for step in reversed(steps):
            try:
                return (*self.restore(step, template_train_state, template_key), step)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 -- any read failure means "try the previous step"
                aside = self._set_aside(step)
                warnings.warn(f"checkpoint step {step} in {self.directory} is unreadable ({type(e).__name__}: "
                              f"{str(e)[:300]}); moved it to {aside} and falling back to an earlier step",
                              stacklevel=2)
        if steps:
            raise RuntimeError(f"no readable checkpoint in {self.directory} (tried steps {steps})")
        return None

    def _set_aside(self, step: int) -> str:
        """Renames ``<step>`` to ``<step>.unreadable[.N]`` (orbax ignores it) and reloads the step list."""
        src = os.path.join(self.directory, str(step))
        dst, n = f"{src}.unreadable", 0
        while os.path.exists(dst):
            n += 1
            dst = f"{src}.unreadable.{n}"
        os.rename(src, dst)
        self.manager.reload()
        return dst

    def wait(self) -> None:
        """Blocks until any in-flight async save is committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's resources."""
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
