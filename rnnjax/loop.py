"""The epoch loop, one for a single run and for runs trained together: a single run is one run.

``run(plan, data, state, step, evaluate)`` trains a planned run (``rnnjax.start``)
from ``state``: ``STEPS_PER_CALL`` steps to a compiled call of ``step``, each
step's metrics a dict summed per key over the epoch (what a checkpoint in
mid-epoch keeps), one validation call an epoch, one JSON line per run and epoch,
checkpoints, and the stops (``rnnjax.diverging``: ``StoppedRuns``; ``rnnjax.stops``: signals).
``rnnjax.train.fit`` gives it ``train_windows``; ``rnnjax.runs.fit_runs`` that
step vmapped over runs stacked on a leading axis, where a run that stops leaves
the others training.

A step of one's own (a z-loss, say) is written as ``train_windows`` is, or wraps
it; over several devices its gradients, ``loss_sum`` and ``count`` are summed
over ``axis_name`` (``jax.lax.psum``; one whose parameters' updates, loss or
metrics follow from no collective is refused; so is the gradient of a
``pmean``-ed loss, each device's own under ``pmap``; a count fixed as it is
traced that is one device's share of the tokens is warned of), and it gives
``train_windows`` the config's dropout key as ``rng`` (given none, a run with
dropout trains without it, and warns). Checkpoints name the step that trained
them (a resume by another, ``fit``'s say, warns)::

    def my_step(state, tokens, windows, axis_name=None):
        rng = rnnjax.train.dropout_key(config)       # None without dropout
        return rnnjax.train.train_windows(state, tokens, windows, axis_name, rng)

    with rnnjax.start.planned(config, data, workdir) as p:     # the workdir's lock held
        state = rnnjax.create_train_state(config, len(data.vocab)) if p.state is None else p.state
        result = rnnjax.loop.run(p, data, state, my_step, rnnjax.eval_steps)

Runs trained together (``planned(configs[0], data, workdir, runs=configs)``)
start from ``rnnjax.create_run_states(configs, len(data.vocab))``: stacked,
each run's ``lr`` and ``clip`` in its optimizer state. Their step is one run's
vmapped over that leading axis, as ``rnnjax.runs.train_runs`` vmaps
``train_windows``; their evaluation ``rnnjax.runs.eval_runs``.
"""

from __future__ import annotations

import copy
import dataclasses
import signal
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rnnjax import agree, checkpoint, metrics as metrics_lib, preflight
from rnnjax.compiled import compile_run
from rnnjax.spelling import again
from rnnjax.data import WindowedText
from rnnjax.parallel import wait_for_backlog
from rnnjax.start import Plan, check_open
from rnnjax.diverging import StoppedRuns
from rnnjax.stops import Interrupted, catch_signals
from rnnjax.writer import Writer, open_workdir

# Epochs between checkpoints: a save costs a good part of a d2l epoch (docs/performance.md).
# The last epoch and an interrupted run are always saved.
CHECKPOINT_EVERY = 10

# Training steps per compiled call: each call costs the host a dispatch, which
# on a CPU takes time from the cores the devices compute on. An epoch's last
# call takes the steps left over (fewer than these) along, so that an epoch of
# under twice these is one call, its training program compiled once.
STEPS_PER_CALL = 10


@dataclasses.dataclass
class FitResult:
    state: Any                   # the TrainState on the host, unreplicated (runs': stacked)
    history: list[dict]          # one record per epoch (and run), as in metrics.jsonl
    workdir: Path
    stopped: tuple = ()          # runs trained together: why each one stopped early, or None


