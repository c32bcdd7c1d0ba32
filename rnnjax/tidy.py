"""What the workdir lock's holder moves and removes in the checkpoints folder, before a resume writes and
after each save: a damaged checkpoint set aside into ``damaged/`` (never deleted), the temporary folders of
saves that never finished, and the checkpoints orbax dropped (moved into ``REMOVING`` in one rename)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from rnnjax.stored import DAMAGED, SUBDIR, CheckpointError, reason

# Orbax saves a step into a folder of this name, renamed to the step once complete.
_UNFINISHED = re.compile(r"\d+\.orbax-checkpoint-tmp.*")
# Orbax moves a checkpoint it drops in here, one rename (a kill mid-delete left a half-deleted step that
# read as damaged); rnnjax deletes what is in it.
REMOVING = ".removing"


def set_aside(workdir: Path, step: int) -> Path | None:
    """Moves the damaged checkpoint ``step`` out of the checkpoints (never deleting it): where it went;
    ``None`` if it is gone already. ``CheckpointError`` in one sentence if it cannot be moved."""
    if not os.path.lexists(workdir / SUBDIR / str(step)):
        return None
    target = workdir / DAMAGED / str(step)
    suffix = 1
    while target.exists():
        target, suffix = workdir / DAMAGED / f"{step}.{suffix}", suffix + 1
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        (workdir / SUBDIR / str(step)).rename(target)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CheckpointError(f"The damaged checkpoint {workdir / SUBDIR / str(step)} cannot be moved to "
                              f"{target} ({reason(e)}); move it aside yourself.") from None
    return target


def remove_unfinished(workdir: Path) -> list[Path]:
    """Removes the temporary folders of saves that never finished (a full disk, a kill), before a resume
    writes anything: never a checkpoint, they may hold the space it needs. Only the lock's holder calls it
    (another run's save in progress looks the same); what cannot be removed stays, for orbax to retry."""
    directory = Path(workdir) / SUBDIR
    found = [p for p in directory.iterdir() if _UNFINISHED.fullmatch(p.name)] if directory.is_dir() else []
    found = [p for p in found if p.is_dir() and not p.is_symlink()]        # a link is never followed
    for folder in found:
        shutil.rmtree(folder, ignore_errors=True)
    remove_dropped(directory)
    return found


def remove_dropped(directory: Path) -> None:
    """Deletes the checkpoints orbax dropped (moved into ``REMOVING``) from ``directory``; only the lock's
    holder calls it."""
    dropped = Path(directory) / REMOVING
    if dropped.is_dir() and not dropped.is_symlink():
        shutil.rmtree(dropped, ignore_errors=True)
