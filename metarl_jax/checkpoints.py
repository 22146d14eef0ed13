"""Orbax checkpoints for the training loop: the ``TrainState``, the loop's PRNG key and the run's JSON config.

Each step is one orbax directory ``<directory>/<step>/`` with two items: ``state`` (a StandardSave of
``{"train_state": TrainState, "key": key}``) and ``config`` (a JsonSave of the config dict).

Faults (tested by ``tests/test_faults.py``, SIGKILL included):

* **Interrupted saves.** Orbax writes a step under ``<step>.orbax-checkpoint-tmp[-<ts>]`` and renames it when
  complete, so an interrupted save is never listed. The training loop's :class:`Checkpointer`
  (``clean_unfinished=True``, under the workdir's lock, so no other run can be writing) has orbax delete such
  leftovers when it opens the directory (``cleanup_tmp_directories``) and warns that it does
  (:class:`UnfinishedSaveWarning`); a reader (export, a test) leaves them alone.
* **Interrupted deletions.** Old steps beyond ``max_to_keep`` are first renamed into ``<directory>/.trash``
  (atomic) and only then deleted, so a run killed while deleting never leaves a listed, half-deleted step.
* **Corrupted steps.** Once a step has committed, process 0 writes ``<step>/checksums.json``: the step number and
  the SHA-256 of every file of the step. A restore checks them first, so a flipped byte anywhere in the step, a
  missing or extra file, or a step directory found under another number raises
  :class:`~metarl_jax.checksums.CorruptCheckpointError` (an unreadable step, see below). A step without the file
  (an older save, or a run killed between the commit and the manifest) is restored with an
  :class:`~metarl_jax.checksums.UnverifiedCheckpointWarning`.
* **Unreadable steps.** :meth:`Checkpointer.restore_latest` survives a listed step that cannot be read (a
  truncated file after a crash or full disk): it warns, moves that step aside to ``<step>.unreadable`` and falls
  back to the previous one.
* **Full disk / unwritable directory.** A failed write raises :class:`~metarl_jax.workdir.UnwritableError` (an
  ``OSError``) naming the directory, the step and the cause; the earlier steps stay on disk (old steps are only
  removed after a save has committed). :func:`metarl_jax.workdir.check_writable` probes a directory up front.
* **Non-finite state.** :meth:`Checkpointer.save` refuses (``FloatingPointError``) to write a train state with a
  NaN or inf floating-point leaf, naming the leaves.

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

import contextlib
import errno
import os
import re
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from metarl_jax.checksums import (MANIFEST, UnverifiedCheckpointWarning, nonfinite_leaves, tree_fingerprint,
                                  verify_manifest, write_manifest)
from metarl_jax.multihost import is_primary, sync
from metarl_jax.sharding import path_names
from metarl_jax.workdir import UnwritableError

FROZEN_KEY = "frozen_fingerprint"  # the saved config's entry for the fingerprint of a train state's frozen part
TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax's suffix for a step being written
TRASH = ".trash"  # old steps are renamed here (atomically) before they are deleted


class ResumeError(RuntimeError, ValueError):
    """A workdir's checkpoints cannot be resumed as asked (none readable, or a step beyond the run's num_steps);
    the message says what to do."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's tree structure or leaf shapes differ from the restore template."""


class UnfinishedSaveWarning(RuntimeWarning):
    """Leftovers of an interrupted save (``<step>.orbax-checkpoint-tmp*``) were found; orbax deletes them."""


IO_MESSAGE = re.compile(r"os_error_code|No space left|Permission denied|Read-only file system|File too large|"
                         r"Disk quota|Not a directory|Input/output error", re.IGNORECASE)