@agree.leaves_on_error
def run(p: Plan, data: WindowedText, state: Any, step: Callable, evaluate: Callable, *,
        checkpoint_every: int = CHECKPOINT_EVERY, keep: int = checkpoint.KEEP,
        progress: Callable | None = None, log: Callable[[str], Any] | None = None,
        origin: dict | None = None) -> FitResult:
    """Trains the planned run ``p`` from ``state`` (on the host) to ``p.config.epochs``.

    ``step(state, tokens, windows, axis_name=None) -> (state, metrics)`` is ``rnnjax.train.train_windows``
    (dropout on with ``rng=train.dropout_key(p.config)``) or, for ``p.runs``, it vmapped; ``evaluate``
    likewise ``eval_steps`` or ``rnnjax.runs.eval_runs``. ``progress(done, total, record_or_None)`` after
    every call and epoch (the epoch's record as metrics.jsonl gets it; of runs, their mean perplexities
    and, as ``runs``, the records of those that train on); ``log`` says which of several runs stop. Raises
    ``NonFiniteLoss`` once every run has stopped (nothing of that epoch saved, but the line in
    metrics.jsonl of a run its perplexity stopped), ``Interrupted`` after saving the last completed call's
    step, and what ``progress`` raises (an early stop, a closed pipe, ``sys.exit``) after saving the step
    it was called at, its ``saved_step`` (in the other processes of a multi-host run,
    ``StoppedByAnother``, the same step saved); what ``log`` raises, after saving the steps trained.
    ``origin``: the checkpoint a new run's ``state`` comes from (``Restored.address``), for ``config.json``.

    ``ValueError`` before it writes anything (a workdir ``planned`` made goes again with its lock) unless
    the processes of a multi-host run would train alike (``rnnjax.agree``), unless ``evaluate`` returns
    ``loss_sum``, ``count`` and metrics of one number (logged as ``val_<key>``, ``metrics.epoch_record``:
    sum them over ``axis_name``'s devices, as ``eval_steps`` does its own), and unless ``state`` is the
    plan's: the parameters ``p.config`` makes (of each run, stacked), at the checkpoint's step (``p.state``
    resumes) or, new, at step 0, with the optimizer state ``p.config.optimizer`` makes
    (``rnnjax.optimizers``): the run records it by name, and a resume makes it. Over several devices, a
    ``count`` fixed as the step is traced that is one device's share of the batch's tokens is warned of
    (``log``'s, else a ``UserWarning``) at the first call, an evaluation's at the first validation: the
    count of one device's tokens, or of a share of them (``preflight.counted_share``).
    """
    check_open(p, "loop.run")
    preflight.check_functions(step, evaluate, p.dp.pmapped)
    # Then: processes of a multi-host run that would train otherwise hang or abort in a collective.
    agree.check_agreed(agree.of_run(p, data, getattr(state, "params", None), checkpoint_every, keep))
    preflight.check_state(p, state, len(data.vocab))
    evaluation_fixed = preflight.check_evaluation(p, evaluate, state, data)
    several, dp, position = bool(p.runs), p.dp, p.position
    configs, workdir = list(p.runs) or [p.config], p.workdir
    init_from = origin if p.step is None else p.init_from      # a resume keeps what its meta records
    manager, metrics_log = open_workdir(p, data, keep, init_from)
    log, kept = _keeping(log)          # what log raises (a closed pipe) is raised once what trained is saved
    stops = StoppedRuns(configs, position.stopped, log, several)
    if p.finished:
        with catch_signals(), manager:      # nothing to train: it ends as a run that trained to its end
            pass
        # Not a damaged newer one's.
        held = [r for r in metrics_log.read(missing_ok=True) if r["epoch"] <= position.epoch]
        return FitResult(state, held, workdir, tuple(stops.why) if several else ())
    datas = [copy.copy(data) for _ in configs]    # the batch order is a function of (seed, epoch): the
    for d, c in zip(datas, configs):                # config's, as a resume from config.json has it
        d.seed = c.seed
    train, evaluate, tokens, val_batches, checked = compile_run(p, data, step, evaluate, state)
    state = dp.replicate(state)
    steps_per_epoch, total, done = count_steps(p, data)
    out = Writer(p, data, manager, metrics_log, stops, steps_per_epoch, step, init_from)
    _warn(log, out.switched, 4)     # at loop.run's caller: through run, leaves_on_error
    if kept:                        # nothing trained yet
        raise kept[0]

    def told(done):             # after each call: progress first (a signal it sends stops here), then agreed
        raised = _told(progress, done, total, None)
        return agree.on_stop(stop.signum, raised, done)

    def counted(chunk, m):       # a count fixed as a step of one's own is traced: one device's, or all?
        if getattr(checked, "keyless", False) and p.config.dropout:
            _warn(log, f"warning: the run's dropout is {p.config.dropout:g} and its step gives train_step no "
                  "rng: it trains without dropout (rng=rnnjax.train.dropout_key(config) turns it on)", 6)
        if getattr(checked, "count_fixed", False):
            wanted = [[w[r].mask.sum() * p.config.num_steps for w in chunk] for r in range(len(configs))]
            said = preflight.counted_share(out.per_run(m)["count"], wanted, dp.num_shards, "step")
            _warn(log, said, 6)     # at loop.run's caller: through counted, _train, run, leaves_on_error

    signum = None                     # the signal that stops the run, as every process sees it
    raised = None                     # what progress raised (an early stop, a closed pipe): saved as for one
    with catch_signals() as stop, manager:
        for epoch in range(position.epoch, p.config.epochs):
            start = position.batch if epoch == position.epoch else 0
            partial = (epoch == position.epoch and position.partial) or [{}] * len(configs)
            t0 = time.perf_counter()
            first = counted if epoch == position.epoch else None        # this start's first call
            state, call_metrics, done, batch, signum, raised = _train(p, datas, train, state, tokens, epoch,
                                                                      start, done, told, first)
            steps_RxS = out.per_run(call_metrics)
            out.log_steps(steps_RxS, epoch, start)      # before their checks: a step not finite is logged too
            sums = stops.epoch_sums(steps_RxS, partial, epoch, start, steps_per_epoch)
            raised = raised or (kept[0] if kept else None)
            if batch < steps_per_epoch:                  # stopped mid-epoch
                out.save(state, epoch, batch, sums)
                if raised is not None:
                    checkpoint.check_saved(manager)
                    raise _saved(raised, out.saved, workdir)
                raise _stopped(manager, signum, stop.signum, epoch, batch, steps_per_epoch, done, workdir)
            val = out.per_run(evaluate(state, val_batches))
            if evaluation_fixed and epoch == position.epoch:        # so of an evaluation's
                rows = sum(b.mask.sum() for b in data.val_batches())
                wanted = np.full(len(configs), rows * p.config.num_steps)
                said = preflight.counted_share(val["count"], wanted, dp.num_shards, "evaluate",
                                               "the validation")
                _warn(log, said, 4)     # at loop.run's caller: through run, leaves_on_error
            records = out.records(epoch, done, sums, val, time.perf_counter() - t0)
            raised = raised or (kept[0] if kept else None)
            # One caught during validation saves this epoch and stops (every process: they agree again).
            signum, _ = agree.on_stop(stop.signum, None, done)
            checkpoint.check_failed(manager)
            # The records first: a crash between the two leaves them past the checkpoint; resume drops them.
            out.log(records)
            due = (epoch + 1) % checkpoint_every == 0 or epoch + 1 == p.config.epochs or signum is not None
            if due or raised is not None:
                out.save(state, epoch + 1, 0, [{} for _ in configs], records)
            if raised is None:    # runs: their mean perplexities, and each record; a single run: its record
                raised = _told(progress, done, total, {"epoch": epoch + 1, **{
                    k: statistics.fmean(r[k] for r in records) for k in metrics_lib.NEEDED},
                    "runs": [dict(r) for r in records]} if several else dict(records[0]))
                _, raised = agree.on_stop(None, raised, done)     # the next call's agreement takes a signal
                if raised is not None and not due:
                    out.save(state, epoch + 1, 0, [{} for _ in configs], records)
            if raised is not None:
                checkpoint.check_saved(manager)
                raise _saved(raised, out.saved, workdir)
            if signum is not None:
                raise _stopped(manager, signum, stop.signum, epoch, steps_per_epoch, steps_per_epoch, done,
                               workdir, finished=epoch + 1 == p.config.epochs)
        checkpoint.check_saved(manager)
        signum, _ = agree.on_stop(stop.signum, None, done)  # caught as the last epoch saved: the run is whole
        if signum is not None:
            raise _stopped(manager, signum, stop.signum, p.config.epochs - 1, steps_per_epoch,
                           steps_per_epoch, done, workdir, finished=True)
    return FitResult(dp.unreplicate(state), metrics_log.read(missing_ok=True), workdir,
                     tuple(stops.why) if several else ())


