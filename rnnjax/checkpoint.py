"""Orbax checkpoints of a run, and restoring them for inference.

A workdir holds ``config.json``, ``metrics.jsonl`` (the CLI adds ``ppl.png``)
and ``checkpoints/<step>/`` with two orbax items: ``state``, the full
``TrainState`` (step, params, optimizer state; ``StandardSave``), and ``meta``,
JSON with the config, the vocabulary and the data-order position
(``JsonSave``). The latest ``keep`` checkpoints and the best by validation
perplexity are kept. Orbax writes each checkpoint to a temporary directory
and renames it when complete, so a half-written one is never listed.

Every save is read back once it has finished (its manifest and metadata files
are there). What is stored is read and checked by ``rnnjax.stored``.

``restore(workdir)`` needs nothing but the workdir: it rebuilds the model from
the saved config and returns params, vocab and a ``predict``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from rnnjax import meta as meta_lib, orbax_logs, stops, workdir as workdir_lib
# What is stored, and its errors, read from here too (rnnjax.checkpoint.restore, .read_meta, ...).
from rnnjax.stored import (DAMAGED, SUBDIR, CellMismatch, CheckpointError, DamagedCheckpoint,  # noqa: F401
                           UnknownCell, best_step, check_fits, latest_step, read_meta, reason, set_aside,
                           steps, val_ppls)
from rnnjax.config import Config, whole
from rnnjax.generate import predict, predict_batch
from rnnjax.state import abstract_run_states, abstract_train_state, make_model
from rnnjax.vocab import Vocab

# What a finished save holds: read back after every save, a cheap sign that it can be restored.
WRITTEN = ("_CHECKPOINT_METADATA", "state/manifest.ocdbt", "state/_METADATA", "meta/metadata")


@dataclasses.dataclass
class _Lowest(policies.PreservationPolicy):
    """Preserves the checkpoint of lowest ``val_ppl``: by orbax's metrics for its own saves, by ``earlier``
    (read from the metas) for those a resumed run found, whose metrics orbax does not know."""
    earlier: dict[int, float]

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        def ppl(c):
            return c.metrics["val_ppl"] if c.metrics is not None else self.earlier.get(c.step)
        scored = [(ppl(c), c.step) for c in checkpoints if ppl(c) is not None]
        best = min(scored)[1] if scored else None
        return [c.step == best for c in checkpoints]


class Manager(ocp.CheckpointManager):
    """Orbax's manager, and the steps it saved that are not yet read back (``check_saved``); while it is
    open, orbax's tracebacks are left to its one-sentence errors."""

    def __init__(self, *args, **kwargs):
        self.unchecked: list[int] = []
        self._quiet = orbax_logs.Tracebacks()
        logging.getLogger("absl").addFilter(self._quiet)
        super().__init__(*args, **kwargs)

    def close(self):
        try:
            super().close()
        finally:
            logging.getLogger("absl").removeFilter(self._quiet)

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        except Exception:           # closed by an error: that one says what stopped the run, not a save's
            if exc[0] is None:
                raise


def manager(directory: str | Path, *, keep: int = 3, read_only: bool = False,
            earlier: dict[int, float] | None = None) -> Manager:
    """A manager keeping the latest ``keep`` checkpoints and the best by ``val_ppl``, the checkpoints
    found in ``directory`` counted with their ``earlier`` perplexities (``val_ppls``)."""
    preservation = policies.AnyPreservationPolicy([policies.LatestN(keep), _Lowest(dict(earlier or {}))])
    options = ocp.CheckpointManagerOptions(preservation_policy=preservation, create=not read_only,
                                           read_only=read_only)
    orbax_logs.quiet()
    return Manager(Path(directory).absolute(), options=options, item_names=("state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict,
         val_ppl: float | None = None) -> None:
    """Saves host ``state`` and ``meta`` (with ``val_ppl``, or ``None`` mid-epoch) at ``step``
    (asynchronously); a no-op if it exists."""
    if step in mngr.all_steps():
        return
    meta = meta_lib.seal({**meta, "val_ppl": val_ppl if val_ppl is None or math.isfinite(val_ppl) else None,
                          "checksums": workdir_lib.checksums(state)})
    check_saved(mngr)
    mngr.unchecked.append(step)
    try:
        with stops.held():
            mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)),
                      metrics=None if meta["val_ppl"] is None else {"val_ppl": meta["val_ppl"]}, force=True)
    except Exception as e:
        raise _save_failed(mngr, step, e) from None


