"""``experiments.stopping``: one line and 130/143 for a signal outside a run's own handling."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def command(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(body)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_as_a_finished_command_exits_is_ignored_not_a_silent_kill(signum):
    """Python's shutdown puts back the default handlers: a signal then would kill a finished run with no
    word (-2/-15). The atexit handlers registered before ``run`` run after its own, as Python's teardown
    does: a signal sent there is ignored."""
    done = command(f"""
        import atexit, os
        from experiments import stopping
        atexit.register(lambda: (os.kill(os.getpid(), {int(signum)}), print("still here")))
        stopping.run(lambda: 0)
    """)
    assert (done.returncode, done.stdout, done.stderr) == (0, "still here\n", "")


@pytest.mark.slow
@pytest.mark.parametrize("signum, ending", [
    (signal.SIGTERM, "os.kill(os.getpid(), signal.SIGTERM)"),    # run's handler, after main's
    (signal.SIGINT, "raise KeyboardInterrupt"),                   # main's own, as it hands them back
])
def test_a_signal_after_the_run_but_before_it_exits_says_so(signum, ending):
    done = command(f"""
        import os, signal
        from experiments import stopping

        def main():
            {ending}
            return 0
        stopping.run(main)
    """)
    assert done.returncode == 128 + signum
    assert done.stderr == (f"Stopped by signal {int(signum)} as the program exited, after the run: its "
                           "workdir is as the run left it.\n")
