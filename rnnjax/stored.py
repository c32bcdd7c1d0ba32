"""What a workdir holds, read without a manager: its checkpoints' steps and checked metas (its run's
settings: ``rnnjax.saved``).

Reading here creates nothing and enters no barrier across processes (making
an orbax manager does), so a process that only looks can call it. A
checkpoint is read only if every file in it is a regular file (a FIFO would
hang the reader) and its meta passes ``rnnjax.meta.problem``; a damaged one
is set aside into ``damaged/`` (``rnnjax.tidy``), never deleted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from rnnjax import meta as meta_lib, optimizers
from rnnjax.cells import registered_as, registered_own
from rnnjax.spelling import again, as_flags, leaf_types, said_type

SUBDIR = "checkpoints"
DAMAGED = "damaged"          # where a resumed run sets damaged checkpoints aside
PARAMS = ".params["          # how the paths of a saved TrainState's parameters begin (its checksums')
CONFIG = "config.json"       # a run's settings, for people and tools (rnnjax.checkpoint.write_config)
METRICS, PLOT = "metrics.jsonl", "ppl.png"      # its epochs' records and their plot (rnnjax.metrics)
STEPS = "steps.jsonl"        # its steps' records (rnnjax.step_lines)


class CheckpointError(RuntimeError):
    """A workdir or checkpoint that cannot be used as asked."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint that cannot be read, or whose arrays fail their checksums; ``reason`` says which."""

    def __init__(self, step: int, directory: Path, reason: str, hint: str = ""):
        super().__init__(f"The checkpoint at step {step} in {directory} {reason}{'; ' * bool(hint)}{hint}.")
        self.step, self.directory, self.reason = step, directory, reason


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint this process may not read (its permissions): not damage, nothing set aside."""


def not_read(step: int, directory: Path, what: str, e: Exception) -> CheckpointError:
    """What to raise for a checkpoint that ``what`` ("cannot be read") because of ``e``: refused permission
    (orbax's wrapped too) is ``UnreadableCheckpoint``, anything else ``DamagedCheckpoint``."""
    cause, denied, missing = e, False, False
    while cause is not None and not denied:
        denied = isinstance(cause, PermissionError) or "PERMISSION_DENIED" in str(cause)
        missing = missing or isinstance(cause, FileNotFoundError)
        cause = cause.__cause__ or cause.__context__
    if missing and not denied:      # a folder it may not list: orbax says the files in it are missing
        failed = []
        for _ in os.walk(directory / str(step), onerror=failed.append):
            pass
        e = next((x for x in failed if isinstance(x, PermissionError)), e)      # the folder, said
        denied = isinstance(e, PermissionError)
    if denied:
        return UnreadableCheckpoint(f"The checkpoint at step {step} in {directory} {what} ({reason(e)}): it "
                                    f"is not damaged; fix its permissions and {again('try again')}.")
    return DamagedCheckpoint(step, directory, f"{what} ({reason(e)})")


class UnknownCell(CheckpointError, ValueError):
    """A run of a cell of one's own, read where that cell is not in ``rnnjax.cells.CELLS``: not damage.
    A ``ValueError`` too: the command line reads a workdir's settings among its argument checks."""

    def __init__(self, workdir: Path, cell: str, registered: Any = None, asked: str | None = None):
        made = registered if isinstance(registered, str) else "<the cell class>"    # as the meta says
        other = (f" The run asked for is of cell {asked!r}: a new run trains in another workdir."
                 if asked not in (None, cell) else "")      # a workdir mistyped, most likely
        super().__init__(f"{workdir} was trained with cell {cell!r}, which is not registered here: set "
                         f"rnnjax.CELLS[{cell!r}] = {made} before restoring or resuming it (on the "
                         f"command line: in a script that then calls experiments.timemachine.main()).{other}")
        self.cell, self.registered = cell, registered


class CellMismatch(CheckpointError):
    """A run restored with another cell registered under its cell's name: not damage."""


class StateMismatch(CheckpointError):
    """A checkpoint whose parameters fit but whose training state does not: another optimizer than its
    ``Config.optimizer`` makes here (``rnnjax.OPTIMIZERS``) or ``TrainState``; a resume needs the same,
    inference reads params."""


def state_mismatch(where: str, how: str) -> StateMismatch:
    inference = "--predict" if as_flags() else "restore"
    return StateMismatch(f"{where} holds another training state than this process makes ({how}): the run was "
                         "trained with another optimizer than its Config.optimizer makes here "
                         f"(rnnjax.OPTIMIZERS) or another TrainState; resume it with the same (a restore for "
                         f"inference, {inference}, reads its parameters alone).")


NEW_RUN = "a new run of the cell registered now needs a workdir of its own."


def check_fits(meta: dict, target: Any, workdir: Path, step: int, read_saved: bool = False,
               params_only: bool = False) -> None:
    """``CellMismatch`` unless ``target`` (the state a restore builds from the meta's config) has the
    parameters the checkpoint at ``step`` saved: by path (its meta's checksums name each) and, with
    ``read_saved``, by the shapes and dtypes orbax's metadata gives (for a cell not rnnjax's); before
    reading any array. What tells a cell of another class registered under the run's cell name (one of
    rnnjax's swapped for a user's, either way) from damage. ``StateMismatch`` unless the rest of the state
    (step, optimizer state) has its paths too; with ``params_only`` (inference) that is not looked at."""
    cell = meta["config"]["cell"]
    own = registered_own(cell)       # its arrays' shapes: another shape is damage
    kind = registered_as(cell)
    was = meta.get(meta_lib.REGISTERED)        # older metas do not say
    said = f" ({was})" if isinstance(was, str) else ""
    where, fix = (f"The checkpoint at step {step} in {Path(workdir) / SUBDIR}",
                  f"set rnnjax.CELLS[{cell!r}] to the cell class the run was trained with{said}; {NEW_RUN}")
    saved_paths = set(meta["checksums"])
    made = {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(target)[0]}
    differ = saved_paths ^ made
    if any(p.startswith(PARAMS) for p in differ):
        saved_paths, made = ({p for p in paths if p.startswith(PARAMS)} for paths in (saved_paths, made))
        raise CellMismatch(f"{where} holds other parameters than the cell registered here as {cell!r} "
                           f"({kind}) makes ({_differ(saved_paths, made)}): {fix}")
    if differ and not params_only:
        kept = [m[1] for p in saved_paths - made if (m := re.search(r"\.hyperparams\['(\w+)'\]$", p))]
        ints = optimizers.int_arguments(meta["config"]["optimizer"])
        if kept and len(kept) == len(differ) and set(kept) <= ints:     # clipped's rule since 2026-12-07
            inference = "--predict" if as_flags() else "restore"
            raise StateMismatch(f"{where} holds int arguments of its optimizer ({', '.join(sorted(kept))}) "
                                "in each run's state, as rnnjax kept them before 2026-12-07; it keeps them "
                                "in the function now (a size Python branches on): resume it with an rnnjax "
                                f"of then (a restore for inference, {inference}, reads its parameters "
                                "alone).")
        raise state_mismatch(where, _differ(saved_paths, made))
    saved = _saved_params(Path(workdir) / SUBDIR / str(step) / "state") if read_saved and not own else None
    had, makes = (leaf_types(saved), leaf_types(target.params)) if saved is not None else ({}, {})
    other = {k for k in makes if had.get(k) != makes[k]}
    if other:
        k = sorted(other)[0]
        raise CellMismatch(f"{where} holds parameters of other shapes or dtypes than the cell registered "
                           f"here as {cell!r} ({kind}) makes ({k}: {said_type(had.get(k))} saved, "
                           f"{said_type(makes[k])} made): {fix}")
    if was is not None and was != kind:      # the same parameters, made otherwise (a partial's arguments)
        raise CellMismatch(f"{where} was trained with rnnjax.CELLS[{cell!r}] = {was}, which is {kind} here: "
                           f"register the one it was trained with; {NEW_RUN}")


def _differ(saved: set[str], made: set[str]) -> str:
    """Which paths only the checkpoint has and which only the target, a few of each."""
    def some(paths):
        paths = sorted(paths)
        return ", ".join(paths[:2]) + (f" and {len(paths) - 2} more" if len(paths) > 2 else "")
    sides = (("saved, not made here", saved - made), ("made here, not saved", made - saved))
    return "; ".join(f"{what}: {some(paths)}" for what, paths in sides if paths)


def _saved_params(state_dir: Path) -> Any:
    """orbax's metadata (shapes, dtypes) of a checkpoint's saved params; ``None`` where it cannot be read
    (the restore then says what is wrong)."""
    handler = ocp.StandardCheckpointHandler()     # the item's: a checkpointer would warn of the step's
    try:
        return handler.metadata(state_dir.absolute()).tree["params"]
    except Exception:
        return None
    finally:
        handler.close()


def reason(e: Exception) -> str:
    """An exception in a few words: its type and first line (orbax's can run to dozens of lines)."""
    first = (str(e).strip().splitlines() or [""])[0]
    if len(first) > 160:        # cut between words ("Requested byte ra..." read as a word cut short)
        first = (first[:160].rsplit(" ", 1)[0] if " " in first[80:160] else first[:160]) + "..."
    return f"{type(e).__name__}: {first}"


def steps(workdir: Path) -> list[int]:
    """The workdir's complete checkpoints, in order; creates nothing. ``CheckpointError`` for a step folder
    orbax would misread (``0300`` is read as step 300, whose folder does not exist), and for a workdir that
    cannot be listed (a name too long for the system, a folder this process may not read)."""
    directory = Path(workdir) / SUBDIR
    try:
        if not directory.exists():
            return []
        check_folder(directory)
        for entry in directory.iterdir():
            if entry.name.isdigit() and (entry.name != str(int(entry.name)) or not entry.is_dir()):
                if not os.path.lexists(entry):  # removed since listed (a run writing there keeps its latest)
                    continue
                raise CheckpointError(f"{entry} is not a checkpoint rnnjax wrote (it names each by its step, "
                                      f"as {int(entry.name)}, a folder); move it out of {directory}.")
        return sorted(ocp.utils.checkpoint_steps(directory))      # orbax's: in the folder's listing order
    except OSError as e:
        raise unreadable_workdir(workdir, e) from None


def check_folder(directory: Path) -> None:
    """``CheckpointError`` if the checkpoints folder ``directory`` is there and is not a folder."""
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} is not a folder; move it aside to train or restore.")


