"""Where the benchmark writes (``--json``, ``--out``), checked before any measuring: a new file or folder, or
an earlier benchmark's, whose results it replaces; never a file of anyone else's. And what a stop says
they keep (``bench.json`` is rewritten whole after each part)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from experiments import stopping
from experiments.parsing import check_output
from rnnjax.lock import LOCKFILE

# What the benchmark writes in --out (.tmp: a file being written when it was stopped; .lock: one run at a
# time). Beside an earlier benchmark's bench.json only: without it, a file of these names is someone's.
OURS = ("bench.json", "bench.json.tmp", "sweep.png", "sweep.png.tmp", LOCKFILE)


def is_ours(path: Path) -> bool:
    """Whether ``path`` is a results file of this benchmark (either mode's): a JSON object with its keys."""
    try:
        if not path.is_file() or path.stat().st_size > 2 ** 26:     # no bench.json is that big: not read
            return False
        results = json.loads(path.read_text())
    except (OSError, ValueError):       # unreadable, not UTF-8, not JSON
        return False
    return isinstance(results, dict) and {"machine", "ratio_meaning"} <= results.keys()


def _theirs(held: dict[str, Path]) -> list[str]:
    """The names of the files in ``--out`` (``held``) that the benchmark did not write: any but its own,
    and its own names but beside an earlier benchmark's bench.json (a lock file holding a pid aside)."""
    earlier = "bench.json" in held and is_ours(held["bench.json"])

    def ours(name: str, f: Path) -> bool:
        if not f.is_file() or f.is_symlink():
            return False
        if name == LOCKFILE or name.endswith(".json.lock"):     # rnnjax.lock's (empty, or a pid), writing's
            text = f.read_text(errors="replace").strip() if f.stat().st_size < 32 else "not a pid"
            return text == "" or text.isdecimal()
        return name in OURS and (earlier or name == "bench.json.tmp" and is_ours(f))   # a stop's, whole
    return sorted(name for name, f in held.items() if not ours(name, f))


def check_writable(what: str, folder: Path) -> None:
    """``ValueError`` naming ``what`` (``--out runs/b``) unless ``folder`` is, or can be made, a folder this
    process writes: a file made and removed at once in it, or in the nearest folder above it (access()
    says yes to root)."""
    there = folder.absolute()
    while not there.exists() and not there.is_symlink():
        there = there.parent
    if not there.is_dir():
        raise ValueError(f"{what} cannot be made: {there} is not a folder.")
    try:
        tempfile.TemporaryFile(dir=there).close()
    except OSError as e:
        raise ValueError(f"{what} cannot be written in {there} ({e.strerror}).") from None


def check_outputs(json_arg: str | None, out_arg: str | None, sweep: bool) -> tuple[Path, Path]:
    """The JSON file and the run folder (``--json``, ``--out``, as typed; ``sweep``: a plot goes in the
    folder), checked: ``ValueError`` in one sentence."""
    for flag, typed in (("--out", out_arg), ("--json", json_arg)):   # '' would be the current folder
        if typed == "":
            raise ValueError(f"{flag} is empty; give a path (a shell variable that was not set?).")
    for flag, typed in (("--out", out_arg), ("--json", json_arg)):
        if typed:
            check_output(flag, typed, "folder" if flag == "--out" else "file")
    if json_arg and json_arg.endswith(("/", "\\")):
        raise ValueError(f"--json {json_arg} names a folder; give the results' file (a .json).")
    out_dir = Path(out_arg) if out_arg else Path("runs") / time.strftime("bench-%Y%m%d-%H%M%S")
    json_path = Path(json_arg) if json_arg else out_dir / "bench.json"
    flag = f"--json {json_path}" if json_arg else f"--out {out_dir}"
    if json_path.is_dir():
        raise ValueError(f"{flag}: {json_path} is a folder, where the results' file goes.")
    if (json_path.exists() or json_path.is_symlink()) and not is_ours(json_path):
        raise ValueError(f"{flag}: {json_path} exists and is not the results of an earlier benchmark (or is "
                         "damaged), the only file it replaces; move it aside, or give a new path.")
    tmp = json_path.with_name(json_path.name + ".tmp")        # what writing the results replaces first
    if json_arg and (tmp.exists() or tmp.is_symlink()) and not is_ours(tmp):
        raise ValueError(f"{flag}: {tmp} exists, which writing {json_path.name} would replace; move it "
                         "aside.")
    check_writable(flag, json_path.parent)
    if json_arg is None or sweep:           # the run folder is written to
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--out {out_dir} is a file, not a folder.")
        try:
            held = {f.name: f for f in out_dir.iterdir()} if out_dir.is_dir() else {}
        except OSError as e:
            raise ValueError(f"--out {out_dir} cannot be read ({e.strerror}).") from None
        theirs = _theirs(held)
        if theirs:
            raise ValueError(f"--out {out_dir} holds {', '.join(theirs[:3])}{', ...' if theirs[3:] else ''}, "
                             "which the benchmark did not write; give a new or empty folder (or an earlier "
                             "benchmark's, whose results it replaces).")
        check_writable(f"--out {out_dir}", out_dir)
    return json_path, out_dir


@contextlib.contextmanager
def writing(json_path: Path, flag: str | None = None) -> Iterator[None]:
    """One benchmark writes ``json_path`` at a time (two would replace each other's results, or fail on each
    other's .tmp): an flock on ``<json>.lock`` beside it, made and removed with the block; ``ValueError``
    if another holds it, naming ``flag`` (default ``--json json_path``)."""
    path, flag = json_path.with_name(json_path.name + ".lock"), flag or f"--json {json_path}"
    try:                        # the results' folder, made now rather than as they are first written
        json_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{flag}: {json_path.parent} cannot be made ({e.strerror}).") from None
    if path.is_symlink() or (path.exists() and (not path.is_file() or path.stat().st_size)):
        raise ValueError(f"{flag}: {path} exists, which the benchmark takes as its lock; move it aside.")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ValueError(f"{flag}: {path} cannot be made ({e.strerror}).") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(f"{flag}: another benchmark is writing {json_path.name} there; wait for it to "
                             f"end, or give another {flag.split()[0]}.") from None
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)            # its holder removed it as this one opened it: take the one there now

    def remove():
        with contextlib.suppress(OSError):
            os.unlink(path)

    def remove_all():           # and the results being written as a signal's exit_now cut them short
        remove()
        with contextlib.suppress(OSError):
            os.unlink(json_path.with_name(json_path.name + ".tmp"))
    try:
        with stopping.undone_at_exit_now(remove_all):   # exit_now unwinds nothing
            yield
    finally:
        remove()
        os.close(fd)


class Stop:
    """The SIGINT/SIGTERM/SIGHUP handler while it measures: one line (``message``), exit 128 + signal at
    once, not unwinding out of a compile."""

    def __init__(self, json_path: Path):
        self.json_path = json_path
        self.before = self._written()

    def _written(self) -> int | None:
        return self.json_path.stat().st_mtime_ns if self.json_path.exists() else None

    def kept(self) -> str:
        """Whether ``json_path`` keeps what was measured (rewritten whole after each part), in a clause."""
        return (f"{self.json_path} keeps what was measured before it"
                if self._written() not in (None, self.before) else
                "nothing was written" + (f" ({self.json_path} is as it was)" if self.before else ""))

    def message(self, signum: int) -> str:
        return f"Stopped by signal {signum} ({signal.Signals(signum).name}); {self.kept()}."

    def __call__(self, signum, frame):
        stopping.exit_now(self.message(signum), 128 + signum)
