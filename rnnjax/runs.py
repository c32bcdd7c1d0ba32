"""Many runs in one program: one model under several seeds, learning rates and clips, vmapped.

``fit_runs(configs, data, workdir)`` trains configs that differ only in
``SWEEPABLE`` fields (``seed``, ``lr``, ``clip``) as one ``TrainState`` stacked
on a leading run axis: ``train_windows`` is vmapped over it (the token stream
shared; each run its own batch order, dropout key, and ``clip`` and ``lr`` in
its optimizer state), then data parallel over the devices as a single run is.
Each run is the run ``fit`` trains alone, to float32 round-off (tested). One
workdir holds them all: checkpoints of the stacked state (resumed exactly),
``metrics.jsonl`` with a ``run`` field (the CLI plots a curve per run);
``rnnjax.checkpoint.restore(workdir, run=k)`` gives run k on its own. A run
whose loss turns non-finite or diverges stops alone; the others train on.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax import agree, checkpoint, loop, train as train_lib
from rnnjax.config import SWEEPABLE, Config, ConfigError, label
from rnnjax.spelling import got
from rnnjax.data import Batch, Windows, WindowedText
from rnnjax.loop import CHECKPOINT_EVERY, FitResult
from rnnjax.start import Plan, check_plan, planned
from rnnjax.state import TrainState, create_run_states
from rnnjax.train import train_windows


def listed(configs: Iterable[Config]) -> list[Config]:
    """``configs`` (any iterable, a generator too, read once) as a list: ``ConfigError`` in one sentence
    unless each is a ``Config``."""
    if isinstance(configs, (Config, str, dict)) or not isinstance(configs, Iterable):
        raise ConfigError(f"configs must be a list of Config objects, not of type {type(configs).__name__}; "
                          "for one run, use rnnjax.train.fit or [config].")
    configs = list(configs)
    for c in configs:
        if not isinstance(c, Config):
            raise ConfigError(f"configs must be a list of Config objects; one of them is of type "
                              f"{type(c).__name__}.")
    return configs


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
    """``rnnjax.train.eval_steps`` (as it is when called: one of a researcher's own too) for every run, on
    the same batches."""
    return jax.vmap(lambda state: train_lib.eval_steps(state, batches, axis_name))(states)


# What ``summary`` ranges, of each run's last epoch.
SUMMARIZED = ("train_ppl", "val_ppl", "val_bpc")


def summary(history: list[dict] | FitResult, stopped: Sequence[str | None] = (),
            runs: Iterable[int] | None = None) -> dict[str, dict[str, float]]:
    """Mean, min and max over the runs (or those of ``runs``, indices: a ``groups``' one) of their last
    epoch's ``train_ppl``, ``val_ppl``, ``val_bpc`` in ``history`` (a ``FitResult``'s, or the result);
    runs that stopped left out: their last record says why (``stopped``), or, for logs written before it
    did, ``stopped`` (a ``FitResult``'s) does. ``ValueError`` if every run (chosen) stopped, ``runs`` names
    one the history holds nothing of, or the runs differ in other settings than the seed (``groups``)."""
    if isinstance(history, FitResult):
        history, stopped = history.history, stopped or history.stopped
    if isinstance(history, (str, dict)) or not isinstance(history, Iterable):
        raise TypeError(f"summary takes a history, the records of fit_runs' result (result.history), not "
                        f"{got(history)}.")
    history = list(history)
    for r in history:
        if not isinstance(r, dict) or not {"epoch", *SUMMARIZED} <= set(r) and "stopped" not in r:
            raise ValueError(f"The history holds {r!r:.80}, not an epoch's record (a dict of epoch, "
                             f"{', '.join(SUMMARIZED)}, as metrics.jsonl's lines).")
    out = {r.get("run") for r in history if "stopped" in r} | {k for k, why in enumerate(stopped) if why}
    wanted = None if runs is None else _indices(runs)
    if wanted == set():
        raise ValueError("runs is empty: choose at least one run to summarize, or leave it out for all.")
    missing = sorted(wanted - {r.get("run") for r in history} - out) if wanted else []     # stopped: said
    if missing:
        raise ValueError(f"The history holds no record of run(s) {missing}: no last epoch to summarize.")
    kept = [r for r in history if r.get("run") not in out and (wanted is None or r.get("run") in wanted)]
    varied = [k for k in SWEEPABLE if k != "seed" and len({r[k] for r in kept if k in r}) > 1]
    if varied:          # as groups() says: a mean over runs of other rates is no result
        raise ValueError(f"The runs summarized differ in {' and '.join(varied)}: a mean over them is no "
                         "result; summarize each group, runs=rnnjax.runs.groups(configs)[name].")
    if not kept:
        raise ValueError(f"Every run {'of the history' if wanted is None else 'chosen'} stopped: no last "
                         "epoch to summarize." if history else "The history is empty: no epoch to summarize.")
    last = max(r["epoch"] for r in kept)
    final = [r for r in kept if r["epoch"] == last]
    return {k: {"mean": statistics.fmean(r[k] for r in final), "min": min(r[k] for r in final),
                "max": max(r[k] for r in final)} for k in SUMMARIZED}


def _indices(runs: Iterable[int]) -> set[int]:
    try:
        wanted = set(runs)
    except TypeError:
        wanted = None
    if wanted is None or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in wanted):
        raise TypeError(f"runs are the indices of runs (a list of ints, a groups() value), got {runs!r}.")
    return wanted


def groups(configs: Sequence[Config]) -> dict[str, list[int]]:
    """The runs trained together by their settings other than the seed, as ``{"lr 0.5": [indices]}``, in
    the order of their first run: a mean over runs of other rates is no result. One group, ``""``, where
    only the seeds differ."""
    configs = listed(configs)          # a generator is read once
    varied = [k for k in SWEEPABLE if k != "seed" and len({getattr(c, k) for c in configs}) > 1]
    out: dict[str, list[int]] = {}
    for k, c in enumerate(configs):
        out.setdefault(label(c, configs, varied), []).append(k)
    return out


@agree.leaves_on_error
def fit_runs(configs: Iterable[Config], data: WindowedText, workdir: str | Path, *,
             devices: int | None = None, checkpoint_every: int = CHECKPOINT_EVERY,
             keep: int = checkpoint.KEEP, progress: Callable | None = None,
             log: Callable[[str], Any] | None = print, plan: Plan | None = None, params: Any = None
             ) -> FitResult:
    """Trains ``configs`` together as ``fit`` trains one: checked first, resumed from ``workdir``, one
    metrics line per run and epoch. The result's state is the stacked one; ``progress`` gets the runs'
    mean perplexities and, as ``runs``, their records. ``data``'s seed is replaced by each run's. A run
    whose loss turns non-finite or that diverges stops alone (logged; its records end with the epoch that
    stopped it where it validated, that record's ``stopped`` saying why, as the result's ``stopped``
    does; ``restore`` refuses it) and the others train on; ``NonFiniteLoss`` once every run has stopped.
    ``plan`` and ``params``: as ``fit``'s (every new run starts from ``params``, one run's)."""
    configs = listed(configs)
    check_runs(configs)
    a = train_lib.asked(configs[0], data, workdir, params, checkpoint_every, keep, progress, log, "fit_runs")
    if plan is not None:
        check_plan(plan, configs[0], data, workdir, configs)
        return _fit_runs(plan, data, a)
    with planned(configs[0], data, workdir, devices=devices, runs=configs) as p:
        return _fit_runs(p, data, a)


def _fit_runs(p: Plan, data: WindowedText, a: train_lib.Asked) -> FitResult:
    if a.log:
        a.log(p.describe() + train_lib.given_line(p, a.params))
    configs = list(p.runs)
    state = create_run_states(configs, len(data.vocab), a.params) if p.state is None else p.state
    rngs = jnp.stack([train_lib.dropout_key(c) for c in configs]) if p.config.dropout else None
    step = functools.partial(train_runs, rngs=rngs)        # the keys an input (rnnjax.compiled)
    return loop.run(p, data, state, step, eval_runs, checkpoint_every=a.checkpoint_every, keep=a.keep,
                    progress=a.progress, log=a.log, origin=a.origin)
