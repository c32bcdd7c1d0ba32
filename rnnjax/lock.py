"""One writer per workdir: ``lock(workdir)``, ``fcntl`` locks on ``workdir/.lock`` and on the workdir
itself, taken before a run writes anything and released by the kernel when the process ends, however it
ends (a killed run leaves no stale lock). A second writer fails at once, naming the holder's pid; the
holder checks the locks before each write (``Held.check``): it stops if its workdir is moved, removed or
emptied, and makes a removed lock file again. Folders the lock made go again as its block ends if the
run wrote nothing else there (not where the process is killed or exits at once). Reading (``restore``,
``--predict``) takes none.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from rnnjax.source import cache_dir
from rnnjax.spelling import again, spelt
from rnnjax.stored import CONFIG, steps

LOCKFILE = ".lock"


class WorkdirError(RuntimeError):
    """A workdir that cannot be used now: locked by another run, or not writable."""


def describe(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _holder(workdir: Path) -> str:
    """Who holds ``workdir``'s lock, as its lock file names them."""
    pid = _pid_in(workdir / LOCKFILE)
    return f"process {pid}" if pid else "another process"


def _pid_in(lockfile: Path) -> str:
    """The pid its holder wrote in ``lockfile`` (``_write_pid``); '' where it holds none that can be read."""
    try:
        pid = lockfile.read_bytes().decode(errors="replace").strip()
    except OSError:
        pid = ""
    return pid if pid.isdigit() else ""


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())


def _check_lockfile(path: Path, flag: str | None = None) -> None:
    """``WorkdirError`` if ``path`` is there but not a regular file: a folder, a link (a dangling one would
    be created wherever it points), a FIFO. ``flag``: what the user gives another folder with (``None``: the
    workdir)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):      # not made yet; lock says why it cannot be
        return
    except OSError as e:
        raise WorkdirError(f"{_named(flag)}'s lock file {path} cannot be read ({describe(e)}).") from None
    if not stat.S_ISREG(mode):
        what = "a link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise WorkdirError(f"{_named(flag)}'s lock file {path} is {what}; remove it (rnnjax makes it) or use "
                           f"another {flag or spelt('workdir')}.")


def _locks(workdir: Path, mode: int) -> Iterator[int]:
    """Takes ``fcntl.flock(mode)`` on the workdir's lock file, then on the workdir itself (what keeps a
    second writer out after the lock file is removed; skipped where the file system cannot lock a folder):
    yields each file descriptor once locked; ``BlockingIOError`` if held, ``OSError`` if it cannot open."""
    fd = os.open(workdir / LOCKFILE, (os.O_RDWR | os.O_CREAT if mode & fcntl.LOCK_EX else os.O_RDONLY)
                 | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    try:
        fcntl.flock(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    yield fd
    try:
        folder = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        fcntl.flock(folder, mode)
    except BlockingIOError:
        os.close(folder)
        raise
    except OSError:             # a file system without locks on folders: the lock file's alone
        os.close(folder)
        return
    yield folder


def check_unlocked(workdir: Path) -> None:
    """``WorkdirError`` if a run holds ``workdir``'s lock now, or the lock file is not a regular file
    (checked early; ``lock`` is what counts)."""
    path = workdir / LOCKFILE
    _check_lockfile(path)
    if not path.is_file():
        return
    held = []
    try:
        for fd in _locks(workdir, fcntl.LOCK_SH | fcntl.LOCK_NB):
            held.append(fd)
    except BlockingIOError:
        raise WorkdirError(_in_use(workdir, _holder(workdir))) from None
    except OSError as e:
        raise WorkdirError(f"The workdir's lock file {path} cannot be read ({describe(e)}).") from None
    finally:
        for fd in held:
            os.close(fd)


def _in_use(workdir: Path, holder: str, flag: str | None = None) -> str:
    return (f"{_named(flag)} {workdir} is in use by {holder}: one run writes it at a time. Wait for it to "
            f"finish, stop it, or use another {flag or spelt('workdir')}.")


def _named(flag: str | None) -> str:
    """The folder given as ``flag``, as a sentence begins: a command's own folder is named by its flag."""
    return "The workdir" if flag is None else flag


def held(workdir: Path) -> bool:
    """Whether a run holds ``workdir``'s lock now (or its lock file is not one: ``check_unlocked``)."""
    try:
        check_unlocked(workdir)
    except WorkdirError:
        return True
    return False


