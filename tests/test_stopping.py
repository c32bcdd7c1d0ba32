"""``experiments.stopping``: one line and 130/143 for a signal outside a run's own handling."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from experiments import stopping

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


def test_a_ctrl_c_ignored_as_the_command_starts_stays_ignored_until_its_main_heeds_it():
    """A script's background job (``cmd &``) starts ignoring SIGINT: run's own handler took it back (the
    device check, started so, could be stopped as it started and said "after the run")."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        done = command("""
            import os, signal
            from experiments import stopping

            def main():
                os.kill(os.getpid(), signal.SIGINT)
                return 0 if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else 3
            stopping.run(main)
        """)
    finally:
        signal.signal(signal.SIGINT, before)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("status", [0, 1])
def test_at_exit_runs_once_however_the_command_exits(status):
    """A failed command exits at once (os._exit), past atexit's handlers: the compilation cache's entries a
    full disk cut short stayed, and the next run said so."""
    done = command(f"""
        from experiments import stopping
        stopping.at_exit(print, "tidied")
        stopping.run(lambda: {status})
    """)
    assert (done.returncode, done.stdout) == (status, "tidied\n"), done.stderr


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


def test_a_closed_pipe_under_a_command_is_one_line_and_141_as_a_unix_tool_stops(tmp_path):
    """sine, the benchmark: stdout's reader (``| head``) gone, not a traceback nor 'cannot write DIR'."""
    script = tmp_path / "lines.py"
    script.write_text(textwrap.dedent("""
        from experiments import stopping

        def main():
            for _ in range(100_000):
                print("a line of the output")
            return 0
        stopping.run(main)
    """))
    done = subprocess.run(f"{sys.executable} {script} | head -1; echo status ${{PIPESTATUS[0]}}", shell=True,
                          executable="/bin/bash", cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout == "a line of the output\nstatus 141\n"
    assert done.stderr == "Stopped: the output was closed (the reader of a pipe exited).\n"


def test_closed_streams_take_nothing_and_raise_nothing(monkeypatch):
    """``>&-``/``2>&-`` leave None; a terminal gone raises on each write: a command's last words and its
    flush as it exits with a status go nowhere, without the AttributeError or OSError they raised."""
    from experiments import stopping

    class Gone:
        def write(self, text):
            raise OSError(5, "Input/output error")

        def flush(self):
            raise OSError(5, "Input/output error")
    for out, err in ((None, None), (Gone(), Gone())):
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        stopping.tell("Stopped by signal 1 (SIGHUP) ...")
        stopping.flush()


def test_stdout_that_fails_is_an_output_error_and_a_closed_pipe_stays_one(monkeypatch):
    from experiments import stopping

    class Full:
        def __init__(self, error):
            self.error = error

        def write(self, text):
            raise self.error
    for error, raised in ((OSError(28, "No space left on device"), stopping.OutputError),
                          (BrokenPipeError(32, "Broken pipe"), BrokenPipeError)):
        monkeypatch.setattr(sys, "stdout", Full(error))
        with pytest.raises(raised):
            with stopping.guarded_stdout():
                print("epoch 1/3")
        assert isinstance(sys.stdout, Full)             # put back


@pytest.mark.slow
@pytest.mark.parametrize("command,args", [
    ("experiments.timemachine", ["--preset", "tiny", "--epochs", "1"]), ("experiments.sine", []),
    ("experiments.overfit", [])])
def test_a_jax_variable_that_jax_cannot_read_is_one_line_and_exit_1_before_any_work(tmp_path, fresh_env,
                                                                                    command, args):
    """JAX reads ``$JAX_NUM_CPU_DEVICES`` as it loads, and raises on ``abc`` there, before any of ours."""
    args = [*args, "--workdir", str(tmp_path / "w")]
    done = subprocess.run([sys.executable, "-m", command, *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, env=fresh_env(JAX_NUM_CPU_DEVICES="abc"))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == ("error: $JAX_NUM_CPU_DEVICES is 'abc', which JAX does not take (it reads it "
                           "as it loads): give a value it takes, or unset it.\n")
    assert not (tmp_path / "w").exists()


def test_a_jax_variable_jax_cannot_read_is_named():
    from experiments.stopping import unreadable_variable
    assert unreadable_variable('Invalid value "1.5" for JAX flag jax_num_cpu_devices') == \
        "$JAX_NUM_CPU_DEVICES is '1.5', which JAX does not take (it reads it as it loads): give a value it " \
        "takes, or unset it."
    assert unreadable_variable('Invalid value "bogus" for JAX flag jax_default_matmul_precision').startswith(
        "$JAX_DEFAULT_MATMUL_PRECISION is 'bogus', which JAX does not take")      # it said "a whole number"
    assert unreadable_variable("invalid truth value 'abc' for environment 'JAX_ENABLE_X64'") == \
        "JAX cannot start with this environment: invalid truth value 'abc' for environment 'JAX_ENABLE_X64'."


def waiting_on(child: str) -> tuple[subprocess.Popen, Path]:
    """A command that stops at once on a signal (``exit_now``), waiting on a ``run_child`` of ``child``
    (Python code) in a ``scratch`` folder: the process and the folder."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from experiments import stopping
        stopping.handle(lambda signum, frame: stopping.exit_now("stopped", 128 + signum))
        with stopping.scratch() as folder:
            print(folder, flush=True)
            stopping.run_child([sys.executable, "-c", {child!r}])
    """)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_bytes_that_are_not_utf8_are_said_as_typed():
    typed = os.fsdecode(b"caf\xc3\xa9\xff")
    assert stopping.as_typed(f"no {typed}") == "no caf\u00e9\\xff"
    assert stopping.as_typed("\ud800 'C:\\udcafe' it's") == "\\ud800 'C:\\udcafe' it's"    # typed so: kept
    assert stopping.said(typed) == "'caf\u00e9\\xff'" and stopping.said("C:\\udcafe") == repr("C:\\udcafe")
    literal = "C:" + chr(92) + "udcafe"
    refused = (f"invalid choice: {typed!r} (choose from 'a', 'b'); invalid int value: {literal!r}; "
               f"ignored explicit argument {typed!r}")
    assert stopping.argparse_as_typed(refused) == ("invalid choice: 'caf\u00e9\\xff' (choose from 'a', 'b'); "
                                                   "invalid int value: 'C:\\\\udcafe'; ignored explicit "
                                                   "argument 'caf\u00e9\\xff'")


@pytest.mark.slow
def test_a_stop_removes_the_scratch_folder_and_kills_the_child_it_waits_on(tmp_path):
    """``exit_now`` unwinds nothing: the benchmark's compile-cache folder stayed in /tmp after a signal, and
    its child compiled on after a SIGTERM to the benchmark alone."""
    pid_file = tmp_path / "child.pid"
    proc, folder = waiting_on(f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                              "time.sleep(60)")
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text():
            break
        subprocess.run(["sleep", "0.05"])
    child_pid = int(pid_file.read_text())
    assert folder.is_dir()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM and proc.stderr.read() == "stopped\n"
    assert not folder.exists()
    assert not running(child_pid)


def running(pid: int) -> bool:
    """Whether ``pid`` runs on for 5 s: a killed one is gone, or a zombie till its new parent reaps it."""
    for _ in range(100):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state in ("Z", "X"):
            return False
        subprocess.run(["sleep", "0.05"])
    return True


def test_run_child_returns_what_subprocess_run_would(tmp_path):
    done = stopping.run_child([sys.executable, "-c", "import sys; print('out'); sys.exit('err')"])
    assert (done.returncode, done.stdout, done.stderr) == (1, "out\n", "err\n")
    with stopping.scratch() as folder:
        assert Path(folder).is_dir()
    assert not Path(folder).exists()


def test_run_child_stopped_with_popen_s_lock_held_does_not_hang(monkeypatch):
    """An exception a signal's handler raises can land in ``Popen.wait`` just as it took the Popen's lock,
    leaving it held: a next wait without a timeout hangs on it (the device check's parts once did)."""
    def interrupted(proc):
        proc._waitpid_lock.acquire()
        raise KeyboardInterrupt
    monkeypatch.setattr(subprocess.Popen, "communicate", interrupted)
    monkeypatch.setattr(stopping, "REAP_S", 0.2)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        stopping.run_child([sys.executable, "-c", "import time; time.sleep(60)"])
    assert time.monotonic() - t0 < 10


@pytest.mark.slow
def test_a_stop_while_the_child_it_waits_on_exits_does_not_hang(tmp_path):
    """The undo waited on the child inside the handler, which had interrupted communicate's own wait on
    it: a deadlock on Popen's lock (the child had closed its output and slept)."""
    proc, folder = waiting_on("import os, time; os.close(1); os.close(2); time.sleep(30)")
    subprocess.run(["sleep", "1"])                  # the child's output closed: communicate waits on it
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM and proc.stderr.read() == "stopped\n"
    finally:
        proc.kill()
    assert not folder.exists()


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie that no one reaps, as in a container, counts)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_command_stops_as_its_parent_dies_even_by_sigkill(tmp_path):
    """A device check or corpus benchmark killed by SIGKILL (the OOM killer) left its child measuring on,
    on a GPU of a timed loan, writing into the folder of the dead run after it."""
    pid_file = tmp_path / "child"
    child = (f"from experiments import stopping; stopping.while_loading(); import os, pathlib, time; "
             f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", "import sys; from experiments import stopping; "
                               f"stopping.run_child([sys.executable, '-c', {child!r}])"], cwd=ROOT)
    for _ in range(600):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    pid = int(pid_file.read_text())
    for _ in range(200):
        if _gone(pid):
            break
        time.sleep(0.05)
    assert _gone(pid)


def test_a_child_whose_parent_died_before_it_started_stops_at_once():
    """Adopted already (its parent pid is not the one it was given): it stops as a signal would stop it."""
    body = "from experiments import stopping; stopping.while_loading(); print('ran')"
    done = subprocess.run([sys.executable, "-c", body], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, stopping.PARENT_PID: "1"})
    assert (done.returncode, done.stdout) == (128 + signal.SIGTERM, "")
    assert done.stderr == ("Stopped: the command that started this one (process 1, $RNNJAX_PARENT_PID) has "
                           "exited.\n")
    for value in ("", "x"):         # one's own shell's: not a process id, not acted on
        ran = subprocess.run([sys.executable, "-c", body], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, env={**os.environ, stopping.PARENT_PID: value})
        assert (ran.returncode, ran.stdout) == (0, "ran\n")
