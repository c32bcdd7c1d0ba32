"""One command that checks a machine, a GPU above all, in one go.

Command, from the repository root (no network, no install step)::

    PYTHONPATH=. python -m experiments.device_check --out DIR [--data timemachine.txt] [--quick]

On a GPU it takes at most ``--budget`` seconds (default 540), its parts in
this order, the most wanted first: the machine (``info``); the benchmark's step table at the GPU sizes
(``--sizes gpu``, the 2-layer LSTM 1024 first, rnnjax's hoisted kernel in
bfloat16 too at the large LSTMs, cuDNN's LSTM last at each size); d2l's
recipe from the command line as a whole process, first with a fresh, empty
compilation cache (everything compiled) and again with it warm; the same with
``--seeds 0,1,2,3``; and last the fast test subset (``pytest -m "not slow"``)
on the default backend, which the budget may cut: the tests it ran are
counted. ``--quick`` runs the same on a CPU in about a minute: the
benchmark's small sizes, 3 epochs, one test file. Each part runs as
its own process with a timeout (and the whole within ``--budget``); a part
that fails or times out is recorded, and the others still run; one the budget
leaves no time for is recorded as skipped, and one it stops as cut short (not
failed). Ctrl-C or SIGTERM stops the check and its running part, summary.json
saying so. The ``--data`` file's SHA-1 is checked before any part.

Writes into DIR (which must be new or empty): each part's log
(``bench.log``, ``recipe-cold.log``, ... ``tests.log``), ``tests.xml``,
``bench.json``, the runs' workdirs and the cache under ``work/``, and
``summary.json``: backend, device, versions, per size the ms per step of
every contender and the ratios (bfloat16's against float32's as
``bf16_ratio``), the recipe's seconds cold and warm and its validation
perplexity, the four seeds' seconds and perplexities, and the tests passed
and failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from experiments import stopping
from experiments.device_parts import ROOT, Parts, Stopped
from experiments.device_summary import (MACHINE_INFO, NotWritten, check_out, describe_machine, final_val_ppl,
                                        read_back, report)
from experiments.parsing import Parser

# --quick: a test file that shows the part works, in seconds (the kernels' own tests take minutes on a CPU).
QUICK_TESTS = ["tests/test_config.py"]
QUICK_EPOCHS = 3


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(prog="python -m experiments.device_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="a new (or empty) folder for the logs and summary.json")
    p.add_argument("--data", help="local timemachine.txt (else $RNNJAX_TIMEMACHINE, else ./timemachine.txt)")
    p.add_argument("--quick", action="store_true",
                   help="a CPU-sized run in about a minute: one test file, 3 epochs, the small sizes")
    p.add_argument("--budget", type=float, default=540.0, metavar="SECONDS",
                   help="no part starts after this many seconds, and none runs past them (default 540)")
    args = p.parse_args(argv)
    data = (os.environ.get("RNNJAX_TIMEMACHINE") or "timemachine.txt") if args.data is None else args.data
    try:
        if args.out == "":          # not the current folder
            raise ValueError("--out is empty; give a new folder for the logs (a shell variable that was not "
                             "set?).")
        args.out = Path(args.out)
        check_out(args.out)
        if not args.budget >= 2 * Parts.least_s:        # no part starts with less than least_s left
            raise ValueError(f"--budget must be at least {2 * Parts.least_s:g} seconds, got {args.budget:g}.")
        if not data:
            raise ValueError("--data is empty; give d2l's timemachine.txt as --data PATH.")
        if Path(data).is_dir():
            raise ValueError(f"--data {data} is a folder; give d2l's timemachine.txt itself.")
        if Path(data).exists() and not Path(data).is_file():
            raise ValueError(f"--data {data} is not a regular file; give d2l's timemachine.txt itself.")
        if not Path(data).is_file():
            raise ValueError(f"no file {stopping.said(data)}: give d2l's timemachine.txt as --data PATH or "
                             "$RNNJAX_TIMEMACHINE (the check downloads nothing).")
        try:    # here, not at the top: a machine without JAX still gets its parts run and recorded
            from rnnjax.backend import check_cpu_device_count
            from rnnjax.source import timemachine_path
            from rnnjax.spelling import flag_spelling
        except ImportError:
            pass
        else:   # every part trains on it: a wrong file, or a device count JAX fails on, fails them all
            with flag_spelling():
                timemachine_path(data)
            check_cpu_device_count()        # not the backend: started here, it would hold the GPU's memory
    except ValueError as e:     # one line, exit status 1, before any work
        stopping.tell(f"error: {e}")
        raise SystemExit(1) from None
    # Absolute, as the parts run from the repository root: one folder, wherever the command starts.
    args.data, args.out = str(Path(data).resolve()), args.out.resolve()
    return args


def until_stopped(parts: Parts, check: Callable[[], int]) -> int:
    """``check()``'s status, or, stopped by SIGTERM, SIGINT or SIGHUP (unless the check was started ignoring
    it, as a script's background job is SIGINT, nohup SIGHUP), one line and 128 + the signal, summary.json
    saying so. A signal after it has returned (as the command exits) changes nothing: the check is whole,
    its status its parts'."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):      # a hang-up too: no part left running
        if signum == signal.SIGTERM or signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, parts.on_signal)
    try:
        status = check()
        parts.check_stopped()
        return status
    except Stopped as e:
        parts.summary["stopped_by_signal"] = e.signum
        read_back(parts.out, parts.summary)
        parts.write()
        stopping.tell(f"Stopped by signal {e.signum} ({signal.Signals(e.signum).name}), the running part "
                      f"with it; {parts.out / 'summary.json'} has what ran.")    # a terminal gone: nowhere
        return 128 + e.signum