def check_saved(mngr: Manager) -> None:
    """``CheckpointError`` if an earlier asynchronous save failed, or a finished one lacks a file a restore
    needs (``WRITTEN``: a path orbax misread, a lost write). It waits for the saves in flight, as orbax's
    next save does."""
    try:
        mngr.check_for_errors()
        # orbax's next save waits for this one anyway; finished, the save is the newest, kept by any policy
        mngr.wait_until_finished()
    except Exception as e:
        raise _save_failed(mngr, None, e) from None
    for step in mngr.unchecked:
        folder = Path(mngr.directory) / str(step)
        missing = _missing(folder)
        if missing:
            e = FileNotFoundError(f"{folder} lacks {', '.join(missing)} after its save")
            raise _save_failed(mngr, step, e) from None
    mngr.unchecked.clear()


def _missing(folder: Path) -> list[str]:
    return [f for f in WRITTEN if not (folder / f).is_file()]


def _save_failed(mngr: ocp.CheckpointManager, step: int | None, e: Exception) -> CheckpointError:
    try:                                 # the saves still running count as complete if they finish
        mngr.wait_until_finished()
    except Exception:
        pass
    mngr.unchecked.clear()
    directory = Path(mngr.directory)     # the failed step is not its last complete one, listed or not
    latest = max((s for s in steps(directory.parent) if s != step and not _missing(directory / str(s))),
                 default=None)
    last = ("it has no complete checkpoint" if latest is None
            else f"its last complete checkpoint is step {latest}")
    what = f"step {step}" if step is not None else "a checkpoint"
    return CheckpointError(f"Saving {what} to {directory} failed ({reason(e)}); training stopped "
                           f"there and {last}. Free space (or fix the cause) and run the same command to "
                           "resume.")


