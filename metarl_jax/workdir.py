"""A run's working directory: that it can be written (:func:`check_writable`, probed before anything compiles) and
that one run at a time uses it (:func:`workdir_lock`, an OS file lock held for the run's life and released when
its process ends, killed or not).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import tempfile

from metarl_jax.multihost import is_primary


class WorkdirBusyError(RuntimeError):
    """Another process holds the workdir's lock (:func:`workdir_lock`)."""


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Holds an exclusive lock on ``<workdir>/.lock`` for the block; raises :class:`WorkdirBusyError` at once when
    another process holds it. The operating system releases it when the process ends, killed or not. In a
    multi-process job only process 0 takes it (the others share the workdir with it)."""
    import fcntl

    if not is_primary():
        yield
        return

    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, ".lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise WorkdirBusyError(f"{workdir} is in use by {holder}: two runs in one workdir would overwrite each "
                                   "other's checkpoints and logs. Wait for it to finish, stop it, or use another "
                                   "--workdir") from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class UnwritableError(OSError):
    """A directory the run must write to cannot be written (permissions, full disk, read-only file system, not a
    directory); the message names the directory, the cause and the fix."""


def check_writable(directory, what: str = "directory") -> str:
    """Creates ``directory`` if needed, then writes, syncs and removes a 4 KiB probe file in it.

    Returns the absolute path. Raises :class:`UnwritableError` naming ``what``, the directory and the cause when
    any of that fails (e.g. no permission, a path under a regular file, no space left), ``ValueError`` for an empty
    path (which would mean the current directory).
    """
    if not os.fspath(directory):
        raise ValueError(f"the {what} is an empty path; give a directory (for example --workdir=/tmp/metarl_run)")
    directory = os.path.abspath(os.fspath(directory))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as e:
        cause = f"{errno.errorcode.get(e.errno, 'error')}: {e.strerror or e}" if e.errno else str(e)
        raise UnwritableError(e.errno, f"{what} {directory} is not writable ({cause}); choose another directory "
                              "(e.g. --workdir), fix its permissions or free disk space") from e
    return directory