def main(argv=None) -> int:
    heed_ctrl_c = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN     # not in a background job
    stopping.while_loading()        # parse_args loads JAX to check --data: a signal there says one line
    if not heed_ctrl_c:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ImportError):      # a machine without JAX still gets its parts run and recorded
        stopping.load_jax()         # $JAX_* that JAX cannot read as it loads: one line, before any part
    try:
        from rnnjax.spelling import flag_spelling
    except ImportError:
        flag_spelling = contextlib.nullcontext
    with flag_spelling():           # rnnjax's messages name settings as the check's flags
        return _checked(argv)


def _checked(argv) -> int:
    args = parse_args(argv)
    summary = {"quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "data": args.data,
               "parts": {}}
    parts = Parts(args.out, summary, args.budget, args.quick)
    try:
        with stopping.guarded_stdout():
            print(f"device check{' (--quick)' * args.quick}: the logs, and summary.json after each part, "
                  f"in {args.out}", flush=True)
            args.out.joinpath("work").mkdir(parents=True, exist_ok=True)
            return until_stopped(parts, lambda: _check(args, parts))
    except BrokenPipeError:     # the reader of a pipe (| head) exited: stop as a piped Unix tool does
        stopping.drop_output()
        return _kept(parts, "the output was closed (the reader of a pipe exited)", 128 + signal.SIGPIPE)
    except stopping.OutputError as e:       # stdout on a full disk, a terminal gone: not --out's fault
        return _kept(parts, f"{e.strerror} (writing the output)", 1)
    except OSError as e:        # a full disk: summary.json is as its last whole write left it
        # rnnjax.workdir's sentence says to run the same command again: here, with a new --out
        why = (str(e).replace("run the same command again", "run the check again")
               if isinstance(e, NotWritten) else
               f"{e.filename or args.out} cannot be written ({e.strerror}); free space and run the check "
               "again")
        stopping.tell(f"error: {why.rstrip('.')}, with a new --out (this one keeps what the check wrote so "
                      "far).")
        return 1


def _kept(parts: Parts, why: str, status: int) -> int:
    """``status``, summary.json written with what ran, and one line: the check stopped on its output; or on
    the signal that came first (a Ctrl-C to a pipeline stops its reader too), as ``until_stopped`` says."""
    signum = parts.stopped
    if signum is not None:
        parts.summary["stopped_by_signal"] = signum
    with contextlib.suppress(OSError):
        read_back(parts.out, parts.summary)
        parts.write()
    if signum is not None:
        why, status = f"by signal {signum} ({signal.Signals(signum).name}), the running part with it", \
            128 + signum
    summary = parts.out / "summary.json"
    kept = f"{summary} has what ran" if summary.is_file() else f"nothing was written ({parts.out})"
    stopping.tell(f"Stopped{':' * (signum is None)} {why}; {kept}.")
    return status


