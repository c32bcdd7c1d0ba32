"""What the processes of a multi-host run check they share before they train.

Each must train the same runs, from the same checkpoint, on the same text,
over as many devices, saving alike: else they run other programs, and the
first collective hangs (gloo's timeout is 30 minutes, deaf to signals) or
aborts the process. ``check_agreed`` compares them through jax.distributed's
key-value store, which no such difference can hang, and names the first that
differs.
"""

from __future__ import annotations

import itertools
import json
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rnnjax.config import shown

# Seconds a process waits for the others to reach a check: they may read and tokenize a large text first.
TIMEOUT_S = 300
_CALLS = itertools.count()      # each check a key of its own: every process makes them in the same order


def check_agreed(what: dict[str, Any], timeout_s: float = TIMEOUT_S) -> None:
    """``ValueError`` in one sentence unless every process of this multi-host run has the same ``what``
    (names -> JSON values): the first name whose value differs, this process's and another's.
    ``TimeoutError`` if another has not given its own within ``timeout_s`` (polled: a signal is handled as
    it waits). Nothing in a single process."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed        # the store orbax uses too; JAX gives no public handle on it
    client, me, n = distributed.global_state.client, jax.process_index(), next(_CALLS)
    others = [k for k in range(jax.process_count()) if k != me]
    mine = json.loads(json.dumps(what, default=str))
    client.key_value_set(f"rnnjax/agree/{n}/{me}", json.dumps(mine))
    deadline = time.monotonic() + timeout_s
    differ = None
    for other in others:
        theirs = json.loads(_wait_for(client, f"rnnjax/agree/{n}/{other}", other, deadline, timeout_s))
        name = next((name for name, value in mine.items() if theirs.get(name) != value), None)
        if name is not None and differ is None:
            differ = (f"The processes of this multi-host run were given other settings: {name} "
                      f"{_said(mine[name])} here (process {me}), {_said(theirs.get(name))} in process "
                      f"{other}; give every process the same flags and the same --workdir path.")
    if differ:      # every process finds it: they leave the run together, else the first to exit (process
        jax.distributed.shutdown()      # 0 serves the store) aborts the others in C++ before they say why
        raise ValueError(differ)


def _wait_for(client: Any, key: str, process: int, deadline: float, timeout_s: float) -> str:
    while True:
        try:
            return client.key_value_try_get(key)
        except jax.errors.JaxRuntimeError:          # not given yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"Process {process} of the multi-host run did not reach the point this "
                                   f"one did within {shown(timeout_s)} s (is it running another command?); "
                                   "this one stops.") from None
            time.sleep(0.05)


def _said(value: Any) -> str:
    """A value as a flag takes it: a list comma-separated, ``None`` as not given."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "not given" if value is None else str(value)


def of_run(p: Any, data: Any, checkpoint_every: int, keep: int) -> dict[str, Any]:
    """What the processes training the planned run ``p`` (``rnnjax.start.Plan``) on ``data`` must share;
    computed only where there are several."""
    if jax.process_count() == 1:
        return {}
    configs = list(p.runs) or [p.config]
    tokens = np.ascontiguousarray(data.tokens)
    vocab = json.dumps(data.vocab.to_json(), sort_keys=True).encode()
    resumed = "none (a new run)" if p.step is None else f"step {p.step}"
    return {"runs trained together": len(p.runs),
            **{f"run {k}'s {name}" if p.runs else name: v for k, c in enumerate(configs)
               for name, v in c.to_json().items()},
            "workdir": str(Path(p.workdir).absolute()), "checkpoint resumed": resumed,
            "the text's tokens": f"{tokens.size} (CRC-32 {zlib.crc32(tokens):08x})",
            "vocabulary": f"CRC-32 {zlib.crc32(vocab):08x}", "devices of each process": p.dp.num_local,
            "checkpoint_every": checkpoint_every, "keep": keep}
