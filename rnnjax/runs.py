"""Many runs in one program: one model under several seeds, learning rates and clips, vmapped.

``fit_runs(configs, data, workdir)`` trains configs that differ only in
``SWEEPABLE`` fields (``seed``, ``lr``, ``clip``) as one ``TrainState`` stacked
on a leading run axis: ``train_windows`` is vmapped over it (the token stream
shared; each run its own batch order, dropout key, and ``clip`` and ``lr`` in
its optimizer state), then data parallel over the devices as a single run is.
Each run is the run ``fit`` trains alone, to float32 round-off (tested). One
workdir holds them all: checkpoints of the stacked state (resumed exactly),
``metrics.jsonl`` with a ``run`` field, ``ppl.png`` with a curve per run;
``rnnjax.checkpoint.restore(workdir, run=k)`` gives run k on its own. A run
whose loss turns non-finite or diverges stops alone; the others train on.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import checkpoint, metrics as metrics_lib
from rnnjax.config import SWEEPABLE, Config, ConfigError, label
from rnnjax.data import Batch, TimeMachine, Windows
from rnnjax.parallel import wait_for_backlog
from rnnjax.start import Plan, Position, planned
from rnnjax.state import TrainState, create_run_states
from rnnjax.stops import NonFiniteLoss, catch_signals, check_divergence, check_finite
from rnnjax.train import (CHECKPOINT_EVERY, STEPS_PER_CALL, FitResult, _chunks, _stopped, compile_run,
                          count_steps, eval_steps, open_workdir, train_windows)


def check_runs(configs: list[Config]) -> None:
    """Runs in one program share every shape: ``ConfigError`` unless they differ in ``SWEEPABLE`` only."""
    if not configs:
        raise ConfigError("There are no runs to train.")
    differ = sorted({f.name for c in configs[1:] for f in dataclasses.fields(Config)
                     if f.name not in SWEEPABLE and getattr(c, f.name) != getattr(configs[0], f.name)})
    if differ:
        raise ConfigError(f"Runs trained in one program may differ only in {', '.join(SWEEPABLE)}; these "
                          f"differ in {', '.join(differ)}: train them in separate workdirs.")
    if len(set(configs)) < len(configs):
        raise ConfigError("Two of the runs are the same run; list each seed and value once.")


def train_runs(states: TrainState, tokens: jax.Array, windows: Windows, axis_name: str | None = None,
               rngs: jax.Array | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """``train_windows`` for every run: vmapped over the leading run axis of ``states``, ``windows``
    and ``rngs``; ``tokens`` shared."""
    def one(state, windows, rng):
        return train_windows(state, tokens, windows, axis_name, rng)
    return jax.vmap(one, in_axes=(0, 0, None if rngs is None else 0))(states, windows, rngs)


def eval_runs(states: TrainState, batches: Batch, axis_name: str | None = None) -> dict[str, jax.Array]:
    """``eval_steps`` for every run, on the same batches."""
    return jax.vmap(lambda state: eval_steps(state, batches, axis_name))(states)


def summary(history: list[dict]) -> dict[str, dict[str, float]]:
    """Mean, min and max over the runs of their last epoch's ``train_ppl``, ``val_ppl``, ``val_bpc``."""
    last = max(r["epoch"] for r in history)
    final = [r for r in history if r["epoch"] == last]
    return {k: {"mean": statistics.fmean(r[k] for r in final), "min": min(r[k] for r in final),
                "max": max(r[k] for r in final)} for k in ("train_ppl", "val_ppl", "val_bpc")}


class _Stops:
    """Which runs have stopped and why: a run whose loss turns non-finite or that diverges
    (``rnnjax.stops``) stops alone, named in the log, while the others train on."""

    def __init__(self, configs: list[Config], stopped: list, log: Callable[[str], Any] | None):
        self.configs, self.log = configs, log
        self.why = list(stopped) or [None] * len(configs)
        self.unsaid: list[int] = []         # stopped by this epoch's checks, said once they are all made

    @property
    def live(self) -> list[int]:
        return [r for r, why in enumerate(self.why) if why is None]

    def check(self, r: int, check: Callable, *args) -> Any:
        """``check(*args)``, or ``None`` where it raises ``NonFiniteLoss``: run ``r`` then stops."""
        try:
            return check(*args)
        except NonFiniteLoss as e:
            self.why[r] = e.reason
            self.unsaid.append(r)
            return None

    def check_any_live(self, say: bool = True) -> None:
        """``NonFiniteLoss`` if no run trains on; else, if ``say`` (the epoch's last check), says which runs
        this epoch stopped and how many train on."""
        if say and self.log and self.live:
            for r in self.unsaid:
                self.log(f"run {r} ({label(self.configs[r], self.configs)}) stopped: {self.why[r]}; "
                         f"{len(self.live)} run(s) train on.")
        if say or not self.live:
            self.unsaid = []
        if not self.live:
            whys = "; ".join(f"run {r} ({label(c, self.configs)}): {why}"
                             for r, (c, why) in enumerate(zip(self.configs, self.why)))
            raise NonFiniteLoss(f"Every run stopped: {whys}. Train again in a new --workdir with a "
                                "smaller --lr.")


