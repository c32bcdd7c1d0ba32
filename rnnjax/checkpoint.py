"""Orbax checkpoints of a run: the manager, saving, and what a save must leave.

A workdir holds ``config.json``, ``metrics.jsonl``, ``steps.jsonl`` (the CLI adds ``ppl.png``)
and ``checkpoints/<step>/`` with two orbax items: ``state``, the full
``TrainState`` (step, params, optimizer state; ``StandardSave``), and ``meta``,
JSON with the config, the vocabulary and the data-order position
(``JsonSave``). The latest ``keep`` checkpoints and the best by validation
perplexity are kept (of runs trained together, each run's best too). Orbax
writes each checkpoint to a temporary directory and renames it when complete,
so a half-written one is never listed.

Every save is read back once it has finished (its manifest and metadata files
are there). What is stored is read and checked by ``rnnjax.stored``, and
restored for inference by the module ``rnnjax.restore``'s ``restore`` and
as a resume reads it by ``rnnjax.read_state``, both read from here: call
``rnnjax.checkpoint.restore``, ``.restore_state``, ``.read_meta``, ...
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from rnnjax import meta as meta_lib, orbax_logs, stops, workdir as workdir_lib
from rnnjax.config import Config
from rnnjax.spelling import again, spelt
from rnnjax.read_state import restore_state  # noqa: F401
from rnnjax.restore import restore  # noqa: F401
from rnnjax.restored import Restored  # noqa: F401
from rnnjax.stored import (CONFIG, DAMAGED, SUBDIR, CellMismatch, CheckpointError,  # noqa: F401
                           DamagedCheckpoint, UnknownCell, latest_step, read_meta,
                           StateMismatch, UnreadableCheckpoint, reason, steps, val_ppl)
from rnnjax.tidy import REMOVING, remove_dropped  # noqa: F401
from rnnjax.vocab import Vocab

# What a finished save holds: read back after every save, a cheap sign that it can be restored.
WRITTEN = ("_CHECKPOINT_METADATA", "state/manifest.ocdbt", "state/_METADATA", "meta/metadata")


@dataclasses.dataclass
class _Lowest(policies.PreservationPolicy):
    """Preserves the checkpoint of lowest ``val_ppl``, and of runs trained together, of each run's lowest
    (``scores``): by orbax's metrics for its own saves, by ``earlier`` (read from the metas) for
    those a resumed run found, whose metrics orbax does not know."""
    earlier: dict[int, dict[str, float]]

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        scored = {c.step: c.metrics if c.metrics is not None else self.earlier.get(c.step, {})
                  for c in checkpoints}
        names = {name for s in scored.values() for name in s}
        best = {min((s[name], step) for step, s in scored.items() if name in s)[1] for name in names}
        return [c.step in best for c in checkpoints]


def scores(meta: dict) -> dict[str, float]:
    """The finite validation perplexities a meta holds, by name: ``val_ppl`` (of runs, their mean) and
    ``run_<k>``, run k's own: a checkpoint is kept while it is the best of any."""
    runs = {f"run_{k}": val_ppl(meta, k) for k in range(len(meta.get("run_val_ppls", [])))}
    return {k: p for k, p in {"val_ppl": val_ppl(meta), **runs}.items() if p is not None}


def scores_by_step(workdir: Path) -> dict[int, dict[str, float]]:
    """``scores`` of each complete, readable checkpoint, by step."""
    found = {}
    for s in steps(workdir):
        try:
            found[s] = scores(read_meta(workdir, s))
        except DamagedCheckpoint:         # never the best
            continue
    return found


class Manager(ocp.CheckpointManager):
    """Orbax's manager, and the steps it saved that are not yet read back (``check_saved``); while it is
    open, orbax's tracebacks are left to its one-sentence errors."""

    def __init__(self, directory: Path, *args, **kwargs):
        self.unchecked: list[int] = []
        # Its tracebacks, and its notes on a step's metadata it reads there (as it starts, and as it saves
        # under load): rnnjax says what matters of either in one sentence.
        self._quiet = [orbax_logs.Tracebacks(), orbax_logs.StepMetadata(directory)]
        for quiet in self._quiet:
            logging.getLogger("absl").addFilter(quiet)
        try:
            super().__init__(directory, *args, **kwargs)
        except BaseException:
            self._unquiet()
            raise

    def _unquiet(self):
        for quiet in self._quiet:
            logging.getLogger("absl").removeFilter(quiet)

    def close(self):
        try:
            super().close()
        finally:
            self._unquiet()

    def __exit__(self, *exc):
        # A second signal in a multi-host run: not held by a save, which waits on the other processes (one
        # that failed in another process held it 20 minutes). A single process's finishes first.
        if getattr(exc[1], "at_once", False) and jax.process_count() > 1:
            self._unquiet()
            return None
        try:
            return super().__exit__(*exc)
        except Exception:           # closed by an error: that one says what stopped the run, not a save's
            if exc[0] is None:
                raise