def removing(workdir: Path, step: int, wait_s: float = 1.0) -> bool:
    """Whether ``step``'s checkpoint is being removed by the run that holds ``workdir``'s lock (it keeps
    its latest): listed, then moved out (``tidy.REMOVING``) before it could be read, or deleted file by
    file by an orbax that deletes in place; watched for ``wait_s``. False where no run holds the lock."""
    deadline = time.monotonic() + wait_s
    while step in steps(workdir):
        if not held(workdir) or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Held:
    """A held lock: ``check()`` before each write. A workdir moved, removed or emptied while a run trains
    would be written anew at its old path; a lock file removed lets a second writer in where folders cannot
    be locked (elsewhere the workdir's own lock keeps it out, and the lock file is made again)."""

    def __init__(self, workdir: Path, fds: list[int]):
        self.workdir, self._fds = workdir, fds
        self._path = workdir.absolute()             # as orbax writes it, whatever the process's cwd becomes

    def check(self, saved: str = "") -> None:
        """``WorkdirError`` if the workdir or its lock file is no longer the one this process locked;
        ``saved`` says what the workdir keeps of the run."""
        def same(path, fd):
            try:
                return os.path.samestat(os.stat(path), os.fstat(fd))
            except OSError:
                return False
        folder = self._fds[1] if len(self._fds) > 1 else None
        # Emptied (rm -r as it runs) is removed too: its config.json, written as the run started, is gone.
        if folder is not None and not (same(self._path, folder) and (self._path / CONFIG).exists()):
            raise WorkdirError(f"The workdir {self.workdir} was moved, removed or emptied while this run "
                               f"wrote it: this run stopped, writing nothing more{saved}. If it was moved, "
                               f"resume it there ({spelt('workdir')}).")
        if same(self._path / LOCKFILE, self._fds[0]):
            return
        if folder is None:
            raise WorkdirError(f"The workdir's lock file {self.workdir / LOCKFILE} was removed or replaced "
                               "while this run held it, so another run may be writing there: this run "
                               f"stopped, writing nothing more{saved}. {again().capitalize()} to resume.")
        with contextlib.suppress(OSError):      # the folder's lock holds: the lock file made again
            fd = os.open(self._path / LOCKFILE, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_NONBLOCK, 0o644)
            os.close(self._fds[0])
            self._fds[0] = fd
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_pid(fd)


@contextlib.contextmanager
def lock(workdir: Path, flag: str | None = None) -> Iterator[Held]:
    """Holds ``workdir``'s lock (making the workdir) for the ``with`` block, as a ``Held``;
    ``WorkdirError`` if held, naming ``flag`` (what the command gives another folder with; ``None``: the
    workdir)."""
    _check_lockfile(workdir / LOCKFILE, flag)
    made = _to_make(workdir)
    fds: list[int] = []
    try:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            for fd in _locks(workdir, fcntl.LOCK_EX | fcntl.LOCK_NB):
                fds.append(fd)
        except BlockingIOError:
            raise WorkdirError(_in_use(workdir, _holder(workdir), flag)) from None
        except OSError as e:        # the folder, or its lock file (read-only, say): the one that failed
            where = f"{e.filename}: " if e.filename and Path(e.filename) != workdir else ""
            said = f"{_named(flag)} {workdir} cannot be written ({where}{describe(e)})."
            raise WorkdirError(said) from None
        try:
            _write_pid(fds[0])
        except OSError as e:        # a full disk: the lock holds without the pid, but say so now
            raise WorkdirError(f"{_named(flag)} {workdir} cannot be written ({describe(e)}).") from None
        yield Held(workdir, fds)
    finally:                        # closing the files releases the locks
        if made and fds:
            _remove_unused(made, fds)
        for fd in fds:
            os.close(fd)


def _to_make(workdir: Path) -> list[Path]:
    """The folders ``lock`` makes for ``workdir``, innermost first: it and its parents not there yet, as
    absolute paths (the process may change folder); none where the path climbs (``..``)."""
    path = workdir.absolute()
    if ".." in path.parts:
        return []
    made = []
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            break
        made.append(folder)
    return made


def _remove_unused(made: list[Path], fds: list[int]) -> None:
    """Removes the folders ``lock`` made where the run wrote nothing but the lock file (a run refused after
    ``lock``, as ``loop.run`` refuses a state), if they are still the ones it locked: no other run is in."""
    workdir, lockfile = made[0], made[0] / LOCKFILE
    with contextlib.suppress(OSError):
        if not (os.path.samestat(os.stat(lockfile), os.fstat(fds[0]))
                and (len(fds) < 2 or os.path.samestat(os.stat(workdir), os.fstat(fds[1])))
                and os.listdir(workdir) == [LOCKFILE]):
            return
        os.unlink(lockfile)
        for folder in made:
            os.rmdir(folder)            # only if empty: a parent another run has written to since stays


# Held for this process's life (the kernel releases them as it ends, however it ends): by process (a forked
# child is another) and lock file.
_CLAIMED: dict[tuple[int, Path], int] = {}


def claim_process(coordinator: str, process_id: int) -> None:
    """Holds, for this process's life, a lock on this machine naming process ``process_id`` of the
    multi-host run at ``coordinator``: ``ValueError`` if another process holds it. A second process of one
    id that joins is taken by JAX for the first restarted, and every process of the run aborts unsaved."""
    name = re.sub(r"[^\w.-]", "_", coordinator)
    path = cache_dir() / "processes" / f"{name}-{process_id}.lock"
    if (os.getpid(), path.resolve()) in _CLAIMED:   # its own (a library user joining again after an error)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError:             # a cache folder not writable: unchecked, as on another machine
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        pid = _pid_in(path)
        by = f" (pid {pid})" if pid else ""
        raise ValueError(f"Process {process_id} of the multi-host run at {coordinator} is running on this "
                         f"machine already{by}: a second one joining as {spelt('process_id', process_id)} "
                         "would stop every process of the run unsaved. Give each process its own id, or stop "
                         "that one first.") from None
    with contextlib.suppress(OSError):      # a full disk: the lock holds without the pid
        _write_pid(fd)
    _CLAIMED[os.getpid(), path.resolve()] = fd
