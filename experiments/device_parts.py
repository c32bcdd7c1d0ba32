"""The device check's parts: each a process in its own session, with a timeout, under the check's deadline
(``--budget``); what each did recorded in ``summary.json`` (``experiments.device_check``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from experiments import stopping
from experiments.device_summary import write_summary

ROOT = Path(__file__).resolve().parent.parent
# Per part, seconds: (on a GPU, with --quick). The whole run stops starting parts at --budget.
TIMEOUTS = {"info": (120, 60), "tests": (240, 120), "recipe": (120, 60), "bench": (300, 150)}


class Stopped(Exception):
    """The check was stopped by a signal (``Parts.on_signal``)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Parts:
    """Runs each part as a process in its own session (so that a timeout stops its children too), its
    output in ``DIR/<name>.log``; records what happened in ``summary['parts']`` and rewrites summary.json."""
    least_s = 5.0            # the least time left to the --budget in which a part is started

    def __init__(self, out: Path, summary: dict, budget_s: float, quick: bool, timeouts: dict = TIMEOUTS):
        self.out, self.summary, self.quick, self.timeouts = out, summary, quick, timeouts
        self.deadline = time.monotonic() + budget_s
        self.running: subprocess.Popen | None = None
        self.stopped: int | None = None

    def on_signal(self, signum: int, frame) -> None:
        """The first signal stops the check (its running part first, given ``_stop``'s grace); a second one
        kills that part at once."""
        if self.stopped is None:
            self.stopped = signum
            raise Stopped(signum)
        if self.running is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.running.pid, signal.SIGKILL)

    def run(self, name: str, kind: str, cmd: list[str], env: dict) -> dict:
        left = self.deadline - time.monotonic()
        limit = self.timeouts[kind][self.quick]
        timeout, cut = min(limit, left), left < limit
        record, stopped = {"log": f"{name}.log", "ok": False}, None
        if left < self.least_s:
            # Nothing ran: no log.
            record = {"ok": False, "skipped": True, "error": "skipped: the --budget ran out"}
        else:
            t0 = time.perf_counter()
            with open(self.out / f"{name}.log", "w") as log:
                _pass_on_ctrl_c()
                self.running = proc = subprocess.Popen(cmd, cwd=ROOT, env=stopping.as_child(env), stdout=log,
                                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                       start_new_session=True)
                try:
                    try:
                        record["returncode"] = proc.wait(timeout)
                    except subprocess.TimeoutExpired:    # Ctrl-C first: pytest then writes what it ran so far
                        _stop(proc)
                        # The part's own limit is a failure; the --budget's is not (it may have been passing).
                        record["error"] = (f"cut short by the --budget after {timeout:.0f} s" if cut
                                           else f"timed out after {timeout:.0f} s")
                        if cut:
                            record["cut"] = True
                except Stopped as e:        # the check is stopped: its part with it, not left running
                    _stop(proc)
                    stopped = e
                    record.update(error=f"stopped by signal {e.signum}", stopped=True)
                finally:
                    self.running = None
            record["seconds"] = time.perf_counter() - t0
            record["ok"] = record.get("returncode") == 0
            if "error" not in record and not record["ok"]:
                last = _last_line(self.out / record["log"])
                record["error"] = f"exit status {record['returncode']}: {last}"
        self.summary["parts"][name] = record
        print(f"{name}: " + (f"ok, {record['seconds']:.1f} s" if record["ok"] else record["error"]),
              flush=True)
        self.write()
        if stopped is not None:
            raise stopped
        return record

    def write(self) -> None:
        write_summary(self.out, self.summary)


def _pass_on_ctrl_c() -> None:
    """Where SIGINT is ignored (a script's background job), ignores it with a handler instead: a part inherits
    an ignored signal, and would wait out ``_stop``'s grace instead of writing what it has; not a handled one.
    (Not a ``preexec_fn``: that forks a process whose threads, JAX's in a test, may hold locks.)"""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, _ignore)


def _ignore(signum: int, frame) -> None:
    pass


def _stop(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGINT to the part's process group, SIGKILL to what is left after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):      # it may have ended by itself just now
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"
