"""A run's trained model read back for inference: ``restore``, which returns a ``rnnjax.restored.Restored``.

``restore(workdir)`` needs nothing but the workdir: it rebuilds the model from
the saved config and returns params, vocab and a ``predict``:
the latest checkpoint, a ``step``, the ``best``, one ``run`` of several
trained together; it reads the params alone, whatever optimizer trained them.
Every array is checked against the checksums saved with it; a damaged
checkpoint is an error, or with ``fallback`` the newest good one before it
(the arrays are read by ``rnnjax.read_state``, as a resume reads them).
``rnnjax.checkpoint`` re-exports it: ``rnnjax.checkpoint.restore``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rnnjax import lock as lock_lib
from rnnjax.config import Config, whole
from rnnjax.spelling import as_flags, spelt
from rnnjax.position import Position
from rnnjax.metrics import FILENAME, MetricsError, MetricsLog
from rnnjax.read_state import restore_state
from rnnjax.restored import Restored
from rnnjax.state import abstract_run_states, abstract_train_state
from rnnjax.stored import (CONFIG, SUBDIR, CheckpointError, DamagedCheckpoint, check_folder, read_meta,
                           steps, unreadable_workdir, val_ppl)
from rnnjax.tidy import REMOVING
from rnnjax.vocab import Vocab


def restore(workdir: str | Path, step: int | None = None, best: bool = False, run: int | None = None,
            fallback: bool = False) -> Restored:
    """Restores a run's checkpoint for inference: the latest, ``step``, or the ``best``. A workdir of
    several runs trained together (``rnnjax.runs``) needs ``run``, the index of one of them (its best
    is its own lowest validation perplexity; in checkpoints older than that field, the runs' mean's).
    The best is the best of the checkpoints kept (saved every ``checkpoint_every`` epochs and at the
    end, each run's best kept), not of every epoch. A damaged
    checkpoint raises ``DamagedCheckpoint``; with ``fallback`` the newest good one older than it is
    taken instead, or for the ``best`` the next best (``CheckpointError`` naming each, if none is good)."""
    if not isinstance(workdir, (str, os.PathLike)):
        raise TypeError(f"restore takes the workdir as a path (str or os.PathLike), got {workdir!r}.")
    if workdir == "":                   # not the current folder
        raise CheckpointError("restore's workdir is empty (''); give the folder a run was trained in.")
    for name, value in (("best", best), ("fallback", fallback)):
        if not isinstance(value, (bool, np.bool_)):         # "no" would count as True
            raise TypeError(f"restore's {name} is True or False, got {value!r}.")
    workdir = Path(workdir)
    directory = workdir / SUBDIR
    try:            # a name too long for the system, a folder this process may not list: one sentence
        if workdir.exists() and not workdir.is_dir():
            raise CheckpointError(f"The workdir {workdir} is a file; give the folder a run was trained in.")
        check_folder(directory)
        if not directory.is_dir():
            real = workdir.resolve() if workdir.is_dir() else workdir    # ".", a link: where it is
            for held, step_of in ((real, ""), (real.parent, f" (step={real.name})")):
                if (held.name == SUBDIR and real.is_dir() and (held.parent / CONFIG).is_file()
                        and (not step_of or real.name.isdecimal())):
                    what = "a workdir's checkpoints folder" if not step_of else "a checkpoint of a workdir"
                    raise CheckpointError(f"{workdir} is {what}; give the workdir, {held.parent}{step_of}.")
            what = "does not exist" if not workdir.exists() else "holds no checkpoints"
            raise CheckpointError(f"The workdir {workdir} {what}; train with "
                                  f"{spelt('workdir', str(workdir))} first.")
    except OSError as e:        # listing it, steps() says so alike
        raise unreadable_workdir(workdir, e) from None
    if step is not None and best:
        raise CheckpointError(f"Give step={step!r} or best=True, not both: the best is a step of its own.")
    asked, run = _whole(step), _whole(run, "run")
    if asked is not None and asked < 0:
        raise CheckpointError(f"step is a checkpoint's step, 0 or more, got {asked}.")
    for _ in range(10):       # a run writing the workdir removes old checkpoints: one may go as it is read
        try:
            return _first_good(workdir, _candidates(workdir, asked, best, run, fallback), run, fallback, best)
        except _Removed as e:
            if e.args[0] is not None and e.args[0] == asked:
                raise CheckpointError(f"The checkpoint at step {asked} in {workdir} was removed as it was "
                                      "read (by the run writing there, which keeps its latest): restore "
                                      "another, or the latest.") from None
    raise CheckpointError(f"The checkpoints in {directory} were removed as fast as they were read: let the "
                          "run writing there go on, then restore again.")


def _stopped_before(workdir: Path) -> str:
    """Why a run stopped before its first checkpoint, as its last record says (a diverging run's); ''."""
    try:
        records = MetricsLog(Path(workdir) / FILENAME, warn=lambda message: None).read(missing_ok=True)
    except (MetricsError, OSError):
        return ""
    why = records[-1].get("stopped") if records else None
    return f": its run stopped before its first ({why})" if why else ""


class _Removed(Exception):
    """The checkpoint at step ``args[0]`` was removed as it was read: not damage; pick again."""


def _candidates(workdir: Path, step: int | None, best: bool, run: int | None, fallback: bool) -> list[int]:
    """The steps ``restore`` reads, in turn while damaged (with ``fallback``): ``step`` (else the latest)
    and those before it, newest first; or the ``best`` and the others with a validation perplexity, lowest
    first. The best is that of the checkpoints whose meta can be read: without ``fallback``, one that
    cannot (it may have been the best) is a ``DamagedCheckpoint``."""
    saved = sorted(steps(workdir))
    if not saved and _dropping(workdir):       # listed as the run writing it renamed its latest but one away
        raise _Removed(None)
    if not saved:
        why = _stopped_before(workdir)
        raise CheckpointError(f"The workdir {workdir} holds no complete checkpoint{why}.")
    if best:
        metas = {}
        for s in saved:
            try:
                metas[s] = read_meta(workdir, s)
            except DamagedCheckpoint as e:
                if lock_lib.removing(workdir, s):
                    raise _Removed(s) from None
                if not fallback:        # it may have been the best
                    raise DamagedCheckpoint(e.step, e.directory, e.reason,
                                            _FALLBACK[True] if len(saved) > 1 else "") from None
        try:        # checked before its perplexities
            run = _run(metas[max(metas)], workdir, run) if metas else run
        except CheckpointError as e:      # no run chosen of several: the best one is worth naming
            ppls = [(p, k) for meta in metas.values() for k in range(len(meta.get("runs", [])))
                    if (p := val_ppl(meta, k)) is not None] if run is None else []
            if not ppls:
                raise
            raise CheckpointError(f"{str(e).removesuffix('.')}; run {min(ppls)[1]} has the lowest validation "
                                  f"perplexity, {min(ppls)[0]:.4g}.") from None
        ranked = sorted((p, s) for s, meta in metas.items() if (p := val_ppl(meta, run)) is not None)
        why = _why_stopped(metas[max(metas)], run) if metas else None
        if not ranked and why is not None:
            raise CheckpointError(f"Run {run} of {workdir} stopped early ({why}), and no checkpoint holds a "
                                  f"finite validation perplexity of it: {_another_run()}.")
        if not ranked:
            raise CheckpointError(f"No checkpoint in {workdir} has a validation perplexity that can be read.")
        return [s for _, s in ranked]
    if step is not None and step not in saved:
        raise CheckpointError(f"{workdir} has no checkpoint at step {step}; it has {saved}.")
    return sorted((s for s in saved if step is None or s <= step), reverse=True)


_FALLBACK = {False: "fallback=True tries the newest good one before it",
             True: "fallback=True tries the next best, of those that can be read"}


def _dropping(workdir: Path) -> bool:
    """Whether the run that holds ``workdir``'s lock has just dropped a checkpoint (``tidy.REMOVING`` holds
    one): a listing made meanwhile can find none, the newest still being renamed into place."""
    try:
        dropped = any((workdir / SUBDIR / REMOVING).iterdir())
    except OSError:
        return False
    if dropped and lock_lib.held(workdir):
        time.sleep(0.05)                    # the newest is being renamed into place
        return True
    return False


def _first_good(workdir: Path, candidates: list[int], run: int | None, fallback: bool, best: bool
                ) -> Restored:
    """The first of ``candidates`` that restores; with ``fallback``, past those that are damaged."""
    damaged = []
    for candidate in candidates:
        try:
            return _restore_for_inference(workdir, candidate, run)
        except DamagedCheckpoint as e:
            if lock_lib.removing(workdir, candidate):
                raise _Removed(candidate) from None
            if len(candidates) == 1:
                raise
            if not fallback:        # where another may restore, saying how
                raise DamagedCheckpoint(e.step, e.directory, e.reason, _FALLBACK[best]) from None
            damaged.append(e)
    which = (" with a validation perplexity" if best
             else "" if candidates[0] == max(steps(workdir)) else f" up to step {candidates[0]}")
    raise CheckpointError(f"Every checkpoint in {workdir / SUBDIR}{which} is damaged (steps "
                          f"{', '.join(str(e.step) for e in damaged)}; step {damaged[0].step}: "
                          f"{damaged[0].reason}).")


def _whole(step: Any, name: str = "step") -> int | None:
    """``step`` (or the argument ``name``) as an ``int``: any integer type (``np.int64``) or digits;
    ``CheckpointError`` otherwise."""
    if step is None or (isinstance(step, str) and step.isdecimal()):     # isdigit: "²", which int refuses
        return None if step is None else int(step)
    try:
        return whole(step, name)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def _run(meta: dict, workdir: Path, run: int | None) -> int | None:
    return chosen_run(len(meta.get("runs", [])), workdir, run)


def chosen_run(together: int, workdir: Path, run: int | None) -> int | None:
    """``run``, checked against the runs ``workdir`` holds, ``together`` of them trained together (0: a single
    run); 0 where it holds one trained together. ``CheckpointError`` in one sentence."""
    if together == 1 and run is None:      # fit_runs of one config: no other run to choose
        return 0
    if together and (run is None or not 0 <= run < together):
        given = "" if run is None else f", not {run}"
        held = f"{together} runs" if together > 1 else "1 run"
        choose = "--run K" if as_flags() else "run=K (the notebook's RNNJAX_RUN=K)"
        raise CheckpointError(f"{workdir} holds {held} trained together; choose one with {choose}, K from 0 "
                              f"to {together - 1}{given}.")
    if run not in (None, 0) and not together:
        raise CheckpointError(f"{workdir} holds a single run; leave out {spelt('run', run)}"
                              f"{'' if as_flags() else ' (and RNNJAX_RUN)'}.")
    return run


def _restore_for_inference(workdir: Path, step: int, run: int | None) -> Restored:
    meta = read_meta(workdir, step)
    config, vocab = Config.from_json(meta["config"]), Vocab.from_json(meta["vocab"])
    runs = [Config.from_json(c) for c in meta.get("runs", [])]
    run = _run(meta, workdir, run)
    if runs:
        config, why = runs[run], _why_stopped(meta, run)
        if why is not None:
            before = [s for s in steps(workdir) if s < step and (earlier := _meta_or_none(workdir, s))
                      is not None and _why_stopped(earlier, run) is None]
            newest = "" if as_flags() or not before else f"the newest with step={max(before)}, "   # no --step
            other = (f", or one saved before it stopped: {newest}the best with {spelt('best', True)}."
                     if before else "; no checkpoint kept is from before it stopped.")
            raise CheckpointError(f"Run {run} of {workdir} stopped early ({why}): {_another_run()}{other}")
        # The params alone are read: a target of SGD's state will do, the run's own optimizer never made.
        target = abstract_run_states([c.replace(optimizer="sgd") for c in runs], len(vocab))
        stacked = restore_state(workdir / SUBDIR, step, target, meta, True)
        params = jax.tree.map(lambda x: x[run], stacked)
    else:
        target = abstract_train_state(config.replace(optimizer="sgd"), len(vocab))     # as runs' above
        params = restore_state(workdir / SUBDIR, step, target, meta, True)
    return Restored(config, vocab, params, step, meta, run if runs else None, workdir)   # run 0 of one: None


def _another_run() -> str:
    return "choose another --run" if as_flags() else "restore another run"


def _why_stopped(meta: dict, run: int | None) -> str | None:
    """Why ``run`` of the runs trained together stopped early, as ``meta`` says; ``None`` while it trains
    on (and for a single run)."""
    stopped = Position.read(meta).stopped
    return stopped[run] if run is not None and meta.get("runs") and stopped else None


def _meta_or_none(workdir: Path, step: int) -> dict | None:
    try:
        return read_meta(workdir, step)
    except DamagedCheckpoint:
        return None
