"""Stopping a command at once on SIGINT/SIGTERM, with one line on stderr: before and after the work,
where unwinding out of half-loaded (or torn-down) JAX can crash the interpreter. No JAX here: the
handlers go in before it loads."""

from __future__ import annotations

import os
import sys


def exit_now(message: str, status: int):
    """Says ``message`` and exits at once: unwinding out of half-loaded or half-compiled JAX can crash
    the interpreter's teardown."""
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)


def stopped_while_loading(signum, frame):
    exit_now(f"Stopped by signal {signum} while starting, before anything was written.", 128 + signum)


def stopped_after_the_run(signum, frame):
    exit_now(f"Stopped by signal {signum} as the program exited, after the run: its workdir is as the run "
             "left it.", 128 + signum)
