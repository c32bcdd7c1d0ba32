"""What orbax (and the asyncio and tensorstore under it) would print that rnnjax says itself, in one
sentence: dropped; everything else passes."""

from __future__ import annotations

import logging
import os
import sys

from rnnjax.stops import hooked


class Tracebacks(logging.Filter):
    """Drops orbax's logs of a failure with its traceback (hundreds of lines for a full disk): a checkpoint
    manager's owner reports each failed save in one sentence with its cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and "orbax" in record.pathname)


_STEP_METADATA = ("Metadata file does not exist: ", "Failed to json parse Metadata file: ",
                  "Failed to read Metadata file: ")


class StepMetadata(logging.Filter):
    """Drops orbax's logs of a missing or unreadable ``_CHECKPOINT_METADATA`` (not JSON, not UTF-8) in a
    step folder under ``directory`` (its timestamps; rnnjax keeps what it needs in its own meta): the plan
    says which step the run resumes from."""

    def __init__(self, directory: str | os.PathLike):
        super().__init__()
        self.directory = str(directory)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(_STEP_METADATA) and self.directory in message)


class _Noise(logging.Filter):
    """Drops asyncio's "Future/Task exception was never retrieved" (of a read orbax abandoned), and orbax's
    warning that it removes a save's leftover temporary directory (of a process killed mid-save)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Future exception was never retrieved",
                                                   "Task exception was never retrieved",
                                                   "Attempted to create temporary directory"))


def quiet() -> None:
    """Reads of a damaged checkpoint that orbax abandons can finish after their event loop closed:
    tensorstore then reports "Event loop is closed" as unraisable, and asyncio a future never retrieved.
    Both are the damage already reported, in one sentence; they are dropped, everything else passes. So is
    orbax's warning on saving over a killed save's temporary directory: the plan says where it resumes.
    Installed once; calling it again does nothing."""
    if hooked(_QuietHook):
        return
    sys.unraisablehook = _QuietHook(sys.unraisablehook)
    logging.getLogger("asyncio").addFilter(_NOISE)        # one filter however often: logging adds it once
    logging.getLogger("absl").addFilter(_NOISE)


class _QuietHook:
    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            self.previous(unraisable)


_NOISE = _Noise()
