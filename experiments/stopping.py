"""Stopping a command at once on SIGINT/SIGTERM/SIGHUP, with one line on stderr: before and after the work,
where unwinding out of half-loaded (or torn-down) JAX can crash the interpreter; and when its output
cannot be written (``OutputError``), or its streams are gone (``tell``), or JAX cannot read its environment
(``load_jax``); what the command made for the while (``scratch``, ``run_child``) goes with it. No JAX here:
the handlers go in before it loads."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

_UNDO: list[Callable[[], object]] = []      # what exit_now undoes first, the newest first
_AT_EXIT: list[Callable[[], object]] = []   # what any exit runs, os._exit's too (``at_exit``)
REAP_S = 5.0        # how long a stopped command waits on a child it killed (``run_child``)
PARENT_PID = "RNNJAX_PARENT_PID"        # given to a command's children: they stop as it dies (``as_child``)


def exit_now(message: str, status: int):
    """Says ``message`` and exits at once: unwinding out of half-loaded or half-compiled JAX can crash
    the interpreter's teardown. A ``scratch`` folder or ``run_child`` process of the moment goes first."""
    for undo in reversed(_UNDO):
        with contextlib.suppress(Exception):
            undo()
    tell(message)
    _exit(status)


def at_exit(f: Callable, *args) -> None:
    """``atexit.register``, and run too where a command exits at once (``os._exit``, which skips atexit's)."""
    _AT_EXIT.append(functools.partial(f, *args))
    atexit.register(f, *args)


def _exit(status: int) -> None:
    flush()
    for f in _AT_EXIT:      # atexit's handlers do not run past os._exit
        with contextlib.suppress(Exception):
            f()
    os._exit(status)


@contextlib.contextmanager
def undone_at_exit_now(undo: Callable[[], object]) -> Iterator[None]:
    """``undo()`` runs if ``exit_now`` ends the process inside the block (it unwinds nothing)."""
    _UNDO.append(undo)
    try:
        yield
    finally:
        _UNDO.remove(undo)


@contextlib.contextmanager
def scratch() -> Iterator[str]:
    """A temporary folder, removed as the block ends, or by ``exit_now`` (which unwinds nothing)."""
    with tempfile.TemporaryDirectory() as path, undone_at_exit_now(lambda: shutil.rmtree(path, True)):
        yield path


def as_child(env: dict | None = None) -> dict:
    """``env`` (default this process's) for a child command that stops as this process dies, however it
    dies (a SIGKILL, the OOM killer): the child calls ``die_with_parent`` as it starts."""
    return {**(os.environ if env is None else env), PARENT_PID: str(os.getpid())}


def die_with_parent() -> None:
    """In a child started with ``as_child``: a SIGTERM as its parent dies (Linux's PR_SET_PDEATHSIG); one
    line and 143 if it has died already. Elsewhere, or for a value that is not a process id, nothing. Its
    own children are told of it afresh."""
    parent = os.environ.pop(PARENT_PID, "")
    if not parent.isdecimal() or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)         # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:         # it died before the prctl: adopted already
        exit_now(f"Stopped: the command that started this one (process {parent}, ${PARENT_PID}) has "
                 "exited.", 128 + signal.SIGTERM)


def run_child(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True, **kwargs)``; the child is killed if the
    command stops, by ``exit_now`` too (a SIGTERM to this process alone would leave it running), and
    stops as it dies (``as_child``)."""
    kwargs["env"] = as_child(kwargs.get("env"))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    # exit_now's undo only kills: waiting there, in a handler that may interrupt communicate's own wait,
    # would deadlock on Popen's lock (the child is reaped once this process exits).
    with undone_at_exit_now(proc.kill):
        try:
            out, err = proc.communicate()
        except BaseException:       # not ``with proc``: its exit waits without end
            proc.kill()
            proc.stdout.close()
            proc.stderr.close()
            # Bounded: an exception that a signal's handler raised may have left Popen's lock held.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(REAP_S)
            raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def ended(returncode: int) -> str:
    """How a child that failed ended, in words: ``exit status 1``, ``killed by signal 9``."""
    return f"exit status {returncode}" if returncode > 0 else f"killed by signal {-returncode}"


def drop_output() -> None:
    """Python flushes stdout again as it exits: that write goes nowhere instead of failing twice."""
    with contextlib.suppress(OSError, ValueError, AttributeError):      # no descriptor (captured, None)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def output_closed(kept: str = "") -> int:
    """The reader of a pipe (``| head``) exited: one line saying what is ``kept`` (a clause, if given), and
    the status a piped Unix tool stops with, 128 + SIGPIPE."""
    drop_output()
    tell("Stopped: the output was closed (the reader of a pipe exited)" + (f"; {kept}." if kept else "."))
    return 128 + signal.SIGPIPE


def tell(message: str) -> None:
    """``message`` on stderr (``as_typed``), if it is there: a closed terminal (a hang-up) or ``2>&-`` takes
    nothing."""
    try:
        print(as_typed(message), file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):       # closed, or None
        pass


def tell_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A ``warnings.showwarning`` that says a warning as the commands say their own, ``warning: ...`` in one
    line, without the source line that raised it: their user wrote no code."""
    tell(f"warning: {message}")


