"""``python -m experiments.device_check --quick`` runs every part on a CPU and its summary holds real
values; a part that fails or runs out of time is recorded and the others still run."""

import argparse
import builtins
import errno
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SUITE_XLA_FLAGS
from experiments import device_check
from experiments.benchmark import sizes, torch_available
from rnnjax import kernels
from rnnjax.data import TimeMachine


@pytest.mark.slow
def test_quick_check_writes_a_summary_of_real_figures(real_text_path, tmp_path, fresh_env):
    out = tmp_path / "check"
    # This shows the command works, its figures are not read.
    proc = subprocess.run([sys.executable, "-m", "experiments.device_check", "--out", str(out), "--quick",
                           "--data", real_text_path], env=fresh_env(**SUITE_XLA_FLAGS), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "cpu" and summary["device_kind"]
    assert set(summary["versions"]) >= {"python", "jax", "jaxlib", "flax", "optax", "orbax", "torch"}
    assert (summary["versions"]["torch"] is not None) == torch_available()
    for name, part in summary["parts"].items():
        assert part["ok"] and part["seconds"] > 0 and (out / part["log"]).stat().st_size > 0, name
    tests = summary["parts"]["tests"]
    assert tests["passed"] > 10 and tests["failed"] == 0
    V = len(TimeMachine(32, 8, path=real_text_path).vocab)
    for what, runs in (("recipe", 1), ("seeds", 4)):
        r = summary[what]
        assert r["epochs"] == device_check.QUICK_EPOCHS and r["cold_s"] > 0 and r["warm_s"] > 0
        ppl = [r["val_ppl"]] if runs == 1 else r["val_ppl"]
        assert len(ppl) == runs and all(math.isfinite(p) and 1 < p < V for p in ppl), ppl
    torch = ["torch lean", "torch d2l"] if torch_available() else []
    assert list(summary["sizes"]) == [s.label for s in sizes.settings("small")]
    for s, (label, size) in zip(sizes.settings("small"), summary["sizes"].items()):
        bf16 = s.label in sizes.BFLOAT16_AT["small"]
        contenders = [f"rnnjax {k}" for k in sizes.applicable_kernels(s, "cpu")] + ["flax"] + torch
        contenders += [sizes.BF16] if bf16 else []
        assert sorted(size["ms_per_step"]) == sorted(contenders) and len(contenders) >= 4, label
        assert all(isinstance(ms, float) and ms > 0 for ms in size["ms_per_step"].values()), size
        assert size["auto_kernel"] in kernels.KERNELS and size["ratios"]
        assert ("bf16_ratio" in size) == bf16 and size.get("bf16_ratio", 1) > 0, size
    assert any("bf16_ratio" in size for size in summary["sizes"].values())
    assert list(summary["parts"]) == PARTS
    assert "device check (cpu" in proc.stdout and f"summary.json after each part, in {out}\n" in proc.stdout
    assert f"rnnjax on 1 device), written to {out / 'bench.json'} after each size:" in (
        out / "bench.log").read_text()


# The parts in the order they run: the step table first (the figures a short loan is for), the tests last
# (pytest, cut short, still writes what it ran).
PARTS = ["info", "bench", "recipe-cold", "recipe-warm", "seeds-cold", "seeds-warm", "tests"]


@pytest.mark.parametrize("quick", [False, True])
def test_the_parts_run_the_step_table_first_and_the_tests_last(tmp_path, monkeypatch, quick):
    ran = []

    def run(name, kind, cmd, env):
        ran.append((name, cmd))
        parts.summary["parts"][name] = record = {"ok": False, "skipped": True, "error": "skipped: test"}
        return record

    parts = device_check.Parts(tmp_path, {"parts": {}}, budget_s=100, quick=quick)
    monkeypatch.setattr(parts, "run", run)
    args = argparse.Namespace(out=tmp_path, data=__file__, quick=quick)
    assert device_check._check(args, parts) == 1
    assert [name for name, _ in ran] == PARTS
    bench = ran[1][1]
    assert bench[bench.index("--sizes") + 1] == ("small" if quick else "gpu")


def test_a_relative_out_is_where_the_command_starts_not_the_repository_root(real_text_path, tmp_path,
                                                                            monkeypatch):
    """The parts run from the repository root: a relative --out given to them wrote half the check there."""
    monkeypatch.chdir(tmp_path)
    args = device_check.parse_args(["--out", "check", "--data", os.path.relpath(real_text_path)])
    assert args.out == (tmp_path / "check").resolve() and args.data == str(Path(real_text_path).resolve())


def test_a_jax_environment_it_cannot_start_with_is_one_sentence(tmp_path, fresh_env, real_text_path):
    """A ``$JAX_NUM_CPU_DEVICES`` JAX cannot read stops the check before any part (every part would fail);
    a ``$JAX_PLATFORMS`` backend this machine lacks is the info part's sentence, not an AssertionError."""
    proc = subprocess.run([sys.executable, "-m", "experiments.device_check", "--quick", "--out",
                           str(tmp_path / "check"), "--data", real_text_path], capture_output=True, text=True,
                          cwd=device_check.ROOT, env=fresh_env(JAX_NUM_CPU_DEVICES="abc"), timeout=60)
    assert (proc.returncode, proc.stdout) == (1, "") and not (tmp_path / "check").exists()
    assert proc.stderr == ("error: $JAX_NUM_CPU_DEVICES is 'abc', which JAX does not take (it reads it "
                           "as it loads): give a value it takes, or unset it.\n")
    env = {**fresh_env(PYTHONPATH=str(device_check.ROOT)), "JAX_PLATFORMS": "tpu"}       # on any machine here
    info = subprocess.run([sys.executable, "-c", device_check.MACHINE_INFO], capture_output=True, text=True,
                          env=env, timeout=60)
    assert info.returncode == 1 and info.stderr.splitlines()[-1].startswith(
        "error: $JAX_PLATFORMS='tpu' asks for a backend JAX cannot start here")


def test_the_info_part_records_a_broken_torch_and_goes_on(tmp_path, fresh_env):
    """A torch whose CUDA libraries do not load raises OSError, not ImportError, as it is imported."""
    (tmp_path / "torch").mkdir()
    why = "libcudnn.so.9: cannot open shared object"
    (tmp_path / "torch" / "__init__.py").write_text(f"raise OSError({why!r})")
    proc = subprocess.run([sys.executable, "-c", device_check.MACHINE_INFO], capture_output=True, text=True,
                          env=fresh_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{device_check.ROOT}"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.splitlines()[-1])
    assert info["backend"] and info["torch_device"] is None
    installed = info["versions"]["torch"] is not None          # the distribution, found without importing it
    assert info.get("torch_error") == (f"OSError: {why}" if installed else None)


# A check of one part that hangs, its process id the first line of its log.
_HANGING_CHECK = """
import sys
from pathlib import Path
from experiments import device_check
parts = device_check.Parts(Path(sys.argv[1]), {"parts": {}}, budget_s=100, quick=True,
                           timeouts={"t": (60, 60)})
hang = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"]
sys.exit(device_check.until_stopped(parts, lambda: parts.run("hangs", "t", hang, {})["returncode"]))
"""


@pytest.mark.parametrize("signum, ignored", [(signal.SIGTERM, False), (signal.SIGINT, True)])   # one handler
def test_a_stopped_check_stops_its_part_and_says_so_in_one_line(tmp_path, signum, ignored):
    """Ctrl-C or SIGTERM: the running part is stopped (not left behind), summary.json says so, one line and
    128 + the signal. A check started ignoring SIGINT (a script's background job) goes on; SIGTERM stops
    it."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.getsignal(signal.SIGINT))
    try:                        # an ignored signal is inherited: the check starts ignoring it
        check = subprocess.Popen([sys.executable, "-c", _HANGING_CHECK, str(tmp_path)], cwd=device_check.ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, before)
    log, deadline = tmp_path / "hangs.log", time.monotonic() + 30
    while not (log.is_file() and log.read_text().strip()):
        assert check.poll() is None and time.monotonic() < deadline, check.communicate()
        time.sleep(0.05)
    part = int(log.read_text().split()[0])
    check.send_signal(signum)
    if ignored:
        with pytest.raises(subprocess.TimeoutExpired):
            check.wait(1)
        signum = signal.SIGTERM
        check.send_signal(signum)
    t0 = time.monotonic()
    _, err = check.communicate(timeout=30)
    assert time.monotonic() - t0 < 10           # the part heeded the Ctrl-C: no 20 s grace, then SIGKILL
    assert check.returncode == 128 + signum, err
    assert err == (f"Stopped by signal {signum} ({signal.Signals(signum).name}), the running part with it; "
                   f"{tmp_path / 'summary.json'} has what ran.\n")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by_signal"] == signum and summary["parts"]["hangs"]["stopped"]
    with pytest.raises(ProcessLookupError):
        os.kill(part, 0)


@pytest.mark.slow
def test_the_command_started_ignoring_ctrl_c_keeps_ignoring_it(real_text_path, tmp_path):
    """As a script's background job: Ctrl-C does not stop it, SIGTERM does, in one line; and SIGTERMs that
    go on as it exits leave its status 143 (they had killed it, -15, in Python's shutdown)."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        argv = ["-m", "experiments.device_check", "--out", str(tmp_path / "c"), "--quick", "--data",
                real_text_path]
        check = subprocess.Popen([sys.executable, *argv], cwd=device_check.ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, before)
    deadline = time.monotonic() + 60
    while not (tmp_path / "c" / "info.log").is_file():
        assert check.poll() is None and time.monotonic() < deadline, check.communicate()
        time.sleep(0.05)
    check.send_signal(signal.SIGINT)
    with pytest.raises(subprocess.TimeoutExpired):
        check.wait(1)
    deadline = time.monotonic() + 60
    while check.poll() is None and time.monotonic() < deadline:
        check.send_signal(signal.SIGTERM)
        time.sleep(0.05)
    _, err = check.communicate(timeout=5)
    assert check.returncode == 128 + signal.SIGTERM and err.startswith("Stopped by signal 15 (SIGTERM)"), err
    assert err.count("\n") == 1
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    stopped = [name for name, part in summary["parts"].items() if part.get("stopped")]   # info, or the next
    assert summary["stopped_by_signal"] == signal.SIGTERM and len(stopped) == 1, summary["parts"]


def test_bad_arguments_say_so_before_any_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "summary.json").write_text("{}")
    with pytest.raises(SystemExit):
        device_check.parse_args(["--out", str(tmp_path / "used"), "--data", __file__])
    assert "exists and is not an empty folder" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(SystemExit):
        device_check.parse_args(["--out", str(tmp_path / "a-file"), "--data", __file__])
    assert f"--out {tmp_path / 'a-file'} is a file; give a new folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):      # exists, but not The Time Machine: refused before any part runs
        device_check.parse_args(["--out", str(tmp_path / "new"), "--data", __file__])
    err = capsys.readouterr().err
    assert f"{__file__} has " in err and "it is not d2l's timemachine.txt" in err      # its size, or SHA-1
    assert err.count("error:") == 1 and not (tmp_path / "new").exists()
    with pytest.raises(SystemExit):
        device_check.parse_args(["--out", str(tmp_path / "new"), "--data", str(tmp_path / "missing.txt")])
    assert "no file" in capsys.readouterr().err and not (tmp_path / "new").exists()
    with pytest.raises(SystemExit):
        device_check.parse_args(["--out", str(tmp_path / "new"), "--data", str(tmp_path)])
    assert f"--data {tmp_path} is a folder" in capsys.readouterr().err and not (tmp_path / "new").exists()
    os.mkfifo(tmp_path / "fifo.txt")                                    # it said "no file"
    with pytest.raises(SystemExit):
        device_check.parse_args(["--out", str(tmp_path / "new"), "--data", str(tmp_path / "fifo.txt")])
    assert f"--data {tmp_path / 'fifo.txt'} is not a regular file" in capsys.readouterr().err
    for budget in ("0", "5", "9.9", "nan"):     # near the least time in which a part starts: none would
        with pytest.raises(SystemExit):
            device_check.parse_args(["--out", str(tmp_path / "new"), "--data", __file__, "--budget", budget])
        assert f"--budget must be at least 10 seconds, got {float(budget):g}." in capsys.readouterr().err
    monkeypatch.setenv("RNNJAX_TIMEMACHINE", __file__)
    with pytest.raises(SystemExit):             # not the environment's file instead
        device_check.parse_args(["--out", str(tmp_path / "new"), "--data", ""])
    assert "error: --data is empty" in capsys.readouterr().err and not (tmp_path / "new").exists()
    monkeypatch.chdir(tmp_path / "used")
    with pytest.raises(SystemExit):             # not the current folder (it said "--out . exists")
        device_check.parse_args(["--out", "", "--data", __file__])
    assert capsys.readouterr().err.startswith("error: --out is empty; give a new folder for the logs")


@pytest.mark.parametrize("what", ["parent a file", "parent a dangling link", "dangling link", "loop",
                                  "not writable", "unreadable"])
def test_an_unusable_out_folder_is_one_line_and_status_1_before_any_work(tmp_path, capsys, monkeypatch,
                                                                         what):
    out = tmp_path / "out"
    (tmp_path / "file").write_text("mine")
    if what == "parent a file":
        out = tmp_path / "file" / "out"
        says = f"--out {out} cannot be made: {tmp_path / 'file'} is a file, not a directory."
    elif what == "parent a dangling link":          # rnnjax.workdir's sentence, said of --out
        (tmp_path / "link").symlink_to(tmp_path / "gone")
        out = tmp_path / "link" / "out"
        says = (f"--out {out} cannot be made: {tmp_path / 'link'} is a link to {tmp_path / 'gone'}, which "
                "does not exist; make that folder, or use another --out.")
    elif what == "dangling link":
        out.symlink_to(tmp_path / "gone")
        says = f"--out {out} is a link to nothing; give a new folder."
    elif what == "loop":
        out.symlink_to(tmp_path / "back")
        (tmp_path / "back").symlink_to(out)
        says = f"--out {out} is in a loop of links; give a new folder."
    else:
        out.mkdir()       # mode bits do not stop root: what a user without the permission meets
        if what == "not writable":
            monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != out)
            says = f"--out {out} is not writable."
        else:
            def unreadable(self):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            monkeypatch.setattr(Path, "iterdir", unreadable)
            says = f"--out {out} cannot be read (Permission denied); give a new folder."
    with pytest.raises(SystemExit) as e:
        device_check.parse_args(["--out", str(out), "--data", __file__])
    assert e.value.code == 1 and capsys.readouterr().err == f"error: {says}\n"
    assert (tmp_path / "file").read_text() == "mine" and not (tmp_path / "gone").exists()