def is_io_error(e: BaseException | None) -> bool:
    """Whether ``e`` (or an exception it was raised from) is a file-system failure. Tensorstore reports them as
    ``ValueError`` with an ``os_error_code``, orbax's own writes as ``OSError``."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) or IO_MESSAGE.search(str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


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
    :meth:`save` returns. ``clean_unfinished`` deletes the leftovers of interrupted saves on opening: only for a
    writer that no other process can race (the training loop, under the workdir's lock). Several processes
    (:mod:`metarl_jax.multihost`): each calls every method, orbax writes each array shard from its owner, process 0
    alone renames unreadable steps and empties the trash, and the directory must be one file system that all of them
    see.

    Write failures of an async save surface at the next :meth:`save`, :meth:`wait` or :meth:`close` as
    :class:`UnwritableError` naming the step that failed.
    """

    def __init__(self, directory, max_to_keep: int = 3, async_save: bool = True, *, clean_unfinished: bool = False):
        self.directory = os.path.abspath(os.fspath(directory))
        self.trash = os.path.join(self.directory, TRASH)
        self._pending: int | None = None  # the step of the save that may still be in flight
        self.async_save = async_save
        leftovers = sorted(n for n in os.listdir(self.directory) if TMP_MARKER in n) if (
            clean_unfinished and os.path.isdir(self.directory)) else []
        if leftovers:
            warnings.warn(f"{self.directory}: deleting unfinished checkpoint save(s) {leftovers} (a run was stopped "
                          "while writing them; they were never restorable)", UnfinishedSaveWarning, stacklevel=2)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                                 create=True, todelete_subdir=TRASH,
                                                 cleanup_tmp_directories=clean_unfinished,
                                                 async_options=(ocp.AsyncOptions(post_finalization_callback=self._seal)
                                                                if async_save else None)),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler()},
        )
        self._empty_trash()  # a run killed while deleting an old step leaves it here

    def _steps_on_disk(self) -> list[int]:
        try:
            return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())
        except OSError:
            return []

    @contextlib.contextmanager
    def _writing(self, step: int | None):
        """Turns a file-system failure while writing ``step`` into :class:`UnwritableError`."""
        try:
            yield
        except UnwritableError:
            raise
        except Exception as e:
            if not is_io_error(e):
                raise
            with contextlib.suppress(Exception):
                self.manager.reload()  # orbax's in-memory step list may still name the failed step
            kept = self._steps_on_disk()
            raise UnwritableError(
                getattr(e, "errno", None) or errno.EIO,
                f"could not write checkpoint step {step} to {self.directory} ({type(e).__name__}: {str(e)[:400]}). "
                f"The disk may be full or the directory unwritable; the earlier checkpoint steps {kept} are kept. "
                "Free disk space or fix the permissions, then rerun the same command to resume from the latest "
                "of them") from e

    def _seal(self) -> None:
        """Writes the checksum manifest of the save that has just committed (process 0; once per step)."""
        step = self._pending
        step_dir = os.path.join(self.directory, str(step))
        if step is None or not is_primary() or not os.path.isdir(step_dir):
            return
        if not os.path.exists(os.path.join(step_dir, MANIFEST)):
            write_manifest(step_dir, step)

    def _finish(self) -> None:
        """Waits for the in-flight save (raising its failure, once), makes sure its checksum manifest is written
        and deletes the old steps it moved to the trash."""
        step = self._pending
        with self._writing(step):
            self.manager.wait_until_finished()
            self._seal()  # if the callback has not run yet (it writes nothing twice)
        self._pending = None
        self._empty_trash()

    def _empty_trash(self) -> None:
        if is_primary():
            shutil.rmtree(self.trash, ignore_errors=True)

    def save(self, step: int, train_state, key, config: dict, force: bool = False) -> bool:
        """Saves ``step``; returns whether a save started (orbax skips steps <= the latest saved one).

        A typed key (``jax.random.key``) is stored as its raw key data. ``config`` must be JSON-serialisable
        (tuples come back as lists). A train state's ``frozen`` part (e.g. the base weights under LoRA) is not
        stored; its fingerprint is, under :data:`FROZEN_KEY`. Raises ``FloatingPointError`` (nothing written) when a
        floating-point leaf of ``train_state`` is not finite, and :class:`UnwritableError` when this save (or the
        previous, async one) cannot be written.
        """
        frozen = getattr(train_state, "frozen", None)
        if frozen is not None:  # frozen base weights are not stored: their fingerprint is
            train_state = train_state.replace(frozen=None)
            config = {**config, FROZEN_KEY: tree_fingerprint(frozen)}
        bad = nonfinite_leaves(train_state)
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise FloatingPointError(
                f"refusing to save checkpoint step {step} to {self.directory}: non-finite (NaN or inf) values in "
                f"{shown}; the earlier checkpoint steps {self._steps_on_disk()} are kept")
        if _is_typed_key(key):
            key = jax.random.key_data(key)
        key = np.asarray(jax.device_get(key))  # from several processes orbax saves a host array, not a local jax one
        self._finish()
        args = ocp.args.Composite(state=ocp.args.StandardSave({"train_state": train_state, "key": key}),
                                  config=ocp.args.JsonSave(dict(config)))
        self._pending = int(step)  # before the save: its finalization callback (_seal) may run before it returns
        with self._writing(int(step)):
            started = bool(self.manager.save(int(step), args=args, force=force))
        if not started:
            self._pending = None
        elif not self.async_save:
            self._seal()  # the step has committed already
        return started

    def latest_step(self) -> int | None:
        """The newest complete step (in-progress or interrupted saves are not listed), or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """All complete steps, ascending."""
        return sorted(self.manager.all_steps())

    def pick_step(self, step: int, purpose: str, hint: str) -> int:
        """``step``, or the latest complete step for 0; ``FileNotFoundError`` when there is none (``purpose``: what
        the step is for, ``hint``: what to do) and ``ValueError`` naming the saved steps when ``step`` is not one."""
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"{self.directory} holds no checkpoint to {purpose}: {hint}")
        if step and step not in steps:
            raise ValueError(f"--step={step}: {self.directory} holds the steps {steps}; choose one of them, or 0 for "
                             "the latest")
        return step or steps[-1]

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
        are cast to the template's. A template's ``frozen`` part must be concrete: it is put back as it is,
        after its fingerprint is checked against the saved one. Returns ``(train_state, key, config)``; raises
        :class:`CheckpointMismatchError` (a ``ValueError``) when the saved tree does not fit the template or the
        frozen part differs from the one the checkpoint was trained with.
        """
        self._finish()
        frozen = getattr(template_train_state, "frozen", None)
        if frozen is not None:
            template_train_state = template_train_state.replace(frozen=None)
        typed = _is_typed_key(template_key)
        raw_key = jax.random.key_data(template_key) if typed else template_key
        template = {"train_state": template_train_state, "key": raw_key}
        verified = verify_manifest(os.path.join(self.directory, str(step)), step)
        self._check_against(step, template)
        abstract = {"train_state": jax.tree.map(ocp.utils.to_shape_dtype_struct, template_train_state),
                    "key": np.zeros(raw_key.shape, raw_key.dtype)}  # restored as the host array it was saved as
        out = self.manager.restore(int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                      config=ocp.args.JsonRestore()))
        if not verified:
            warnings.warn(f"checkpoint step {step} in {self.directory} has no {MANIFEST} (saved by an older version, "
                          "or the run stopped right after saving it): restored without checking its files",
                          UnverifiedCheckpointWarning, stacklevel=3)
        key = jnp.asarray(out.state["key"])
        if typed:
            key = jax.random.wrap_key_data(key, impl=jax.random.key_impl(template_key))
        state = out.state["train_state"]
        if frozen is not None:
            if out.config.get(FROZEN_KEY) != tree_fingerprint(frozen):
                raise CheckpointMismatchError(
                    f"checkpoint step {step} in {self.directory} was trained on other frozen weights than this run's "
                    "(their fingerprints differ): give config.model.pretrained_dir (or the seed) it was trained with")
            state = state.replace(frozen=frozen)
        return state, key, out.config

    def saved_config(self, step: int) -> dict:
        """The config (a JSON dict) saved with ``step``, read without its arrays."""
        self._finish()
        config = self.manager.restore(int(step), args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
        return {k: v for k, v in config.items() if k != FROZEN_KEY}

    def restore_latest(self, template_train_state, template_key):
        """Restores the newest readable step: ``(train_state, key, config, step)``, or None when there is none.

        A step that fails to read is skipped with a warning and renamed to ``<step>.unreadable`` so that later
        saves of that step number are not refused. A :class:`CheckpointMismatchError` is raised, not skipped.
        Raises ``RuntimeError`` if steps exist but none can be read.
        """
        self._finish()
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
        aside = self.set_aside_steps()
        if steps or aside:
            raise ResumeError(
                f"no readable checkpoint in {self.directory} (unreadable steps set aside: {aside}); starting over "
                "would silently drop the run's progress. Repair or restore a checkpoint, or move the workdir away to "
                "start a fresh run")
        return None

    def set_aside_steps(self) -> list[str]:
        """The unreadable steps :meth:`restore_latest` renamed to ``<step>.unreadable[.N]``, sorted."""
        return sorted(n for n in os.listdir(self.directory) if re.fullmatch(r"\d+\.unreadable(\.\d+)?", n))

    def _set_aside(self, step: int) -> str:
        """Renames ``<step>`` to ``<step>.unreadable[.N]`` (orbax ignores it; process 0 renames, the others wait for
        it) and reloads the step list."""
        src = os.path.join(self.directory, str(step))
        dst, n = f"{src}.unreadable", 0
        while os.path.exists(dst):
            n += 1
            dst = f"{src}.unreadable.{n}"
        if is_primary():
            os.rename(src, dst)
        sync(f"set aside checkpoint step {step}")
        self.manager.reload()
        return dst

    def wait(self) -> None:
        """Blocks until any in-flight async save is committed; raises :class:`UnwritableError` if it failed."""
        self._finish()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's resources; raises :class:`UnwritableError` if the
        last save failed (the resources are released either way)."""
        try:
            self._finish()
        finally:
            self.manager.close()
            self._empty_trash()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        """Closes; when the block raised, a failure to close is a warning, so the block's error is the one reported."""
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception as e:  # noqa: BLE001 -- the block's own error matters more
            warnings.warn(f"closing the checkpointer of {self.directory} after an error failed too: {e}", stacklevel=2)