def as_typed(message: str) -> str:
    """``message`` with an argument's bytes that are not UTF-8 shown as typed (``\\xff``): Python keeps them
    as surrogates, which print as ``\\udcff`` (a repr's are said so where it is made: ``spelling.said``)."""
    try:
        raw = message.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:      # a surrogate no byte became
        raw = message.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


# argparse's repr of a value it refuses, where a surrogate shows as \udcXX after an even count of backslashes.
_REFUSED = re.compile(r"((?:invalid (?:choice|[\w ]+ value)|ignored explicit argument):? )"
                      r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")
_SURROGATE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def said(text: str) -> str:
    """``repr(text)``, a byte of an argument that is not UTF-8 as typed (``rnnjax.spelling.said``, here
    without JAX)."""
    return _SURROGATE.sub(r"\1\\x\2", repr(text))


def argparse_as_typed(message: str) -> str:
    """``as_typed`` of an argparse error, whose refused value is a repr."""
    return as_typed(_REFUSED.sub(lambda m: m[1] + _SURROGATE.sub(r"\1\\x\2", m[2]), message))


def flush() -> None:
    """stdout and stderr flushed, where they are still there (``>&-`` leaves ``None``)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


class OutputError(OSError):
    """Writing the command's own output failed: a full disk under stdout, a terminal gone."""


class _Guarded:
    """stdout whose write and flush failures are ``OutputError`` (a closed pipe's stays a
    ``BrokenPipeError``), told from the failures of the files a command writes."""

    def __init__(self, stream):
        self.stream = stream

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def write(self, text: str) -> int:
        return self._do(self.stream.write, text)

    def flush(self) -> None:
        return self._do(self.stream.flush)

    @staticmethod
    def _do(f, *args):
        try:
            return f(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(e.errno, e.strerror) from None


@contextlib.contextmanager
def guarded_stdout() -> Iterator[None]:
    """While the block runs, a failure to write stdout is an ``OutputError``."""
    stream = sys.stdout
    if stream is not None and not isinstance(stream, _Guarded):
        sys.stdout = _Guarded(stream)
    try:
        yield
    finally:
        if isinstance(sys.stdout, _Guarded) and sys.stdout.stream is stream:
            sys.stdout = stream


def handle(handler) -> dict:
    """SIGINT, SIGTERM and, unless ignored (``nohup``), SIGHUP go to ``handler``: a closed terminal stops
    the command as SIGTERM does. Returns the handlers before, for ``put_back``."""
    hup = getattr(signal, "SIGHUP", None)         # not on Windows
    hup = [] if hup is None or signal.getsignal(hup) is signal.SIG_IGN else [hup]
    return {s: signal.signal(s, handler) for s in [signal.SIGINT, signal.SIGTERM, *hup]}


def put_back(previous: dict) -> None:
    """The signal handlers ``handle`` replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def stopped_while_loading(signum, frame):
    exit_now(f"Stopped by signal {signum} while starting, before anything was written.", 128 + signum)


def stopped_after_the_run(signum, frame):
    exit_now(f"Stopped by signal {signum} as the program exited, after the run: its workdir is as the run "
             "left it.", 128 + signum)


def while_loading() -> None:
    """Before a command imports JAX (it takes a while): a signal says one line and exits 128 + signal. A
    child of another command stops as that dies (``die_with_parent``)."""
    handle(stopped_while_loading)
    die_with_parent()


def load_jax() -> None:
    """Imports JAX, which reads its ``$JAX_*`` variables as it loads: one it cannot read
    (``JAX_NUM_CPU_DEVICES=abc``) says one line naming it and exits 1, before any work."""
    try:
        import jax  # noqa: F401
    except ValueError as e:
        exit_now(f"error: {unreadable_variable(str(e))}", 1)


def unreadable_variable(error: str) -> str:
    """JAX's ``error`` on a variable it could not read, in one sentence naming the variable."""
    match = re.fullmatch(r'Invalid value "(.*)" for JAX flag (jax_\w+)', error)     # a number, a name
    if match:
        return (f"${match[2].upper()} is {said(match[1])}, which JAX does not take (it reads it as it "
                "loads): give a value it takes, or unset it.")
    return f"JAX cannot start with this environment: {error.rstrip('.')}."


def ignore_signals() -> None:
    """As a finished command exits: Python's shutdown (JAX's teardown takes up to half a second) puts back
    the default handlers, which would kill it, its work done and saved, with no word and status -2/-15."""
    handle(signal.SIG_IGN)


def run(main: Callable[[], int]) -> None:
    """Exits with ``main()``'s status. ``main`` handles the signals while it works; as it ends a signal says
    one line. A stopped or failed command exits at once: orbax's threads, cut short, report at teardown.
    A SIGINT ignored as it starts (a script's background job) stays ignored until ``main`` handles it, as
    the device check's does: the commands that call ``while_loading`` first take it there."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    handle(stopped_after_the_run)       # main's handlers restore these as it returns
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Runs after the atexit handlers registered from here on (jax.distributed's shutdown), before the rest.
    atexit.register(ignore_signals)
    try:
        status = main()
    except KeyboardInterrupt:     # a Ctrl-C as main hands the signals back, its own handlers still in place
        stopped_after_the_run(signal.SIGINT, None)
    except BrokenPipeError:       # the reader of a pipe (| head) exited: stop as a piped Unix tool does
        status = output_closed()
    if status:
        _exit(status)
    sys.exit(status)