def test_a_full_disk_stops_the_check_in_one_line_keeping_the_last_summary(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(device_check, "parse_args",
                        lambda argv: argparse.Namespace(out=out, data=__file__, quick=True, budget=100.0))
    real_open = io.open

    def full_disk(file, mode="r", *args, **kwargs):     # the file is made (or emptied), its write fails
        f = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and Path(file).parent == out and "r" not in mode:
            f.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return f

    def check(args, parts):
        parts.write()
        monkeypatch.setattr(io, "open", full_disk)
        monkeypatch.setattr(builtins, "open", full_disk)
        parts.summary["parts"]["info"] = {"ok": True}
        parts.write()
        return 0
    monkeypatch.setattr(device_check, "_check", check)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        assert device_check.main([]) == 1
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    monkeypatch.undo()
    assert capsys.readouterr().err == (
        f"error: {out / 'summary.json'} cannot be written (No space left on device); free space (or fix the "
        "cause) and run the check again, with a new --out (this one keeps what the check wrote so far).\n")
    assert json.loads((out / "summary.json").read_text())["parts"] == {}
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "work"]


@pytest.mark.parametrize("error, said, status, signum", [
    (OSError(errno.ENOSPC, "No space left on device"), ": No space left on device (writing the output)",
     1, None),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), ": the output was closed (the reader of a pipe exited)",
     141, None),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), " by signal 2 (SIGINT), the running part with it",
     130, signal.SIGINT),        # a Ctrl-C to `check | tee log` stops tee too: the signal came first
])
def test_its_own_output_failing_stops_it_in_one_line_keeping_what_ran(tmp_path, capsys, monkeypatch,
                                                                      error, said, status, signum):
    """Not "--out cannot be written": stdout on a full disk, or | head, is not the folder's fault."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(device_check, "parse_args",
                        lambda argv: argparse.Namespace(out=out, data=__file__, quick=True, budget=100.0))
    monkeypatch.setattr(os, "dup2", lambda fd, fd2: None)        # where it sends Python's last flush

    def check(args, parts):
        parts.summary["parts"]["info"] = {"ok": True, "seconds": 1.0}
        parts.stopped = signum
        stream = getattr(sys.stdout, "stream", sys.stdout)      # under the command's guard, if any
        monkeypatch.setattr(stream, "write", lambda text: (_ for _ in ()).throw(error), raising=False)
        print("info: ok, 1.0 s")
        return 0
    monkeypatch.setattr(device_check, "_check", check)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        assert device_check.main([]) == status
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    monkeypatch.undo()
    assert capsys.readouterr().err == f"Stopped{said}; {out / 'summary.json'} has what ran.\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parts"] == {"info": {"ok": True, "seconds": 1.0}}
    assert summary.get("stopped_by_signal") == signum


def test_stopped_before_the_output_folder_was_made_it_says_nothing_was_written(tmp_path, capsys):
    """With stdout on a full disk the first line failed before --out was made: it named a summary.json."""
    from experiments.device_parts import Parts
    out = tmp_path / "never"
    parts = Parts(out, {"parts": {}}, 100.0, True)
    assert device_check._kept(parts, "No space left on device (writing the output)", 1) == 1
    assert capsys.readouterr().err == (f"Stopped: No space left on device (writing the output); nothing was "
                                       f"written ({out}).\n")
    assert not out.exists()