def unreadable_workdir(workdir: Path, e: OSError) -> CheckpointError:
    """A workdir that cannot be listed, in one sentence, naming the folder in it that failed (a name too long
    for the system shown cut)."""
    def shown(path):
        return str(path) if len(str(path)) <= 200 else f"{str(path)[:100]}..."
    where = f"{shown(e.filename)}: " if e.filename and Path(e.filename) != workdir else ""
    return CheckpointError(f"The workdir {shown(workdir)} cannot be read ({where}{e.strerror or e}).")


def latest_step(workdir: Path) -> int | None:
    """The step of the workdir's latest complete checkpoint, or ``None``."""
    return max(steps(workdir), default=None)


def _irregular(folder: Path) -> str | None:
    """The first thing in ``folder`` (recursively) that is neither a folder nor a regular file: a FIFO,
    a socket, a device or a link, which reading could hang on or leave the workdir for."""
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            mode = os.lstat(os.path.join(root, name)).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                return os.path.relpath(os.path.join(root, name), folder)
    return None


def read_meta(workdir: Path, step: int) -> dict:
    """The ``meta`` item (config, vocabulary, position) of the checkpoint at ``step``, checked
    (``rnnjax.meta.problem``): ``DamagedCheckpoint`` if it is not as saved, ``UnknownCell`` if it is of a
    cell not registered here; creates nothing."""
    directory = Path(workdir) / SUBDIR
    try:
        odd = _irregular(directory / str(step))
    except OSError as e:
        raise not_read(step, directory, "cannot be listed", e) from None
    if odd:
        raise DamagedCheckpoint(step, directory, f"holds {odd}, which is not a regular file or folder")
    try:
        meta = ocp.JsonCheckpointHandler().restore(directory / str(step) / "meta")
    except Exception as e:  # orbax raises many types for unreadable files
        raise not_read(step, directory, "cannot be read", e) from None
    cell = meta_lib.unregistered_cell(meta)
    if cell is not None:
        raise UnknownCell(Path(workdir), cell, meta.get(meta_lib.REGISTERED))
    newer = meta_lib.newer(meta)
    if newer:
        raise CheckpointError(f"The checkpoint at step {step} in {directory} was written by a newer rnnjax "
                              f"({newer}, which this one lacks): upgrade rnnjax to read it.")
    why = meta_lib.problem(meta, step) or _step_metadata(directory / str(step))
    if why:
        raise DamagedCheckpoint(step, directory, why)
    return meta


