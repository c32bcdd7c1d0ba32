"""What a planned run writes to its workdir: first its settings, an earlier run's files moved aside
(``open_workdir``); then as it trains each epoch's records (the runs that diverge in it stopped) and
checkpoints, whose metas say where in the run they were saved and how it computed."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rnnjax import checkpoint, computing as computing_lib, meta as meta_lib, metrics as metrics_lib
from rnnjax.config import SWEEPABLE
from rnnjax.data import WindowedText
from rnnjax.position import Position
from rnnjax.start import Plan
from rnnjax.spelling import spelt
from rnnjax.step_lines import FILENAME as STEPS, StepsLog, step_records
from rnnjax.workdir import WorkdirError
from rnnjax.diverging import NonFiniteLoss, StoppedRuns, check_divergence


def open_workdir(p: Plan, data: WindowedText, keep: int, init_from: dict | None = None
                 ) -> tuple[Any, metrics_lib.MetricsLog]:
    """The checkpoint manager (the best counted over the runs before too) and the metrics log of a planned
    run; an earlier run's records, settings and plot moved aside (``Plan.aside``); unless it is finished,
    ``config.json`` written (with ``init_from``, the checkpoint the run started from) and the records past
    its checkpoint dropped."""
    moved = []
    for source, target in p.aside if jax.process_index() == 0 else ():
        try:
            os.replace(source, target)
        except OSError as e:
            for done, back in reversed(moved):       # the records and the plot stay together, numbered alike
                os.replace(back, done)
            raise WorkdirError(f"{source} cannot be moved to {target} ({e.strerror}); move it aside "
                               f"yourself, or use another {spelt('workdir')}.") from None
        moved.append((source, target))
    if not p.finished and jax.process_index() == 0:    # at once: an earlier run's went aside with its records
        read = getattr(data, "path", None)         # a text of one's own: its file, which a resume needs
        checkpoint.write_config(p.workdir, p.config, data.vocab, runs=list(p.runs) or None,
                                text=None if read is None else str(Path(read).absolute()),
                                init_from=init_from)
    earlier = checkpoint.scores_by_step(p.workdir) if p.step is not None else {}
    manager = checkpoint.manager(p.workdir / checkpoint.SUBDIR, keep=keep, earlier=earlier)
    # Silent: the plan says what a torn last line leaves out (Plan.describe).
    writer = jax.process_index() == 0
    metrics_log = metrics_lib.MetricsLog(p.workdir / metrics_lib.FILENAME, writer=writer, warn=lambda m: None)
    if not p.finished:
        metrics_log.truncate(p.position.epoch)
        StepsLog(p.workdir / STEPS, writer=writer, warn=lambda m: None).truncate(p.step or 0)
    return manager, metrics_log


@dataclasses.dataclass
class Writer:
    """What a planned run writes to its workdir as it trains (``rnnjax.loop.run``): checkpoints and metrics
    records, each after checking that the workdir is still the one it locked."""
    p: Plan
    data: WindowedText
    manager: Any
    metrics_log: metrics_lib.MetricsLog
    stops: StoppedRuns
    steps_per_epoch: int
    step: Callable | None = None      # the step function that trains: its name goes in every meta
    init_from: dict | None = None     # the checkpoint the run started from (loop.run's): in every meta

    def __post_init__(self):
        self.configs = list(self.p.runs) or [self.p.config]
        self.high = list(self.p.position.high) or [0] * len(self.configs)   # epochs far off, per run
        self.computing = self.p.computing         # how the run computes, the same in every meta it saves
        self.computing.update(computing_lib.otherwise_since(self.p.computed_by, self.computing, self.p.step))
        self.saved = self.p.step                # the newest step this run saved (or resumed from)
        self.trained_by, self.switched = trained_by(self.p, step_name(self.step))
        self.steps_log = StepsLog(self.p.workdir / STEPS, writer=self.metrics_log.writer)

    def per_run(self, tree: Any) -> Any:
        """``tree`` on the host, with a run axis where a single run has none."""
        tree = self.p.dp.unreplicate(tree)
        return tree if self.p.runs else jax.tree.map(lambda x: x[None], tree)

    def check_lock(self) -> None:      # before each write: the workdir may have been moved or emptied (Held)
        if self.p.held is not None:
            self.p.held.check(f" (its last checkpoint: step {self.saved})" if self.saved is not None else "")

    def log(self, records: list[dict]) -> None:
        if records:
            self.check_lock()
            self.metrics_log.append(*records)       # one write, as steps.jsonl's

    def log_steps(self, steps_RxS: list[dict], epoch: int, start: int) -> None:
        """The lines of ``steps.jsonl`` of an epoch's calls (``steps_RxS``: each a dict of ``[run, step]``
        arrays) from batch ``start``, of the runs training as it began, in step order."""
        steps_RxS = [{k: np.asarray(v) for k, v in m.items()} for m in steps_RxS]
        steps_RxS = [{k: v[:, i] for k, v in m.items()} for m in steps_RxS
                     for i in range(next(iter(m.values())).shape[1])]
        first = epoch * self.steps_per_epoch + start + 1
        each = [step_records(epoch + 1, first, [{k: v[r] for k, v in m.items()} for m in steps_RxS],
                             r if self.p.runs else None) for r in self.stops.live]
        self.check_lock()
        self.steps_log.append(*(line for lines in zip(*each) for line in lines))

    def save(self, state: Any, epoch: int, batch: int, sums: list[dict], records: list[dict] = ()) -> None:
        """A checkpoint; at an epoch's end, with its ``records``' validation perplexity (of runs: their
        mean, for the best kept, and each run's own, for ``restore(best=True, run=k)``)."""
        several = bool(self.p.runs)
        where = Position(epoch, batch, sums, self.stops.why if several else [], self.high)
        runs = {"runs": [c.to_json() for c in self.configs]} if several else {}
        if several and records:
            val_ppls = {r["run"]: r["val_ppl"] for r in records}
            runs["run_val_ppls"] = [_finite(val_ppls.get(k)) for k in range(len(self.configs))]
        meta = meta_lib.make(self.p.config, self.data.vocab, dataclasses.asdict(where), self.steps_per_epoch,
                             **self.computing, **runs, **{meta_lib.TRAINED_BY: self.trained_by},
                             **({meta_lib.INIT_FROM: self.init_from} if self.init_from else {}))
        host = self.p.dp.unreplicate(state)
        val_ppl = statistics.fmean(r["val_ppl"] for r in records) if records else None
        self.check_lock()
        self.saved = int(np.ravel(host.step)[0])
        checkpoint.save(self.manager, self.saved, host, meta, val_ppl=val_ppl)

    def records(self, epoch: int, done: int, sums: list[dict], val: dict, seconds: float) -> list[dict]:
        """The epoch's records of the runs that train on; those of runs that diverge in it stop them, and are
        logged at once, saying so (a single run's, then ``NonFiniteLoss``)."""
        records, last = [], []      # of runs that train on; of those this epoch stopped (logged first)
        for r in self.stops.live:
            record = metrics_lib.epoch_record(epoch + 1, done, sums[r], self.steps_per_epoch,
                                              {k: float(v[r]) for k, v in val.items()}, seconds)
            # Its seed, lr and clip, a single run's too: one script reads the records of any workdir.
            settings = {k: getattr(self.configs[r], k) for k in SWEEPABLE}
            record = {**({"run": r} if self.p.runs else {}), **settings, **record}
            try:
                far_off = self.stops.check(r, check_divergence, record, self.high[r], len(self.data.vocab))
            except NonFiniteLoss as e:  # a single run diverged: its last epoch logged, saying so
                self.log([{**record, "stopped": e.reason}])
                raise
            self.high[r] = self.high[r] + 1 if far_off else 0
            if self.stops.why[r] is None:
                records.append(record)
            else:
                last.append({**record, "stopped": self.stops.why[r]})
        self.log(last)
        self.stops.check_any_live()
        return records


def step_name(step: Callable | None) -> str:
    """The name a checkpoint's meta keeps of the step function that trained it: its module and qualified
    name (a partial's function's; a callable object's class'); ``fit``'s is ``rnnjax.train.train_windows``."""
    while isinstance(step := inspect.unwrap(step), functools.partial):     # a jitted partial's too
        step = step.func
    named = step if hasattr(step, "__qualname__") else type(step)
    return f"{getattr(named, '__module__', None) or '?'}.{named.__qualname__}"


def trained_by(p: Plan, name: str) -> tuple[list, str]:
    """The steps that trained the planned run ``p`` (``[first step, name]`` each) with ``name`` training on,
    and, where it takes over from another at the checkpoint, a warning that says so ('' if not). A meta
    that does not say (older) is taken as trained by ``name`` from its step on."""
    before = [list(e) for e in p.trained_by or ()]
    if len(before) > 1 and before[-1][0] == p.step:     # one that trained nothing (stopped as it resumed)
        before.pop()
    if before and before[-1][1] == name:
        return before, ""
    if not before or before[-1][0] == p.step:
        return [[p.step or 0, name]], ""
    hint = " (a step of one's own trains on with rnnjax.loop.run)" if name.startswith("rnnjax.") else ""
    was, now = (n if n.isprintable() and len(n) <= 200 else repr(n[:200]) for n in (before[-1][1], name))
    return [*before, [p.step, name]], (f"warning: the run was trained by the step {was} until step {p.step}; "
                                       f"it trains on with {now}{hint}")


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
