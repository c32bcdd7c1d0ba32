"""What keeps a workdir whole: checksums of what it saves, a checked path, whole files (and one writer
at a time: ``rnnjax.lock``).

- ``checksums(state)`` / ``verify(state, sums)``: a CRC-32 of every array of a
  saved state, kept in the checkpoint's JSON ``meta`` and checked on restore,
  so a flipped bit is an error rather than a silently changed weight.
- ``check_writable(workdir)``: the workdir can be made and written, and its
  path is one orbax can take, checked before any work.
- ``write_atomically(path, text)``: a whole file or none (a temporary file
  renamed), with one sentence when the disk is full.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rnnjax.spelling import again, not_utf8, spelt
from rnnjax.lock import LOCKFILE, WorkdirError, describe as _describe
from rnnjax.saved import config_settings
from rnnjax.stored import CONFIG, DAMAGED, METRICS, PLOT, STEPS, SUBDIR, UnknownCell
from rnnjax.tidy import REMOVING

# Orbax reads a path as a glob pattern: "[0]" matches no folder (its saves cannot be restored), "**" is
# refused, and tensorstore takes "\\" as a separator (the arrays land elsewhere). "*" and "?" alone pass
# but are pattern characters too. Spaces, "{", "%", "#", "~" and the rest save and restore (tested).
UNSAFE = "[]\\*?"


# The longest path the system takes (Linux's PATH_MAX), and what orbax writes below a workdir, with room:
# a step's data files (checkpoints/13/state/ocdbt.process_0/d/<32 hex>) as its folder is written under a
# temporary name: a save failed with 112 bytes left, and took 115.
PATH_MAX = 4096
BELOW = 128


def check_path(workdir: Path) -> None:
    """``WorkdirError`` if ``workdir`` is the file system's root, if its absolute path holds a character
    orbax cannot take (``UNSAFE``, or bytes that are not UTF-8, or a folder orbax reads as a URL), a name too
    long for the system, or too little room below it (``BELOW``), or if it lies inside another run's
    checkpoints."""
    path = str(workdir.absolute())
    real = Path(os.path.realpath(workdir))      # a link, "..": what it is (a loop of links left to be said)
    if real == real.parent:        # as root, a run wrote its files there
        shown = f"{workdir} ({real})" if str(workdir) != str(real) else str(real)
        raise WorkdirError(f"The workdir {shown} is the file system's root; give a {spelt('workdir')} of "
                           "the run's own.")
    bad = sorted(set(path) & set(UNSAFE))
    if bad:
        raise WorkdirError(f"The workdir {workdir.absolute()} has {' and '.join(map(repr, bad))} in its "
                           "path, which orbax's checkpoints cannot take (they would be written elsewhere or "
                           f"not restore); choose a {spelt('workdir')} without them.")
    typed = not_utf8(path)
    if typed is not None:
        raise WorkdirError(f"The workdir {typed} has bytes that are not UTF-8 in its path, which orbax's "
                           f"checkpoints cannot take; choose a {spelt('workdir')} without them.")
    longest = max(len(os.fsencode(part)) for part in workdir.absolute().parts)
    if longest > 255:               # NAME_MAX of every common file system
        raise WorkdirError(f"The workdir {path} has a name of {longest} bytes in its path; the system takes "
                           "at most 255.")
    if len(os.fsencode(path)) + BELOW > PATH_MAX:      # else it trains, then its first save fails
        raise WorkdirError(f"The workdir's path is {len(os.fsencode(path))} bytes long, and the paths a run "
                           f"writes below it take up to {BELOW} more, past the system's {PATH_MAX}; use a "
                           f"{spelt('workdir')} of a shorter path.")
    cloud = [part for part in workdir.absolute().parts if part.endswith("gs:")]
    if cloud:                       # orbax rewrites ".../gs:/..." as a gs:// URL: every save fails
        raise WorkdirError(f"The workdir {path} has a folder {cloud[0]!r} in its path, which orbax reads as "
                           "a Google Cloud Storage URL (gs://), and its saves fail; rnnjax writes a local "
                           f"{spelt('workdir')}: choose one without it.")
    found = in_checkpoints(workdir)
    if found:
        raise WorkdirError(f"The workdir {path} is {found}, which it deletes as it saves newer ones; "
                           f"choose a {spelt('workdir')} outside it.")


def in_checkpoints(path: Path) -> str | None:
    """Where ``path`` is in a run's checkpoints folder, which the run deletes from as it saves and reads
    as its own (a folder of digits there is a damaged checkpoint), in words: ``inside runs/a/checkpoints,
    the checkpoints of the run in runs/a``; ``None`` if it is not."""
    here = Path(os.path.abspath(path))            # "..": the folder it names, as the system takes it
    try:                                           # through links too: a link into a run's checkpoints
        resolved = path.resolve()
    except (OSError, RuntimeError):                # a loop of links: the path as given
        resolved = here
    for folder in dict.fromkeys([here, *here.parents, resolved, *resolved.parents]):
        if folder.name == SUBDIR and _holds_a_run(folder.parent):
            where = "" if folder in (here, resolved) else "inside "
            return f"{where}{folder}, the checkpoints of the run in {folder.parent}"
    return None


def _holds_a_run(folder: Path) -> bool:
    """Whether ``folder`` is a run's: its lock, or a ``config.json`` rnnjax reads (of any cell)."""
    try:
        return (folder / LOCKFILE).exists() or config_settings(folder) is not None
    except UnknownCell:
        return True