def _check(args: argparse.Namespace, parts: Parts) -> int:
    out, work, summary = args.out, args.out / "work", parts.summary
    py = sys.executable
    path = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)
    env = {**os.environ, "PYTHONPATH": path, "RNNJAX_TIMEMACHINE": args.data, "PYTHONUNBUFFERED": "1"}
    t_start = time.perf_counter()

    if parts.run("info", "info", [py, "-c", MACHINE_INFO], env)["ok"]:
        lines = (out / "info.log").read_text().splitlines()
        summary.update(json.loads(next(line for line in reversed(lines) if line.startswith("{"))))
    backend = summary.get("backend", "unknown")
    print(describe_machine(summary), flush=True)

    # The step table first: its figures are what a short loan of a GPU is for, and it writes each size as
    # it ends (the largest first), so that the --budget cuts the least of it.
    # --quick: rnnjax jitted on one CPU device, which compiles faster than a pmap over two.
    quick = ["--sizes", "small", "--devices", "1"] if args.quick else ["--sizes", "gpu"]
    parts.run("bench", "bench", [py, "-m", "experiments.benchmark", *quick, "--data", args.data,
                                 "--json", str(out / "bench.json")], env)
    read_back(out, summary)
    parts.write()

    # d2l's recipe as a user runs it: with a fresh, empty compilation cache (everything compiles and is
    # written), then again with that cache warm. $RNNJAX_CACHE is where the CLI keeps it.
    epochs = ["--epochs", str(QUICK_EPOCHS)] if args.quick else []
    for what, extra in (("recipe", []), ("seeds", ["--seeds", "0,1,2,3"])):
        cli_env = {**env, "RNNJAX_CACHE": str(work / f"cache-{what}")}
        summary[what] = {"epochs": QUICK_EPOCHS if args.quick else 100}
        for temp in ("cold", "warm"):
            workdir = work / f"{what}-{temp}"
            rec = parts.run(f"{what}-{temp}", "recipe",
                            [py, "-m", "experiments.timemachine", "--data", args.data, "--workdir",
                             str(workdir), "--no-progress", *epochs, *extra], cli_env)
            if rec["ok"]:
                summary[what][f"{temp}_s"] = rec["seconds"]
                ppl = final_val_ppl(workdir)
                summary[what][f"val_ppl_{temp}"] = ppl[0] if what == "recipe" else ppl
        ppl = summary[what].get("val_ppl_warm", summary[what].get("val_ppl_cold"))
        if ppl is not None:
            summary[what]["val_ppl"] = ppl
        parts.write()

    # The tests last: cut short by the --budget, pytest still writes what it ran (read_back counts it).
    # The tests' own settings (conftest.py), on the default backend. On an accelerator the pytest
    # workers share it: none may take most of its memory up front.
    test_env = env if backend == "cpu" else {**env, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    tests = [f for f in QUICK_TESTS if (ROOT / f).is_file()] if args.quick else []
    # The tests wait on XLA's single-threaded compiler: where there are cores to spare, more workers.
    workers = ["-n", "0"] if args.quick else ["-n", "4"] if (os.cpu_count() or 1) >= 8 else []
    # A test file that cannot be imported there (a package missing) is counted as failed, not fatal.
    parts.run("tests", "tests", [py, "-m", "pytest", "-m", "not slow", "-p", "no:cacheprovider", "-q",
                                 "--continue-on-collection-errors", f"--junitxml={out / 'tests.xml'}",
                                 *workers, *tests], test_env)
    read_back(out, summary)
    summary["seconds"] = time.perf_counter() - t_start
    parts.write()
    print(report(summary), flush=True)
    return 0 if all(p["ok"] for p in summary["parts"].values()) else 1


if __name__ == "__main__":
    stopping.run(main)      # as the other commands end: a signal as it exits has no default action
