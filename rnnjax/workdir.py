"""What keeps a workdir whole: one writer at a time, checksums of what it saves, a checked path.

- ``lock(workdir)``: an ``fcntl`` lock on ``workdir/.lock``, taken before a run
  writes anything and released by the kernel when the process ends, however
  it ends (a killed run leaves no stale lock). A second writer fails at once,
  naming the holder's pid. Reading (``restore``, ``--predict``) takes none.
- ``checksums(state)`` / ``verify(state, sums)``: a CRC-32 of every array of a
  saved state, kept in the checkpoint's JSON ``meta`` and checked on restore,
  so a flipped bit is an error rather than a silently changed weight.
- ``check_writable(workdir)``: the workdir can be made and written, checked
  before any work.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np

LOCKFILE = ".lock"


class WorkdirError(RuntimeError):
    """A workdir that cannot be used now: locked by another run, or not writable."""


def _describe(e: OSError) -> str:
    return e.strerror or type(e).__name__


def check_writable(workdir: Path) -> None:
    """``WorkdirError`` unless ``workdir`` is a directory this process can write, or can be made one."""
    if workdir.exists():
        if not workdir.is_dir():
            raise WorkdirError(f"The workdir {workdir} exists and is not a directory.")
        if not os.access(workdir, os.W_OK | os.X_OK):
            raise WorkdirError(f"The workdir {workdir} is not writable.")
        return
    parent = workdir.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise WorkdirError(f"The workdir {workdir} cannot be made: {parent} is a file, not a directory.")
    try:            # a probe, removed at once: access() says yes to root, and to /proc
        os.rmdir(tempfile.mkdtemp(prefix=".rnnjax-probe-", dir=parent))
    except OSError as e:
        raise WorkdirError(f"The workdir {workdir} cannot be made in {parent} ({_describe(e)}).") from None


def _holder(f: TextIO) -> str:
    f.seek(0)
    pid = f.read().strip()
    return f"process {pid}" if pid.isdigit() else "another process"


def check_unlocked(workdir: Path) -> None:
    """``WorkdirError`` if a run holds ``workdir``'s lock now (checked early; ``lock`` is what counts)."""
    path = workdir / LOCKFILE
    if not path.is_file():
        return
    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WorkdirError(_in_use(workdir, _holder(f))) from None
    except OSError as e:
        raise WorkdirError(f"The workdir's lock file {path} cannot be read ({_describe(e)}).") from None


def _in_use(workdir: Path, holder: str) -> str:
    return (f"The workdir {workdir} is in use by {holder}: one run writes a workdir at a time. Wait for it "
            "to finish, stop it, or use another --workdir.")


@contextlib.contextmanager
def lock(workdir: Path) -> Iterator[None]:
    """Holds ``workdir``'s lock (making the workdir) for the ``with`` block; ``WorkdirError`` if held."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        f = open(workdir / LOCKFILE, "a+")
    except OSError as e:
        raise WorkdirError(f"The workdir {workdir} cannot be written ({_describe(e)}).") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirError(_in_use(workdir, _holder(f))) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield                       # closing the file releases the lock


def _crc32(x: Any) -> str:
    a = np.asarray(x)
    if a.dtype.kind in "iub":           # integers by value: a step saved as int32 may come back as int64
        a = a.astype(np.int64)
    return f"{zlib.crc32(np.ascontiguousarray(a).tobytes()):08x}"


def checksums(state: Any) -> dict[str, str]:
    """``{array path: CRC-32 of its values}`` of a host pytree (``jax.tree_util.keystr`` paths)."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): _crc32(x) for path, x in leaves}


def verify(state: Any, expected: dict[str, str]) -> list[str]:
    """The paths of ``state``'s arrays whose checksum differs from ``expected`` (or that it lacks)."""
    actual = checksums(state)
    return sorted(k for k in expected.keys() | actual.keys() if actual.get(k) != expected.get(k))