def _step_metadata(folder: Path) -> str | None:
    """What orbax's manager, which reads every step's ``_CHECKPOINT_METADATA`` as it opens, would fail on: a
    file of JSON it cannot take (one that is missing or not JSON it passes over), in a clause."""
    try:
        d = json.loads((folder / "_CHECKPOINT_METADATA").read_bytes())
    except (OSError, ValueError, RecursionError):      # RecursionError: nested thousands deep, as orbax
        return None                                     # would not parse either
    try:
        _deserialize(d)
    except Exception as e:              # ValueError, TypeError, KeyError: any value of the wrong type
        return f"has a _CHECKPOINT_METADATA that orbax cannot take ({reason(e)})"
    return None


def _deserialize(d: Any) -> None:
    try:        # orbax's own reader of a step's metadata (not public API: a dict where it moved)
        from orbax.checkpoint._src.metadata.step_metadata_serialization import deserialize
    except ImportError:
        if not isinstance(d, dict):
            raise ValueError(f"not a dict but a {type(d).__name__}") from None
        return
    absl = logging.getLogger("absl")
    quiet, absl.disabled = absl.disabled, True      # its note on a key it does not know, at every read
    try:
        deserialize(d)
    finally:
        absl.disabled = quiet


def val_ppl(meta: dict, run: int | None = None) -> float | None:
    """A meta's finite validation perplexity: of ``run`` where it has each run's (``run_val_ppls``), else
    the one it has (of runs, their mean); else ``None``."""
    if run is not None and "run_val_ppls" in meta:
        p = meta["run_val_ppls"][run] if 0 <= run < len(meta["run_val_ppls"]) else None
    else:
        p = meta.get("val_ppl")
    return p if isinstance(p, (int, float)) and math.isfinite(p) else None
