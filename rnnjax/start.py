"""How a run starts: new or resumed from which checkpoint, on which devices, found before anything
is written.

``planned(...)`` is how a run starts: the checks of the arguments
(``rnnjax.arguments``), then the workdir's lock, then the plan made from what the
workdir holds under the lock (no other run can change it between the plan and the
training). Its first write: ``rnnjax.writer.open_workdir``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax

from rnnjax import (agree, checkpoint, computing as computing_lib, kernels, lock as lock_lib, metrics,
                    optimizer_checks, optimizers, precision, saved, step_lines, tidy)
from rnnjax.arguments import check
from rnnjax.backend import available_cores, cpu_device_count_chosen
from rnnjax.cells import CELLS, OWN_CELLS, is_own, registered_as, registered_own
from rnnjax.config import Config, label
from rnnjax.spelling import as_flags, in_words, spelt
from rnnjax.data import WindowedText
from rnnjax.meta import INIT_FROM, TRAINED_BY
from rnnjax.position import Position
from rnnjax.parallel import DataParallel
from rnnjax.step_lines import StepsLog
from rnnjax.kernels import loss_path
from rnnjax.state import abstract_run_states, abstract_train_state, make_model, takes_dtype


@dataclasses.dataclass(frozen=True)
class Plan:
    """What ``fit`` will do, found by ``plan`` before anything is written."""
    config: Config
    workdir: Path
    dp: DataParallel
    loss_path: str               # which kernel computes the loss, in words
    step: int | None = None      # the checkpoint it resumes from
    position: Position = dataclasses.field(default_factory=Position)
    runs: tuple[Config, ...] = ()  # several runs trained together (rnnjax.runs)
    state: Any = None              # the checkpoint's state (host arrays), verified
    damaged: tuple[tuple[int, str], ...] = ()   # newer checkpoints that failed: (step, why)
    lost: str = ""                 # the epochs metrics.jsonl lacks, in words
    torn: bool = False             # metrics.jsonl ends in a torn line, which fit drops
    # A new run moves the records (and plot) of an earlier one with no checkpoint left: (from, to) pairs.
    aside: tuple[tuple[Path, Path], ...] = ()
    computed_by: dict | None = None    # how the checkpoint's run computed, as its meta says (computing.HOW)
    stalled: bool = False              # one's own optimizer updates nothing from the checkpoint on (rate 0)
    saved_epochs: int | None = None    # the epochs the checkpoint's run asked for (RESUMABLE: may differ)
    trained_by: list | None = None     # the step functions that trained it, as its meta says (TRAINED_BY)
    steps_lost: str = ""               # the steps steps.jsonl lacks (a write failed), in words
    init_from: dict | None = None      # the checkpoint the run was fine-tuned from, as its meta says
    held: lock_lib.Held | None = None   # the workdir's lock, in the process that writes

    @property
    def finished(self) -> bool:
        return self.position.epoch >= self.config.epochs

    @property
    def computing(self) -> dict:
        """How the run computes (``rnnjax.computing.HOW``), what its checkpoints' metas keep: the kernel that
        trains (``auto``'s pick), the devices, the float32 matmuls' precision in effect."""
        return {"kernel": kernels.choose(self.config), "platform": self.dp.devices[0].platform,
                "num_devices": self.dp.num_shards,
                "matmul_precision": precision.effective_precision(self.config.matmul_precision)}

    def describe(self) -> str:
        """One line: new or resumed (from which step), devices, loss path, matmuls' precision, where it
        writes."""
        devices = f"{self.dp.num_shards} {self.dp.devices[0].platform.upper()} device(s)"
        if jax.process_count() > 1:
            devices += f" over {jax.process_count()} processes"
        if self.step is None:
            what = f"new run of {_epochs(self.config.epochs)}"
            if self.runs:
                what = (f"{len(self.runs)} new runs of {_epochs(self.config.epochs)} in one program "
                        f"({'; '.join(label(c, list(self.runs)) for c in self.runs)})")
        elif self.finished:
            more = f" and {self.position.batch} batches of the next" if self.position.batch else ""
            held = _epochs(self.position.epoch, "trained ")
            newer = "".join(f"; checkpoint step {step} {why} (a run that trains on sets it aside)"
                            for step, why in self.damaged)
            return (f"{self.workdir} holds {held}{more} (step {self.step}), the run asks for "
                    f"{_epochs(self.config.epochs)}: nothing to train; "
                    f"{'raise --epochs to train on' if as_flags() else 'a config of more epochs trains on'}"
                    f"{newer}.")
        else:
            stopped = sum(why is not None for why in self.position.stopped)
            runs = f"{len(self.runs)} runs ({stopped} stopped earlier) " if stopped else \
                f"{len(self.runs)} runs " if self.runs else ""
            what = (f"resuming {runs}from step {self.step} (epoch {self.position.epoch + 1} of "
                    f"{self.config.epochs}, batch {self.position.batch})")
        changed = self.computed_by and computing_lib.changed(self.computed_by, self.computing, self.step)
        hint = ""
        if self.step is not None and self.saved_epochs not in (None, self.config.epochs):
            hint += f"; {_epochs(self.saved_epochs)} asked for before, {self.config.epochs} now"
            name = self.config.optimizer
            if optimizers.OWN.get(name) is not optimizers.OPTIMIZERS.get(name) and not self.stalled:
                hint += (f" (the optimizer {name!r} is made anew: a schedule of "
                         "config.epochs follows the new count, one of a fixed count of steps keeps its end)")
        if self.stalled:
            hint += (f"; warning: the optimizer {self.config.optimizer!r} updates nothing in "
                     f"{optimizer_checks.STALL_PROBES} steps from step {self.step} given gradients of norm 1 "
                     "(a rate of 0, as a schedule's of a fixed count of steps past its end, would train "
                     "nothing from here): register one whose schedule follows config.epochs "
                     "(rnnjax.optimizers), or train anew in another workdir")
        hint += f"; {changed}" if changed else ""
        hint += "".join(f"; checkpoint step {step} {why}, set aside in "
                        f"{self.workdir / checkpoint.DAMAGED}" for step, why in self.damaged)
        if self.lost:
            torn = "; its torn last line is dropped" if self.torn else ""
            hint += f"; {self.workdir / metrics.FILENAME} lacks {self.lost} (their records are lost{torn})"
        elif self.torn:
            hint += (f"; {self.workdir / metrics.FILENAME} ends in a torn line, of an epoch past the "
                     "checkpoint (trained again): dropped")
        hint += f"; {self.workdir / step_lines.FILENAME} {self.steps_lost}" if self.steps_lost else ""
        if self.aside:
            names, numbered = (in_words(p.name for p in ps) for ps in zip(*self.aside))
            hint += (f"; {self.workdir} holds what an earlier run wrote, with no checkpoint to resume "
                     f"from: moving {names} aside, as {numbered}")
        cell = self.config.cell
        if cell in OWN_CELLS and not registered_own(cell):      # config.json names it as it names rnnjax's
            hint += f"; the cell {cell!r} is {registered_as(cell)}, registered in place of rnnjax's own"
        # Advice for whoever got one device without asking (not for --devices 1 of several, nor for a count
        # chosen, as use_cpu_cores chooses one for a batch size no larger count divides).
        if (self.dp.devices[0].platform == "cpu" and len(jax.local_devices()) == 1 and available_cores() > 1
                and not cpu_device_count_chosen()):
            hint += ("; one CPU device on a machine of several cores: call "
                     "rnnjax.backend.use_cpu_cores(batch_size) before JAX starts to train on all of them")
        elif (self.dp.devices[0].platform == "cpu" and self.dp.num_shards == len(jax.local_devices())
              < available_cores() and self.config.batch_size % available_cores()):
            hint += (f"; not {available_cores()} devices, one per core: "
                     f"{spelt('batch_size', self.config.batch_size)} does not divide over them")
        c = self.config
        matmuls = precision.describe(c.compute_dtype, c.matmul_precision, self.dp.devices[0],
                                     takes_dtype(CELLS[c.cell]), is_own(CELLS[c.cell]))
        stepper = "" if c.optimizer == "sgd" else f", {c.optimizer} optimizer"      # d2l's is the default
        own = optimizers.OWN.get(c.optimizer)
        if own is not None and optimizers.OPTIMIZERS.get(c.optimizer) is not own:
            stepper = f", the optimizer {c.optimizer!r} registered in place of rnnjax's own"
        return f"{what} on {devices}, {self.loss_path}, {matmuls}{stepper}; writing to {self.workdir}{hint}"


def plan(config: Config, data: WindowedText, workdir: str | Path, *, devices: int | None = None,
         runs: list[Config] | None = None) -> Plan:
    """Every check ``fit`` makes before it starts: data, devices, the workdir and any checkpoint in it
    (for ``rnnjax.runs.fit_runs``, ``runs`` are the configs trained together, ``config`` the first).

    Reads the workdir, writes nothing. Raises ``ValueError`` (``DataError``,
    ``CheckpointError``) with one sentence on what to change. What a run
    trains is planned under the workdir's lock: ``planned``.
    """
    dp = check(config, data, workdir, devices=devices, runs=runs)
    if jax.process_index() == 0:
        lock_lib.check_unlocked(Path(workdir))
    return _read(config, data, Path(workdir), dp, tuple(runs or ()))


@contextlib.contextmanager
def planned(config: Config, data: WindowedText, workdir: str | Path, *, devices: int | None = None,
            runs: list[Config] | None = None) -> Iterator[Plan]:
    """``plan``, made under the workdir's lock (the writer process holds it for the block; the others
    only read), the damaged checkpoints it found set aside. An error, in the block too, stops the other
    processes of a multi-host run at their next check (``rnnjax.agree.leaving_on_error``)."""
    with agree.leaving_on_error():
        dp = check(config, data, workdir, devices=devices, runs=runs)
        workdir = Path(workdir)
        if jax.process_index() != 0:
            with _open(_read(config, data, workdir, dp, tuple(runs or ()))) as p:
                yield p
            return
        lock_lib.check_unlocked(workdir)         # the holder named before the workdir is made
        with lock_lib.lock(workdir) as held, _open(dataclasses.replace(
                _read(config, data, workdir, dp, tuple(runs or ())), held=held)) as p:
            if not p.finished:
                tidy.remove_unfinished(workdir)       # a failed save's space first: the resume writes next
                for step, _ in p.damaged:
                    tidy.set_aside(workdir, step)
            yield p


_open_plans: set[int] = set()       # the plans whose ``planned`` block runs: fit may train them


@contextlib.contextmanager
def _open(p: Plan) -> Iterator[Plan]:
    _open_plans.add(id(p))
    try:
        yield p
    finally:
        _open_plans.discard(id(p))


def check_open(p: Plan, who: str, then: str = "") -> None:
    """``ValueError`` unless ``p``'s ``planned`` block, which holds the workdir's lock, is running."""
    if id(p) not in _open_plans:
        raise ValueError(f"{who} trains a plan only inside the block of rnnjax.start.planned that made it, "
                         f"which holds the workdir's lock{then}.")


def check_plan(p: Plan, config: Config, data: WindowedText, workdir: str | Path,
               runs: list[Config] | None = None) -> None:
    """``ValueError`` unless ``p`` can train ``config`` on ``data`` in ``workdir``: made for them by
    ``planned``, whose block (holding the workdir's lock) is still running."""
    check_open(p, "fit", " (rnnjax.plan's shows what fit would do): call fit without plan")
    differ = [what for what, a, b in (("config", p.config, config), ("runs", p.runs, tuple(runs or ())),
                                      ("workdir", p.workdir.resolve(), Path(workdir).resolve())) if a != b]
    if differ:
        raise ValueError(f"The plan is for another {' and '.join(differ)} than fit was given (it trains "
                         f"in {p.workdir}): give fit the same.")
    data.check_made_for(config)


def _read(config: Config, data: WindowedText, workdir: Path, dp: DataParallel, runs: tuple[Config, ...]
          ) -> Plan:
    """The plan from what ``workdir`` holds: the newest good checkpoint, damaged ones reported."""
    torn = []        # said once, by describe, with the epochs it leaves out
    records = metrics.MetricsLog(workdir / metrics.FILENAME, warn=torn.append).read(missing_ok=True)
    steps_path = workdir / step_lines.FILENAME          # checked alike
    lines = StepsLog(steps_path, warn=lambda message: None).read(missing_ok=True)
    path = loss_path(make_model(config, len(data.vocab)))
    steps = sorted(checkpoint.steps(workdir), reverse=True)
    if not steps:
        return Plan(config, workdir, dp, path, runs=runs,
                    aside=metrics.aside(workdir, records=bool(records or lines)))
    target = (abstract_run_states(list(runs), len(data.vocab)) if runs
              else abstract_train_state(config, len(data.vocab)))
    damaged, metas = [], {}
    for step in steps:           # every meta first: a damaged one is set aside before orbax lists them
        try:
            metas[step] = checkpoint.read_meta(workdir, step)
        except checkpoint.DamagedCheckpoint as e:
            damaged.append((step, e.reason))
        except checkpoint.UnknownCell as e:
            raise checkpoint.UnknownCell(workdir, e.cell, e.registered, config.cell) from None
    for step in metas:           # the newest good checkpoint; damaged ones are reported and set aside
        try:
            saved.check_compatible(metas[step], config, data.vocab, workdir, runs, data.num_batches(True))
            state = checkpoint.restore_state(workdir / checkpoint.SUBDIR, step, target, metas[step])
        except checkpoint.DamagedCheckpoint as e:
            damaged.append((step, e.reason))
            continue
        position = Position.read(metas[step])
        metrics.check_records_runs(records, len(runs), workdir / metrics.FILENAME)
        metrics.check_records_runs(lines, len(runs), steps_path)
        # No file: an older rnnjax's workdir; an empty one: a write failed from the first line on.
        last = max((line["step"] for line in lines), default=0 if steps_path.exists() else step)
        steps_lost = f"lacks steps {last + 1}-{step} (a write failed)" if last < step else ""
        lost = metrics.lost_epochs(records, position.epoch, position.stopped, len(runs))
        asked = Config.from_json(metas[step]["config"]).epochs
        # A resume of more epochs: rnnjax's own optimizers keep their rate; one's own schedule may have ended.
        stalled = (asked != config.epochs > position.epoch
                   and optimizers.registered_as(config.optimizer) != "rnnjax's own"
                   and optimizer_checks.stalled(config, jax.tree.map(lambda x: x[0], state) if runs
                                                else state, per_run=bool(runs)))
        return Plan(config, workdir, dp, path, step, position, runs, state,
                    tuple(sorted(damaged, reverse=True)), lost, bool(torn),
                    computed_by=computing_lib.computed_by(metas[step]), saved_epochs=asked, stalled=stalled,
                    trained_by=metas[step].get(TRAINED_BY), steps_lost=steps_lost,
                    init_from=metas[step].get(INIT_FROM) or saved.config_init_from(workdir))
    damaged.sort(reverse=True)
    raise checkpoint.CheckpointError(
        f"Every checkpoint in {workdir / checkpoint.SUBDIR} is damaged (steps "
        f"{', '.join(str(s) for s, _ in damaged)}; step {damaged[0][0]}: {damaged[0][1]}). Move that folder "
        f"aside to start anew, or use a new {spelt('workdir')}.")


def _epochs(n: int, kind: str = "") -> str:
    return f"{n} {kind}epoch{'' if n == 1 else 's'}"