def fit_runs(configs: list[Config], data: TimeMachine, workdir: str | Path, *, devices: int | None = None,
             checkpoint_every: int = CHECKPOINT_EVERY, keep: int = 3, progress: Callable | None = None,
             log: Callable[[str], Any] | None = print, plan: Plan | None = None) -> FitResult:
    """Trains ``configs`` together as ``fit`` trains one: checked first, resumed from ``workdir``, one
    metrics line per run and epoch. The result's state is the stacked one; ``progress`` gets the runs'
    mean perplexities. ``data``'s seed is replaced by each run's. A run whose loss turns non-finite or
    that diverges stops alone (logged; its records end, ``restore`` refuses it, the result's ``stopped``
    says why) and the others train on; ``NonFiniteLoss`` once every run has stopped. ``plan``: as
    ``fit``'s."""
    check_runs(configs)
    if plan is not None:
        if log:
            log(plan.describe())
        return _fit_runs(plan, data, checkpoint_every, keep, progress, log)
    with planned(configs[0], data, workdir, devices=devices, runs=configs) as p:
        if log:
            log(p.describe())
        return _fit_runs(p, data, checkpoint_every, keep, progress, log)


def _fit_runs(p: Plan, data: TimeMachine, checkpoint_every: int, keep: int, progress: Callable | None,
              log: Callable[[str], Any] | None) -> FitResult:
    configs, base, num_runs = list(p.runs), p.config, len(p.runs)
    workdir, dp, position = p.workdir, p.dp, p.position
    datas = [copy.copy(data) for _ in configs]
    for d, c in zip(datas, configs):
        d.seed = c.seed                    # the batch order is a function of (seed, epoch)

    state = create_run_states(configs, len(data.vocab)) if p.state is None else p.state
    manager, metrics_log = open_workdir(p, data, keep)
    stops = _Stops(configs, position.stopped, log)
    if p.finished:
        manager.close()
        return FitResult(state, metrics_log.read(), workdir, tuple(stops.why))

    rngs = None
    if base.dropout and base.num_layers > 1:
        rngs = jnp.stack([jax.random.PRNGKey(c.seed) for c in configs])

    def step(states, tokens, windows, axis_name=None):
        return train_runs(states, tokens, windows, axis_name, rngs)

    train, evaluate, tokens, val_batches = compile_run(p, data, step, eval_runs)
    state = dp.replicate(state)
    steps_per_epoch, total, done = count_steps(p, data)
    run_axis = 1 if dp.pmapped else 0          # after the device axis
    high = list(position.high or [0] * num_runs)     # per run: epochs in a row far above uniform's ppl

    def save(epoch: int, batch: int, partial: list, val_ppl: float | None = None):
        position = Position(epoch, batch, partial, stops.why, high)
        meta = checkpoint.make_meta(base, data.vocab, dataclasses.asdict(position), steps_per_epoch,
                                    num_devices=dp.num_shards, runs=[c.to_json() for c in configs])
        host = dp.unreplicate(state)
        checkpoint.save(manager, int(host.step[0]), host, meta, val_ppl=val_ppl)

    with catch_signals() as stop, manager:
        for epoch in range(position.epoch, base.epochs):
            start = position.batch if epoch == position.epoch else 0
            resumed = epoch == position.epoch and position.partial
            partial = [list(s) for s in position.partial] if resumed else [[]] * num_runs
            t0 = time.perf_counter()
            call_metrics, batch = [], start
            for chunk in _chunks(zip(*(d.train_windows(epoch, start) for d in datas)), STEPS_PER_CALL):
                per_run = [dp.shard_stack([windows[r] for windows in chunk]) for r in range(num_runs)]
                state, m = train(state, tokens, jax.tree.map(lambda *x: np.stack(x, run_axis), *per_run))
                call_metrics.append(m)
                wait_for_backlog(call_metrics)
                done, batch = done + len(chunk), batch + len(chunk)
                if progress:
                    progress(done, total, None)
                if stop.signum is not None:
                    break
            host = dp.unreplicate(call_metrics)
            sums = [[] for _ in configs]
            for r in stops.live:
                mine = stops.check(r, check_finite, [jax.tree.map(lambda x: x[r], m) for m in host],
                                   epoch, start, steps_per_epoch)
                sums[r] = [] if mine is None else partial[r] + mine
            stops.check_any_live(say=False)         # said after the divergence checks, with the final count
            if batch < steps_per_epoch:                  # stopped mid-epoch
                save(epoch, batch, sums)
                raise _stopped(manager, stop.signum, epoch, batch, steps_per_epoch, done, workdir)
            val = dp.unreplicate(evaluate(state, val_batches))
            seconds = time.perf_counter() - t0
            records = []
            for r in stops.live:
                train_loss = sum(s[0] for s in sums[r]) / sum(s[1] for s in sums[r])
                val_loss = float(val["loss_sum"][r]) / float(val["count"][r])
                record = {"run": r, **{k: getattr(configs[r], k) for k in SWEEPABLE},
                          **metrics_lib.epoch_record(epoch + 1, done, train_loss, val_loss, seconds)}
                far_off = stops.check(r, check_divergence, record, high[r], len(data.vocab))
                high[r] = high[r] + 1 if far_off else 0
                if stops.why[r] is None:
                    records.append(record)
            stops.check_any_live()
            mean_val = statistics.fmean(r["val_ppl"] for r in records)
            for record in records:          # the records first, as fit does
                metrics_log.append(record)
            if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == base.epochs or stop.signum is not None:
                save(epoch + 1, 0, [[]] * num_runs, val_ppl=mean_val)
            if progress:
                progress(done, total, {"epoch": epoch + 1, "val_ppl": mean_val,
                                       "train_ppl": statistics.fmean(r["train_ppl"] for r in records)})
            if stop.signum is not None:
                raise _stopped(manager, stop.signum, epoch, steps_per_epoch, steps_per_epoch, done, workdir)
        checkpoint.check_saved(manager, wait=True)
    return FitResult(dp.unreplicate(state), metrics_log.read(), workdir, tuple(stops.why))
