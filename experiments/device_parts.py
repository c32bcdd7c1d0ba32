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
    """The check was stopped by a signal: ``Parts.run`` raises it once ``Parts.on_signal`` noted one."""

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
        """The first signal stops the check: ``run`` stops its running part (given ``_stop``'s grace) and
        starts no other. A second one kills that part at once. It raises nothing: raised in a handler, an
        exception can land in ``Popen.wait`` holding the Popen's lock, and the next wait on it hangs."""
        if self.stopped is None:
            self.stopped = signum
        elif self.running is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.running.pid, signal.SIGKILL)

    def check_stopped(self) -> None:
        """``Stopped`` where a signal has stopped the check."""
        if self.stopped is not None:
            raise Stopped(self.stopped)

    def run(self, name: str, kind: str, cmd: list[str], env: dict) -> dict:
        self.check_stopped()
        left = self.deadline - time.monotonic()
        limit = self.timeouts[kind][self.quick]
        timeout, cut = min(limit, left), left < limit
        record = {"log": f"{name}.log", "ok": False}
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
                    status = self._waited(proc, timeout)
                except subprocess.TimeoutExpired:    # Ctrl-C first: pytest then writes what it ran so far
                    _stop(proc)
                    # The part's own limit is a failure; the --budget's is not (it may have been passing).
                    record["error"] = (f"cut short by the --budget after {timeout:.0f} s" if cut
                                       else f"timed out after {timeout:.0f} s")
                    if cut:
                        record["cut"] = True
                else:
                    # The check is stopped: its part with it, not left running (a second signal kills it).
                    if status is None or (status < 0 and self.stopped is not None):
                        _stop(proc)
                        record.update(error=f"stopped by signal {self.stopped}", stopped=True)
                    else:
                        record["returncode"] = status
                finally:
                    self.running = None
            record["seconds"] = time.perf_counter() - t0
            record["ok"] = record.get("returncode") == 0
            if "error" not in record and not record["ok"]:
                last = _last_line(self.out / record["log"])
                record["error"] = f"{stopping.ended(record['returncode'])}: {last}"
        self.summary["parts"][name] = record
        print(f"{name}: " + (f"ok, {record['seconds']:.1f} s" if record["ok"] else record["error"]),
              flush=True)
        self.write()
        self.check_stopped()
        return record

    def _waited(self, proc: subprocess.Popen, timeout: float) -> int | None:
        """The part's exit status; None once the check is stopped; ``TimeoutExpired`` after ``timeout``."""
        end = time.monotonic() + timeout
        while self.stopped is None:
            left = end - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout)
            with contextlib.suppress(subprocess.TimeoutExpired):
                return proc.wait(min(left, 0.1))
        return None

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