def check_writable(workdir: Path) -> None:
    """``WorkdirError`` unless ``workdir`` is a directory this process can write, or can be made one, at a
    path orbax can take."""
    check_path(workdir)
    parent = workdir.absolute()
    while not parent.exists():          # the workdir, else the nearest folder above it that is there
        if os.path.islink(parent):      # dangling: nothing can be made there, or below it
            if _in_a_loop(parent):
                raise WorkdirError(f"The workdir {workdir} cannot be made: {parent} is a link in a loop of "
                                   f"links, which never reaches a folder; use another {spelt('workdir')}.")
            raise WorkdirError(f"The workdir {workdir} cannot be made: {parent} is a link to "
                               f"{os.readlink(parent)}, which does not exist; make that folder, or use "
                               f"another {spelt('workdir')}.")
        parent = parent.parent
    if parent == workdir.absolute():
        if not workdir.is_dir():
            raise WorkdirError(f"The workdir {workdir} exists and is not a directory.")
        if not os.access(workdir, os.W_OK | os.X_OK):
            raise WorkdirError(f"The workdir {workdir} is not writable.")
        # What a run writes into later: found now, not once a save or a record fails hours on.
        for path in (workdir / SUBDIR, workdir / DAMAGED, workdir / METRICS, workdir / STEPS):
            if path.exists() and not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
                raise WorkdirError(f"{path} is not writable, where the run writes; fix its permissions, or "
                                   f"use another {spelt('workdir')}.")
        return
    if not parent.is_dir():
        raise WorkdirError(f"The workdir {workdir} cannot be made: {parent} is a file, not a directory.")
    try:            # a probe, removed at once: access() says yes to root, and to /proc
        os.rmdir(tempfile.mkdtemp(prefix=".rnnjax-probe-", dir=parent))
    except OSError as e:
        raise WorkdirError(f"The workdir {workdir} cannot be made in {parent} ({_describe(e)}).") from None


def check_kinds(workdir: Path) -> None:
    """``WorkdirError`` unless what a run keeps in ``workdir`` is of the kind it keeps: its folders folders,
    its files regular files (not a folder, a FIFO or a link to nothing)."""
    for name in (SUBDIR, DAMAGED):
        if (workdir / name).exists() and not (workdir / name).is_dir():
            raise WorkdirError(f"{workdir / name} is a file where rnnjax keeps a folder; move it aside, or "
                               f"use another {spelt('workdir')}.")
    dropped = workdir / SUBDIR / REMOVING     # orbax would move checkpoints into a link's target, or fail
    if os.path.lexists(dropped) and (dropped.is_symlink() or not dropped.is_dir()):
        raise WorkdirError(f"{dropped} is not a folder, where rnnjax keeps the checkpoints it drops until it "
                           f"deletes them; move it aside, or use another {spelt('workdir')}.")
    for name in (CONFIG, PLOT, METRICS, STEPS):
        if os.path.lexists(workdir / name) and not (workdir / name).is_file():
            raise WorkdirError(f"{workdir / name} is not a regular file, where rnnjax keeps one; move it "
                               f"aside, or use another {spelt('workdir')}.")


def _in_a_loop(link: Path) -> bool:
    try:
        os.stat(link)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def check_ours(workdir: Path) -> None:
    """``WorkdirError`` if ``workdir`` holds no checkpoints but a ``config.json`` or ``ppl.png`` a run did
    not write: a new run would overwrite them (``metrics.jsonl`` is checked as it is read)."""
    if not workdir.is_dir() or (workdir / SUBDIR).is_dir():
        return
    config, plot = workdir / CONFIG, workdir / PLOT
    try:
        ours = config_settings(workdir) is not None          # a whole config.json of ours
    except UnknownCell:         # a run's, of a cell not registered here
        ours = True
    theirs = [p.name for p in (config, plot) if p.exists()] if not ours else []
    if theirs and (config.exists() or not (workdir / METRICS).exists()):
        raise WorkdirError(f"The workdir {workdir} holds {' and '.join(theirs)} but no checkpoints: a new "
                           f"run would overwrite them. Use an empty or new {spelt('workdir')}.")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, text: str | None = None, save: Callable[[Path], Any] | None = None
                     ) -> None:
    """``path`` holds ``text`` (or what ``save(tmp)`` writes) whole, or is as it was: written to a
    temporary file, synced to disk, then renamed; never opened in place (it could be a FIFO).
    ``WorkdirError`` (no temporary file left) if the disk is full or the file cannot be written."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.is_dir() and not tmp.is_symlink():
        raise WorkdirError(f"{tmp} is a folder, where {path.name} is written first; move it aside and "
                           f"{again('try again')}.")
    try:
        if tmp.is_symlink() or tmp.exists():     # ours, from a crash; never opened (it could be a FIFO)
            tmp.unlink()
        with open(tmp, "x") as f:
            f.write(text or "")
        if save is not None:
            save(tmp)
        _fsync(tmp)                 # on disk before the rename: after a power loss, the old file or the new
        os.replace(tmp, path)
        with contextlib.suppress(OSError):
            _fsync(path.parent)     # the rename itself (some filesystems cannot sync a folder)
    except BaseException as e:      # a Ctrl-C mid-write too: no temporary file left behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not isinstance(e, OSError):
            raise
        raise WorkdirError(f"{path} cannot be written ({_describe(e)}); free space (or fix the cause) and "
                           f"{again('try again')}.") from None


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