def restore_state(source: ocp.CheckpointManager | Path, step: int, target: Any, meta: dict | None = None
                  ) -> Any:
    """The saved state in ``source`` (a manager, or its directory), as host arrays shaped and typed like
    ``target``, its checksums (in ``meta``, read and checked unless given) verified: ``DamagedCheckpoint``
    if it cannot be read or any array differs from what was saved. It reads that checkpoint's files only
    (a manager would read every checkpoint's metadata first, a FIFO's too)."""
    directory = Path(getattr(source, "directory", source)).absolute()     # orbax takes absolute paths only
    meta = read_meta(directory.parent, step) if meta is None else meta
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    orbax_logs.quiet()
    check_fits(meta, abstract, directory.parent, step, read_saved=True)     # another cell under its name
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            state = jax.device_get(checkpointer.restore(directory / str(step) / "state", abstract))
    except Exception as e:
        raise DamagedCheckpoint(step, directory, f"cannot be restored ({reason(e)})") from None
    shapes = jax.tree.map(np.shape, abstract)
    if jax.tree.structure(state) != jax.tree.structure(abstract) or jax.tree.map(np.shape, state) != shapes:
        raise DamagedCheckpoint(step, directory, "is damaged: its arrays do not fit the model its meta "
                                "describes")
    bad = workdir_lib.verify(state, meta["checksums"])
    if bad:
        raise DamagedCheckpoint(step, directory, f"is damaged: {len(bad)} array(s) fail their checksums "
                                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    return state


def write_config(workdir: Path, config: Config, vocab: Vocab, runs: list[Config] | None = None) -> None:
    """``config.json`` for people and tools; the checkpoints carry their own copy."""
    workdir.mkdir(parents=True, exist_ok=True)
    content = {"config": config.to_json(), "vocab": vocab.to_json()}
    if runs:
        content["runs"] = [c.to_json() for c in runs]
    workdir_lib.write_atomically(workdir / "config.json", json.dumps(content, indent=1) + "\n")


@dataclasses.dataclass
class Restored:
    """A trained model from a checkpoint: enough to generate text, nothing of the data."""
    config: Config
    vocab: Vocab
    params: Any
    step: int
    meta: dict

    @property
    def model(self):
        return make_model(self.config, len(self.vocab))

    def predict(self, prefix: str, num_preds: int, **sampling) -> str:
        """Greedy, or sampled given ``temperature``, ``top_k`` or ``key`` (``generate.predict_batch``)."""
        return predict(self.model, self.params, self.vocab, prefix, num_preds, **sampling)

    def predict_batch(self, prefixes: list[str], num_preds: int, **sampling) -> list[str]:
        return predict_batch(self.model, self.params, self.vocab, prefixes, num_preds, **sampling)


def restore(workdir: str | Path, step: int | None = None, best: bool = False, run: int | None = None,
            fallback: bool = False) -> Restored:
    """Restores a run's checkpoint for inference: the latest, ``step``, or the ``best``. A workdir of
    several runs trained together (``rnnjax.runs``) needs ``run``, the index of one of them (its best
    is its own lowest validation perplexity; in checkpoints older than that field, the runs' mean's).
    The best is the best of the checkpoints kept (saved every ``checkpoint_every`` epochs and at the
    end; of runs, the kept best is the mean's), not of every epoch. A damaged
    checkpoint raises ``DamagedCheckpoint``; with ``fallback`` the newest good one older than it is
    taken instead (``CheckpointError`` naming each, if none is good)."""
    workdir = Path(workdir)
    directory = workdir / SUBDIR
    if not directory.is_dir():
        what = ("does not exist" if not workdir.exists()
                else "is a file, not a folder" if not workdir.is_dir() else "holds no checkpoints")
        raise CheckpointError(f"The workdir {workdir} {what}; train with --workdir {workdir} first.")
    if step is not None and best:
        raise CheckpointError(f"Give step={step!r} or best=True, not both: the best is a step of its own.")
    asked, run = _whole(step), _whole(run, "run")
    for _ in range(10):       # a run writing the workdir removes old checkpoints: one may go as it is read
        step, saved = _pick(workdir, asked, best, run)
        try:
            return _newest_good(workdir, step, saved, run, fallback)
        except _Removed as e:
            if e.args[0] == asked:
                raise CheckpointError(f"The checkpoint at step {asked} in {workdir} was removed as it was "
                                      "read (by the run writing there, which keeps its latest): restore "
                                      "another, or the latest.") from None
    raise CheckpointError(f"The checkpoints in {directory} were removed as fast as they were read: let the "
                          "run writing there go on, then restore again.")


class _Removed(Exception):
    """The checkpoint at step ``args[0]`` was removed as it was read: not damage; pick again."""


def _pick(workdir: Path, step: int | None, best: bool, run: int | None) -> tuple[int, list[int]]:
    """The step ``restore`` reads first (``step``, the ``best``, else the latest), and the steps saved."""
    saved = sorted(steps(workdir))
    if not saved:
        raise CheckpointError(f"The workdir {workdir} holds no complete checkpoint.")
    if best:
        step = best_step(workdir, run)
        if step is None:
            raise CheckpointError(f"No checkpoint in {workdir} has a validation perplexity.")
    elif step is None:
        step = max(saved)
    elif step not in saved:
        raise CheckpointError(f"{workdir} has no checkpoint at step {step}; it has {saved}.")
    return step, saved


def _newest_good(workdir: Path, step: int, saved: list[int], run: int | None, fallback: bool) -> Restored:
    """``step``'s checkpoint, or with ``fallback`` the newest good one before it if it is damaged."""
    candidates, damaged = sorted((s for s in saved if s <= step), reverse=True), []
    for candidate in candidates:
        try:
            return _restore_for_inference(workdir, candidate, run)
        except DamagedCheckpoint as e:
            if workdir_lib.removing(workdir, candidate):
                raise _Removed(candidate) from None
            if not fallback or len(candidates) == 1:
                raise
            damaged.append(e)
    upto = "" if step == max(saved) else f" up to step {step}"
    raise CheckpointError(f"Every checkpoint in {workdir / SUBDIR}{upto} is damaged (steps "
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


def _restore_for_inference(workdir: Path, step: int, run: int | None) -> Restored:
    meta = read_meta(workdir, step)
    config, vocab = Config.from_json(meta["config"]), Vocab.from_json(meta["vocab"])
    runs = [Config.from_json(c) for c in meta.get("runs", [])]
    if runs and (run is None or not 0 <= run < len(runs)):
        given = "" if run is None else f", not {run}"
        raise CheckpointError(f"{workdir} holds {len(runs)} runs trained together; choose one with run=K "
                              f"(--run K; the notebook's RNNJAX_RUN=K), K from 0 to {len(runs) - 1}{given}.")
    if run not in (None, 0) and not runs:
        raise CheckpointError(f"{workdir} holds a single run; leave out run={run} (--run, RNNJAX_RUN).")
    if runs:
        config, why = runs[run], (meta["position"].get("stopped") or [None] * len(runs))[run]
        if why is not None:
            raise CheckpointError(f"Run {run} of {workdir} stopped early ({why}): restore another run, or a "
                                  "step from before it stopped.")
        stacked = restore_state(workdir / SUBDIR, step, abstract_run_states(runs, len(vocab)), meta)
        state = jax.tree.map(lambda x: x[run], stacked)
    else:
        state = restore_state(workdir / SUBDIR, step, abstract_train_state(config, len(vocab)), meta)
    return Restored(config, vocab, state.params, step, meta)
