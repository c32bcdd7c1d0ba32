"""A checkpoint's arrays read back and checked: ``restore_state``, which a resume and ``restore`` share.

It reads one checkpoint's files without a manager (which would read every
checkpoint's metadata first, a FIFO's too), as host arrays shaped like a
target, and checks each against the checksums its meta holds: what cannot be
read, or differs from what was saved, is a ``DamagedCheckpoint``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from rnnjax import orbax_logs, workdir as workdir_lib
from rnnjax.stored import PARAMS, DamagedCheckpoint, check_fits, not_read, read_meta, state_mismatch


def restore_state(source: ocp.CheckpointManager | Path, step: int, target: Any, meta: dict | None = None,
                  params_only: bool = False) -> Any:
    """The saved state in ``source`` (a manager, or its directory), as host arrays shaped and typed like
    ``target``, its checksums (in ``meta``, read and checked unless given) verified: ``DamagedCheckpoint``
    if it cannot be read or any array differs from what was saved. It reads that checkpoint's files only
    (a manager would read every checkpoint's metadata first, a FIFO's too). ``params_only``: its params
    alone, whatever optimizer state it holds (what inference needs)."""
    directory = Path(getattr(source, "directory", source)).absolute()     # orbax takes absolute paths only
    meta = read_meta(directory.parent, step) if meta is None else meta
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    orbax_logs.quiet()
    check_fits(meta, abstract, directory.parent, step, read_saved=True, params_only=params_only)
    expected = meta["checksums"]
    if params_only:             # the params' checksums, their paths as in the params' own tree
        abstract = abstract.params
        expected = {k[len(PARAMS) - 1:]: v for k, v in expected.items() if k.startswith(PARAMS)}
    try:
        state = jax.device_get(_read(directory / str(step) / "state", abstract, params_only))
    except Exception as e:
        if not params_only and "tree structures do not match" in str(e):   # leafless parts (EmptyState)
            where = f"The checkpoint at step {step} in {directory}"
            raise state_mismatch(where, "its tree differs") from None
        raise not_read(step, directory, "cannot be restored", e) from None
    shapes = jax.tree.map(np.shape, abstract)
    if jax.tree.structure(state) != jax.tree.structure(abstract) or jax.tree.map(np.shape, state) != shapes:
        raise DamagedCheckpoint(step, directory, "is damaged: its arrays do not fit the model its meta "
                                "describes")
    bad = workdir_lib.verify(state, expected)
    if bad:
        raise DamagedCheckpoint(step, directory, f"is damaged: {len(bad)} array(s) fail their checksums "
                                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    return state


def _read(path: Path, abstract: Any, params_only: bool) -> Any:
    """The arrays at ``path`` (a saved state), as ``abstract``: the whole state, or its params alone."""
    # This process alone: orbax's default waits for every process of a multi-host run after a read, which
    # one process restoring for inference, or processes that found other steps damaged, never all reach.
    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    if not params_only:
        try:
            with ocp.StandardCheckpointer(multiprocessing_options=alone) as checkpointer:
                return checkpointer.restore(path, abstract)
        except FileNotFoundError:
            if (path / "_METADATA").exists():
                raise
        # orbax's tree metadata lost: read by abstract's tree, as inference reads params (checksums follow)
        item = flax.serialization.to_state_dict(abstract)
        with _pytree_checkpointer(alone) as checkpointer:
            out = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
                item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item)))
        return flax.serialization.from_state_dict(abstract, out)
    item = {"params": abstract}
    with _pytree_checkpointer(alone) as checkpointer:
        return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True))["params"]


def _pytree_checkpointer(options: ocp.options.MultiprocessingOptions) -> ocp.Checkpointer:
    """orbax's ``PyTreeCheckpointer``, which takes no multiprocessing options, with ``options``."""
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=options),
                            multiprocessing_options=options)