def _train(p: Plan, datas: list[WindowedText], train: Callable, state: Any, tokens: Any, epoch: int,
           start: int, done: int, told: Callable[[int], tuple], counted: Callable | None = None) -> tuple:
    """An epoch's training calls from batch ``start`` (each run's windows of its own ``datas``), until its
    end or a stop that ``told(steps done)`` returns after each call: ``(state, the calls' metrics, steps
    done, the batch reached, the signal that stops the run, what progress raised)``. ``counted(windows,
    metrics)`` checks the first call's."""
    run_axis = 1 if p.dp.pmapped else 0          # after the device axis
    call_metrics, batch, signum, raised = [], start, None, None
    for chunk in _chunks(zip(*(d.train_windows(epoch, start) for d in datas)), STEPS_PER_CALL):
        windows = [p.dp.shard_stack([w[r] for w in chunk]) for r in range(len(datas))]
        windows = jax.tree.map(lambda *x: np.stack(x, run_axis), *windows) if p.runs else windows[0]
        state, m = train(state, tokens, windows)
        if counted is not None:
            counted(chunk, m)
            counted = None
        call_metrics.append(m)
        wait_for_backlog(call_metrics)
        done, batch = done + len(chunk), batch + len(chunk)
        signum, raised = told(done)
        if signum is not None or raised is not None:
            break
    return state, call_metrics, done, batch, signum, raised


