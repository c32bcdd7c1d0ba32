"""d2l's "Concise Implementation of Recurrent Neural Networks", end to end.

Command (d2l's recipe, ``rnnjax.config.PRESETS['d2l']``)::

    python -m experiments.timemachine --data timemachine.txt

Expected: 5-17 s on a 2-core CPU, compilation included; final train
perplexity 5.82-6.00, validation 7.19-7.43 (by seed, CPU, device count and
JAX release: docs/results.md), and ``predict('it has', 20)``
turns from noise into words.

It says first what it does (new or resumed, devices, loss path, workdir),
then writes ``metrics.jsonl``, ``steps.jsonl``, ``ppl.png``, ``config.json`` and orbax
checkpoints to ``--workdir`` (default ``runs/<preset>``, or
``runs/<preset>-<hash>`` when flags change the preset's settings; ``--epochs``,
``--kernel`` and ``--matmul-precision`` do not count). The same command
resumes, and so does ``--workdir W`` alone, with the settings read from it
(``experiments.settings``). ``--predict`` generates from the workdir's checkpoint;
``--init-from W`` starts a new run from W's parameters (``experiments.fine_tune``).
Every ``rnnjax.config.Config`` field is a flag (``--help``); the logic lives
in ``rnnjax``, the training run in ``experiments.training``; this file parses
the command, picks what it does and handles its signals.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import warnings

from experiments import stopping

if __name__ == "__main__":     # a signal while JAX loads: one line and 128 + signal, no traceback
    stopping.while_loading()
    stopping.load_jax()

# After the handlers: loading JAX takes a while.
from experiments import cli, predicting, settings  # noqa: E402
from experiments.training import train  # noqa: E402
from rnnjax import agree, backend, checkpoint, config as config_lib, parallel, spelling, stops  # noqa: E402
from rnnjax.data import DataError  # noqa: E402
from rnnjax.diverging import NonFiniteLoss  # noqa: E402
from rnnjax.stops import Interrupted  # noqa: E402
from rnnjax.workdir import WorkdirError  # noqa: E402

USAGE_ERRORS = (DataError, checkpoint.CheckpointError, NonFiniteLoss, ValueError, WorkdirError,
                stops.LostProcess)
# An OSError of these is the machine's state (space, permissions, limits), said in one sentence; any other
# (a missing file the code expected) is a bug, whose traceback is wanted.
MACHINE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
                  errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM}


def _after_training(signum: int) -> str | None:
    """What a signal says once the run has trained to its end and saved (``stops.ended``), as the command
    plots and writes its last lines; ``None`` before."""
    if stops.ended():
        return (f"Stopped by signal {signum} ({signal.Signals(signum).name}) after the run was trained and "
                "saved: the workdir holds the whole run (the same command again draws its plot).")
    return None


def _stopped_generating(signum, frame):
    """At once (nothing is written): raised, a Ctrl-C could land in a gc callback, which drops it."""
    stopping.exit_now(f"Stopped by signal {signum} ({signal.Signals(signum).name}) while generating; the "
                      "workdir is as it was.", 128 + signum)


def _stopped_at_start_up(signum, frame):
    if stops.stopping():       # a run stopping on a signal unwinds: it says so and exits 128 + signal itself
        return
    stopping.exit_now(_after_training(signum) or f"Stopped by signal {signum} before any training; run the "
                      "same command again to go on.", 128 + signum)


def _deferred(signum, frame):
    """A multi-host run's processes, once joined, stop together: the signal stops the run at its first step
    (``stops.defer``); a second one at once. Once it has ended, the first is noted: they exit together."""
    if stops.stopping() or stops.defer(signum):
        if stops.ended():       # written as is: a print here could land inside another print's write
            os.write(sys.stderr.fileno(), f"Signal {signum} noted: the run is trained and saved; this "
                     "process exits with the others of the multi-host run.\n".encode())
        elif not stops.stopping():      # joined, compiling: silent until its first step, before
            os.write(sys.stderr.fileno(), f"Signal {signum} noted: the multi-host run stops at its first "
                     "step, saved, with its other processes (a second signal stops this one at "
                     "once).\n".encode())
        return
    stopping.exit_now(f"Stopped at once by a second signal {signum}: the other processes of the multi-host "
                      "run may wait for this one; stop them too.", 128 + signum)


def _interrupted(signum, frame):
    if stops.stopping():       # as above: not a KeyboardInterrupt raised in whatever runs as it unwinds
        return
    ended = _after_training(signum)
    if ended:       # at once, as SIGTERM: nothing is left to unwind
        stopping.exit_now(ended, 128 + signum)
    raise stops.raised_by_a_handler(KeyboardInterrupt(), signum)


@spelling.flag_spelling()
def main(argv=None, **parser_options) -> int:
    """The command; ``parser_options`` go to ``cli.parse_args`` (``experiments.overfit``)."""
    # Until fit takes over the signals (it saves, then stops): one line and 128 + signal, no traceback.
    stops.stop_handled()        # nothing this interpreter ran before (a library fit) has ended this run
    previous = stopping.handle(_stopped_at_start_up)        # SIGTERM and SIGHUP
    signal.signal(signal.SIGINT, _interrupted)
    try:
        with stopping.guarded_stdout(), warnings.catch_warnings():
            warnings.showwarning = stopping.tell_warning
            warnings.simplefilter("default", UserWarning)       # said, not raised (PYTHONWARNINGS=error)
            return _main(argv, parser_options)
    except Interrupted as e:
        stopping.tell(str(e))
        if e.together:          # a stop every process agreed on: they leave the run together
            agree.leave_together()
        return 128 + e.signum
    except KeyboardInterrupt:
        stopping.tell("Stopped by signal 2 (Ctrl-C); the workdir keeps its last checkpoint (if any): run the "
                      "same command again to go on.")
        return 128 + signal.SIGINT
    except BrokenPipeError as e:     # the reader of a pipe (| head) exited: stop as a piped Unix tool does
        return stopping.output_closed(_kept(e, ": run the same command again to go on"))
    except stopping.OutputError as e:       # a full disk under stdout
        stopping.drop_output()
        stopping.tell(f"Stopped: {e.strerror} (writing the output); {_kept(e)}: fix the cause and run the "
                      "same command again to go on.")
        return 1
    except OSError as e:
        if e.errno not in MACHINE_ERRORS:       # not the machine's state: a bug, whose traceback is wanted
            raise
        where = f" ({e.filename})" if e.filename else ""
        stopping.tell(f"Stopped: {e.strerror}{where}; the workdir keeps its last checkpoint (if any): fix "
                      "the cause and run the same command again to go on.")
        return 1
    finally:
        stopping.put_back(previous)
        stops.stop_handled()


def _kept(e: BaseException, then: str = "") -> str:
    """What the workdir keeps of a run stopped by ``e``: the step fit saved as it stopped (loop._saved),
    ``then`` what to do."""
    if getattr(e, "saved_step", None) is None:
        return "the workdir keeps its last checkpoint (if any)"
    return f"saved step {e.saved_step} in {e.saved_in}{then}"


def _main(argv, parser_options: dict) -> int:
    try:
        args = cli.parse_args(argv, **parser_options)
        if args.predict is not None:        # from here a signal has no checkpoint to speak of
            stopping.handle(_stopped_generating)
        configs, workdir, several = settings.settings(args) if args.predict is None else (None, None, False)
        args.default_workdir = args.predict is not None and args.workdir is None
        if args.default_workdir:          # the run the same command without --predict trains
            args.workdir = settings.trained_in(args)
            args.not_used = [f for f in args.not_used if f not in ("--preset", "--text")]    # chose it
        # ValueError too for a $JAX_NUM_CPU_DEVICES that JAX would fail on as it starts.
        batch_size = configs[0].batch_size if configs else config_lib.PRESETS[args.preset].batch_size
        backend.use_cpu_cores(batch_size, args.devices)
        if not args.multi_host:       # which joins first
            backend.start()
    except ValueError as e:          # checks of the arguments (and the workdir's settings), before JAX starts
        stopping.tell(f"error: {e}")
        return 1
    backend.keep_freed_memory()
    put_back = backend.collect_less()
    try:
        return _run(args, configs, workdir, several)
    finally:            # the caller's process, if it goes on, collects as it did
        put_back()


def _run(args, configs, workdir, several) -> int:
    if not args.no_compilation_cache:
        try:
            backend.enable_compilation_cache(at_exit=stopping.at_exit)
        except OSError as e:          # a read-only home: the run goes on, compiling afresh
            print(f"warning: no compilation cache ({e.filename}: {e.strerror}); each run compiles afresh, "
                  "as with --no-compilation-cache.", file=sys.stderr)
    joined = False
    try:
        if args.multi_host:
            where = f"at {args.coordinator}" if args.coordinator else "that JAX finds"
            wait = spelling.shown(args.join_timeout)
            print(f"joining the multi-host run {where}: waiting up to {wait} s for every process "
                  "(--join-timeout)", flush=True)
            try:
                parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                                                args.join_timeout)
            except parallel.OtherCount:     # joined, then refused: the others are told at their check
                joined = True
                raise
            joined = True
            backend.start()             # started by joining: its checks (the matmul precision asked)
            if args.predict is None:     # joined: from here the processes stop together
                stopping.handle(_deferred)
            agree.check_agreed(cli.shared_settings(args, configs, workdir, several), args.join_timeout)
        with agree.leaving_on_error():     # an error before the run's check: the others stop at it
            if args.predict is not None:
                predicting.predict_only(args)
            else:
                train(args, configs, workdir, several)
    except (*USAGE_ERRORS, TimeoutError) as e:
        if joined:          # the others, at their next check, stop too (if not told already)
            agree.leave()
        stopping.tell(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    stopping.run(main)