KEEP = 3        # the latest checkpoints a run keeps, beside the best and each run's own best


def manager(directory: str | Path, *, keep: int = KEEP, earlier: dict[int, dict[str, float]] | None = None
            ) -> Manager:
    """A manager keeping the latest ``keep`` checkpoints and the best by ``val_ppl`` (and each run's), the
    checkpoints found in ``directory`` counted with their ``earlier`` perplexities (``scores_by_step``)."""
    preservation = policies.AnyPreservationPolicy([policies.LatestN(keep), _Lowest(dict(earlier or {}))])
    options = ocp.CheckpointManagerOptions(preservation_policy=preservation, todelete_subdir=REMOVING)
    orbax_logs.quiet()
    try:
        return Manager(Path(directory).absolute(), options=options, item_names=("state", "meta"))
    except (ValueError, TypeError, KeyError) as e:      # as orbax parses each step's own metadata
        raise CheckpointError(f"Orbax cannot open the checkpoints in {directory} ({reason(e)}); a step's "
                              "_CHECKPOINT_METADATA file may be damaged: move that step out of the folder, "
                              f"or use a new {spelt('workdir')}.") from None


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
                      metrics=scores(meta) or None, force=True)
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
        if missing and jax.process_index() > 0:    # process 0 finishes each save: not in this host's view
            raise CheckpointError(f"Saving step {step} to {mngr.directory}: this process "
                                  f"({jax.process_index()}) does not see what process 0 wrote there "
                                  f"({folder} lacks {', '.join(missing)}): its save failed (process 0 says "
                                  "why), or the processes do not share one workdir folder (a network file "
                                  "system), as those of a multi-host run must, each seeing a copy.")
        if missing:
            e = FileNotFoundError(f"{folder} lacks {', '.join(missing)} after its save")
            raise _save_failed(mngr, step, e) from None
    mngr.unchecked.clear()
    if jax.process_index() == 0:                # the lock's holder; orbax's primary host drops them
        remove_dropped(Path(mngr.directory))    # the checkpoints the policy dropped as these saved


def check_failed(mngr: Manager) -> None:
    """``CheckpointError`` if a save has failed already, not waiting for those in flight: at each epoch's end,
    so that a failed save (a full disk) stops the run then, not at the next save."""
    try:
        mngr.check_for_errors()
    except Exception as e:
        raise _save_failed(mngr, None, e) from None


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
    if jax.process_count() > 1 and ("Gloo" in str(e) or isinstance(e, jax.errors.JaxRuntimeError)):
        # a peer killed in the save's collective: its disk is not the cause
        return CheckpointError(f"Saving {what} to {directory} failed ({reason(e)}): another process of the "
                               f"multi-host run stopped or failed; training stopped and {last}. Start every "
                               "process again to resume.")
    return CheckpointError(f"Saving {what} to {directory} failed ({reason(e)}); training stopped and "
                           f"{last}. Free space (or fix the cause) and {again()} to resume.")


def write_config(workdir: Path, config: Config, vocab: Vocab, runs: list[Config] | None = None,
                 text: str | None = None, init_from: dict | None = None) -> None:
    """``config.json`` for people and tools; the checkpoints carry their own copy. ``text``: the file a
    run's own text was read from (a resume asks for it again: it names it); ``init_from``: the checkpoint
    a fine-tuned run started from (``Restored.address``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    content = {"config": config.to_json(), "vocab": vocab.to_json()}
    if runs:
        content["runs"] = [c.to_json() for c in runs]
    if text is not None:
        content["text"] = text
    if init_from is not None:
        content["init_from"] = init_from
    workdir_lib.write_atomically(workdir / CONFIG, json.dumps(content, indent=1) + "\n")