def _warn(log: Callable[[str], Any] | None, message: str | None, stacklevel: int) -> None:
    if message:
        log(message) if log else warnings.warn(message.removeprefix("warning: ") + ".", stacklevel=stacklevel)


def _keeping(log: Callable[[str], Any] | None) -> tuple[Callable[[str], Any] | None, list[BaseException]]:
    """``log``, and the list of what it raised: kept, as ``_told`` keeps what ``progress`` raises."""
    kept: list[BaseException] = []

    def keeping(line: str) -> None:
        raised = _told(lambda *_: log(line), 0, 0, None)
        kept.extend([raised] if raised is not None else [])
    return (keeping if log else log), kept


def _told(progress: Callable | None, done: int, total: int, record: dict | None) -> Exception | None:
    """What ``progress`` raised, if anything: the loop saves what trained, then raises it."""
    try:
        if progress:
            progress(done, total, record)
    except Interrupted:             # a second signal: stop at once, as anywhere else
        raise
    except BaseException as e:      # sys.exit() and KeyboardInterrupt too: what trained is saved first
        return e
    return None


def count_steps(p: Plan, data: WindowedText) -> tuple[int, int, int]:
    """``(steps per epoch, steps in the run, steps done before this start)``."""
    steps_per_epoch = data.num_batches(True)
    return (steps_per_epoch, p.config.epochs * steps_per_epoch,
            p.position.epoch * steps_per_epoch + p.position.batch)


def _saved(raised: BaseException, step: int, workdir: Path) -> BaseException:
    """What ``progress`` raised, saying the step saved before it (``saved_step``, ``saved_in``)."""
    raised.saved_step, raised.saved_in = step, workdir
    return raised


def _stopped(manager: Any, signum: int, caught: int | None, epoch: int, batch: int, steps_per_epoch: int,
             step: int, workdir: Path, finished: bool = False) -> Interrupted:
    """The ``Interrupted`` a loop stopped by a signal raises, once its saves have finished; ``caught`` is
    this process's own signal (``None``: another process of a multi-host run caught it); ``finished``: it
    came after the last epoch's validation, with nothing left to train."""
    checkpoint.check_saved(manager)
    by = "" if caught else ", caught by another process of the multi-host run,"
    signum = caught or signum
    then = "Nothing is left to train." if finished else f"{again().capitalize()} to resume."
    name = signal.Signals(signum).name
    return Interrupted(f"Stopped by signal {signum} ({name}){by} in epoch {epoch + 1} after batch "
                       f"{batch}/{steps_per_epoch}; saved step {step} in {workdir}. {then}", signum,
                       together=agree.spans_processes())        # every process stops at this call


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    """``items`` in lists of ``size``, the last one taking what is left (fewer than ``size``) along."""
    held = []
    for item in items:
        held.append(item)
        if len(held) == 2 * size:
            yield held[:size]
            held = held[size:]
    if held:
        yield held
