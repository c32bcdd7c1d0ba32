"""What stops a run from outside: SIGINT/SIGTERM/SIGHUP (after a checkpoint), another process of a multi-host
run (a non-finite loss, a diverging perplexity: ``rnnjax.diverging``)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator

from rnnjax.spelling import again


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived; a checkpoint of the last completed step was saved. ``together``:
    every process of a multi-host run stopped at this call (``rnnjax.agree.leave_together`` as they exit)."""

    def __init__(self, message: str, signum: int, together: bool = False):
        super().__init__(message)
        self.signum, self.together = signum, together


class LostProcess(RuntimeError):
    """Another process of a multi-host run stopped or failed: the collective that agrees on a stop failed."""


class StoppedByAnother(LostProcess):
    """Another process of a multi-host run stopped early at this call (its ``progress`` raised): this one
    saved the same step and stops too."""


class _StopFlag:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks between steps; a second one stops
    at once (``Interrupted``, naming it: 130 for SIGINT, 143 for SIGTERM), or as soon as a ``held``
    block has run, and any more while that unwinds are ignored."""

    def __init__(self):
        self.signum: int | None = None
        self.now = False
        self.holding = False
        self.held: int | None = None

    def __call__(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            return
        if self.now or self.held is not None:      # a third, while the second unwinds: already stopping
            return
        if self.holding:
            self.held = signum
            return
        self.now = True
        raise raised_by_a_handler(self._second(signum), signum, dropped=self._dropped,
                                  wanted=lambda: self in _active)     # not once its run has stopped

    def _dropped(self) -> None:
        self.now = False            # the signal sent again is the second one, again

    @staticmethod
    def _second(signum: int) -> Interrupted:
        # joined to a multi-host run (read without starting JAX's backend: this may come before it starts)
        distributed = sys.modules.get("jax._src.distributed")
        if distributed is not None and getattr(distributed.global_state, "client", None) is not None:
            then = ("The other processes of the multi-host run may wait for this one (its collectives): stop "
                    "them too, then start every process again to resume.")
        else:
            then = f"{again().capitalize()} to resume."
        stop = Interrupted(f"Stopped at once by a second signal {signum} ({signal.Signals(signum).name}): "
                           "the workdir keeps its last complete checkpoint, the first signal's where its "
                           f"save finished (one cut short is never listed). {then}", signum)
        stop.at_once = True         # in a multi-host run, a checkpoint manager it leaves waits for no save
        return stop


def raised_by_a_handler(exc: BaseException, signum: int, dropped=lambda: None, wanted=lambda: True
                        ) -> BaseException:
    """``exc``, for a handler of ``signum`` to raise. Where Python drops it (raised inside a garbage
    collection or weakref callback, as JAX's, or a ``__del__``, it is printed as "Exception ignored" and
    the program goes on), ``dropped()`` runs, and the signal is sent again a moment later if ``wanted()``
    then says so."""
    if not hooked(_SendAgain):
        sys.unraisablehook = _SendAgain(sys.unraisablehook)
    exc.send_again = (signum, dropped, wanted)
    return exc


def hooked(kind: type) -> bool:
    """Whether a ``kind`` wraps ``sys.unraisablehook``, at any depth (each wrapper keeps ``previous``)."""
    hook = sys.unraisablehook
    while hook is not None and not isinstance(hook, kind):
        hook = getattr(hook, "previous", None)
    return hook is not None


class _SendAgain:
    """``sys.unraisablehook``: a handler's exception that Python drops, the signal is sent again; any other
    goes to the hook before."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        again = getattr(unraisable.exc_value, "send_again", None)
        if again is None:
            return self.previous(unraisable)
        signum, dropped, wanted = again
        dropped()
        later = threading.Timer(0.05, lambda: wanted() and os.kill(os.getpid(), signum))
        later.daemon = True
        later.start()


_active: list[_StopFlag] = []
_stopping = False
_ended = False
_deferred: int | None = None


def defer(signum: int) -> bool:
    """Keeps ``signum`` for the next run's ``catch_signals``, which starts with it: its loop stops at the
    first step, where a multi-host run's processes agree to stop (a process that left alone would hang the
    others). False if one is already kept: the caller stops at once."""
    global _deferred
    if _deferred is not None:
        return False
    _deferred = signum
    return True


def stopping() -> bool:
    """Whether the last run to catch the signals caught one, and so is unwinding to stop (its
    ``Interrupted`` not yet handled): a caller's own handler can ignore more signals until it says so."""
    return _stopping


def ended() -> bool:
    """Whether the last run to catch the signals ran its block to the end, nothing raised: trained to its
    last epoch and saved (a caller's own handler can say so)."""
    return _ended


def stop_handled() -> None:
    """Says the stopped (or ended) run was handled: ``stopping()`` and ``ended()`` are false again, and a
    signal kept for a next run (``defer``) is dropped."""
    global _stopping, _ended, _deferred
    _stopping = _ended = False
    _deferred = None


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Holds a second signal until the block has run, then stops as it would have: an exception raised
    inside ``Thread.start`` (orbax's save starts one) leaves a thread that its manager can never join."""
    flag = _active[-1] if _active else None
    if flag is None or flag.holding:
        yield
        return
    flag.holding = True
    try:
        yield
    finally:
        flag.holding = False
    if flag.held is not None and not flag.now:
        flag.now = True
        raise flag._second(flag.held)


class _NotOurStop(logging.Filter):
    """Drops a library's log of our own ``Interrupted`` (orbax logs it, with its traceback, as a failed
    save when the second signal lands while it waits): the caller says it in one sentence."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], Interrupted))


def _caught() -> list[int]:
    """SIGINT, SIGTERM and, unless ignored (``nohup``), SIGHUP: a closed terminal or a dropped ssh session
    saves and stops the run as SIGTERM does, rather than killing it."""
    hup = getattr(signal, "SIGHUP", None)         # not on Windows
    keep = hup is None or signal.getsignal(hup) is signal.SIG_IGN
    return [signal.SIGINT, signal.SIGTERM] + ([] if keep else [hup])


@contextlib.contextmanager
def catch_signals() -> Iterator[_StopFlag]:
    """While the block runs, SIGINT and SIGTERM (and SIGHUP: ``_caught``) set the flag it yields
    (``_StopFlag``), which it reads between steps; then the handlers before are put back. One caught after
    the block last read the flag (it ran to its end) is passed on to the handler put back: no signal is
    lost."""
    global _deferred
    flag = _StopFlag()
    flag.signum, _deferred = _deferred, None
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag) for s in _caught()}
    quiet, absl = _NotOurStop(), logging.getLogger("absl")
    absl.addFilter(quiet)
    _active.append(flag)
    global _stopping, _ended
    _stopping = _ended = False
    ran_to_its_end = False
    try:
        yield flag
        ran_to_its_end = True
    finally:
        # Set before the handlers go back (they may ask); the flag read after: it holds any signal meanwhile.
        _ended, _stopping = ran_to_its_end, not ran_to_its_end and flag.signum is not None
        for s, handler in previous.items():
            signal.signal(s, handler)
        _active.remove(flag)
        absl.removeFilter(quiet)
        unheeded = flag.signum if ran_to_its_end and not flag.now else None
        _stopping = flag.signum is not None and unheeded is None
    if unheeded is not None:
        signal.raise_signal(unheeded)
