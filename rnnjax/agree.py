"""What the processes of a multi-host run check they share before they train.

Each must train the same runs, from the same checkpoint, on the same text,
over as many devices, saving alike: else they run other programs, and the
first collective hangs (gloo's timeout is 30 minutes, deaf to signals) or
aborts the process. ``check_agreed`` compares them through jax.distributed's
key-value store, which no such difference can hang, and names the first that
differs. Training, they agree on a stop (``stop_by_any``).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import json
import os
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from rnnjax.config import Config
from rnnjax.spelling import shown, spelt
from rnnjax.stops import LostProcess, StoppedByAnother

# Seconds a process waits for the others to reach a check: they may read and tokenize a large text first.
TIMEOUT_S = 300
# Processes that would resume other checkpoints from one workdir path (RESUMED differs): a folder of each
# host's own.
RESUMED = "checkpoint resumed"
SHARED = "every process must see one workdir folder, shared by every host (a network file system), not a copy"
_made = [0]     # the checks this process made: each has keys of its own, every process making them in turn
_left: set[int] = set()     # the checks it left before (``leave``): said once


def check_agreed(what: dict[str, Any], timeout_s: float = TIMEOUT_S) -> None:
    """``ValueError`` in one sentence unless every process of this multi-host run has the same ``what``
    (names -> JSON values): the first name whose value differs, this process's and another's; or if
    another stopped on an error of its own first (``leave``). ``TimeoutError`` if another has not come
    within ``timeout_s`` (polled: a signal is handled as it waits). Nothing in a single process."""
    client = _client()
    if client is None:
        return
    me, n = jax.process_index(), _made[0]
    if n == 0:      # run before jax.distributed's own shutdown, registered earlier: the store still serves
        atexit.register(_say_ended, client, me)
    _made[0] += 1
    others = [k for k in range(jax.process_count()) if k != me]
    mine = json.loads(json.dumps(what, default=str))
    client.key_value_set(f"rnnjax/agree/{n}/given/{me}", json.dumps(mine))
    deadline = time.monotonic() + timeout_s
    differ = None
    for other in others:
        theirs = json.loads(_wait_for(client, n, "given", other, deadline, timeout_s))
        name = next((name for name, value in mine.items() if theirs.get(name) != value), None)
        if name is not None and differ is None:
            ours, yours = _setting(name, mine[name]), _setting(name, theirs.get(name), named=False)
            fix = (SHARED if name == RESUMED else
                   "give every process the same settings and the same workdir path")
            differ = (f"The processes of this multi-host run were given other settings: {ours} here (process "
                      f"{me}), {yours} in process {other}; {fix}.")
    # Each goes on once every other has read its settings: one that gave up waiting is never read as agreed.
    client.key_value_set(f"rnnjax/agree/{n}/read/{me}", "")
    for other in others:
        _wait_for(client, n, "read", other, deadline, timeout_s)
    if differ:      # every process finds it: they leave together, else the first to exit (process 0 serves
        _shut_down()        # the store) aborts the others in C++ before they say why
        raise ValueError(differ)


def leave(wait_s: float = 2.0) -> None:
    """Tells the others of a multi-host run, waiting at their next check, that this process stops on an
    error of its own: they stop too, in one sentence. Where they all say they read it (or left too) within
    ``wait_s``, all leave the run together (else, the others being past any check, this one just exits).
    Once per check: leaving again before the next does nothing."""
    client, n, me = _client(), _made[0], jax.process_index()
    if client is None or n in _left:
        return
    _left.add(n)
    client.key_value_set(f"rnnjax/agree/{n}/left/{me}", "")
    others = [k for k in range(jax.process_count()) if k != me]
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        # each other process read it, or left on an error too: none waits at a check
        if all(_has(client, f"rnnjax/agree/{n}/read-left/{k}") or _has(client, f"rnnjax/agree/{n}/left/{k}")
               for k in others):
            _shut_down()
            return
        time.sleep(0.05)


@contextlib.contextmanager
def leaving_on_error() -> Iterator[None]:
    """A block whose error (or Ctrl-C), in one process of a multi-host run, stops the others at the check
    it would have come to next (``leave``, waiting for them as long as a check would: one that exited first
    would take the run's coordination service, which process 0 serves, with it). Not once the block has
    made a check: the others are past it (an early stop raised in every process leaves them in the run)."""
    made = _made[0]
    try:
        yield
    except (Exception, KeyboardInterrupt):
        if _made[0] == made:
            leave(wait_s=TIMEOUT_S)
        raise


def leaves_on_error(f: Callable) -> Callable:
    """``f`` in ``leaving_on_error``: a library's ``fit`` as the command's ``main``."""
    @functools.wraps(f)
    def wrapped(*args, **kwargs):
        with leaving_on_error():
            return f(*args, **kwargs)
    return wrapped


def check_in_run() -> None:
    """``ValueError`` in one sentence if this process has left its multi-host run (``leave``): JAX's
    collectives and orbax's saves would fail as if the checkpoints were damaged."""
    if jax.process_count() > 1 and _client() is None:
        raise ValueError(f"This process has left its multi-host run (process {jax.process_index()} of "
                         f"{jax.process_count()}, after an error): start every process of the run again.")


def _client() -> Any:
    """jax.distributed's client (the key-value store orbax uses too: JAX gives no public handle on it);
    ``None`` in a single process, or once it has left the run."""
    if jax.process_count() == 1:
        return None
    from jax._src import distributed
    return distributed.global_state.client


def leave_together() -> None:
    """As the processes of a multi-host run that stopped at the same call exit: each waits for the others
    at jax.distributed's shutdown, so that none outlives process 0, which serves the run (its client would
    abort in C++ as it exits). Nothing in a single process."""
    if _client() is not None:
        _shut_down()


def _shut_down() -> None:
    """jax.distributed.shutdown: it waits for every process to call it, so that all leave the run alive."""
    try:
        jax.distributed.shutdown()
    except Exception:       # another already gone: this one exits anyway
        pass


def _say_ended(client: Any, me: int) -> None:
    """Tells the others, at their checks, that this process's program has ended (it waits at JAX's shutdown):
    one that came to a check alone (a second ``fit`` in one process) stops at once, not at the timeout."""
    with contextlib.suppress(Exception):        # the run left already, or the store gone
        client.key_value_set(f"rnnjax/agree/ended/{me}", "")


def _has(client: Any, key: str) -> bool:
    try:
        client.key_value_try_get(key)
    except jax.errors.JaxRuntimeError:          # not given (yet)
        return False
    return True


def _wait_for(client: Any, n: int, what: str, process: int, deadline: float, timeout_s: float) -> str:
    me = jax.process_index()
    while True:
        try:
            return client.key_value_try_get(f"rnnjax/agree/{n}/{what}/{process}")
        except jax.errors.JaxRuntimeError:          # not given yet
            pass
        if _has(client, f"rnnjax/agree/{n}/left/{process}"):        # it stopped on an error of its own
            client.key_value_set(f"rnnjax/agree/{n}/read-left/{me}", "")
            _shut_down()
            raise ValueError(f"Process {process} of the multi-host run stopped (it says why); this one stops "
                             "too.")
        ended = _has(client, f"rnnjax/agree/ended/{process}")     # and not given as this looked: read again
        if ended and not _has(client, f"rnnjax/agree/{n}/{what}/{process}"):
            raise ValueError(f"Process {process} of the multi-host run has ended its program, and waits for "
                             "this one to end: every process runs the same training, or none does; this one "
                             "stops.")
        if _has(client, f"rnnjax/agree/{n}/gave-up/{process}"):
            raise TimeoutError(f"Process {process} of the multi-host run stopped waiting for this one; this "
                               "one stops too.")
        if time.monotonic() > deadline:
            client.key_value_set(f"rnnjax/agree/{n}/gave-up/{me}", "")     # a late one stops, never trains
            raise TimeoutError(f"Process {process} of the multi-host run did not reach the point this one "
                               f"did within {shown(timeout_s)} s (is it running another command?); this one "
                               "stops.")
        time.sleep(0.05)


def _said(value: Any) -> str:
    """A value as a flag takes it: a list comma-separated, ``None`` as not given."""
    if isinstance(value, list):
        return ",".join(map(shown, value))
    return "not given" if value is None else shown(value)


# What the processes agree on that their user set, beside Config's fields: fit's arguments (the command's
# flags), named as given.
_ARGUMENTS = {"devices", "checkpoint_every", "keep", "workdir", "run", "best"}


def _is_set(name: str) -> bool:
    field = name.rpartition("'s ")[2]       # "run 1's lr": run 1's field
    return field in _ARGUMENTS or field in {f.name for f in dataclasses.fields(Config)}


def _setting(name: str, value: Any, named: bool = True) -> str:
    """``batch_size=16`` (``--batch-size 16`` as a command's flag), ``run 1's lr=2``; another thing the
    processes agree on as ``name value``, or its value alone where not ``named`` (a setting is always named:
    ``--no-bidirectional`` is its value)."""
    if not _is_set(name):
        return f"{name} {_said(value)}" if named else _said(value)
    run, sep, field = name.rpartition("'s ")
    if value is None or isinstance(value, list):
        return f"{run}{sep}{spelt(field)} {_said(value)}"
    return f"{run}{sep}{spelt(field, value)}"


def of_configs(configs: list, together: bool) -> dict[str, Any]:
    """The settings of the runs ``configs`` (trained ``together``, or one), by field."""
    return {"runs trained together": len(configs) if together else 0,
            **{f"run {k}'s {name}" if together else name: v for k, c in enumerate(configs)
               for name, v in c.to_json().items()}}


def of_training(configs: list, together: bool, workdir: Any, devices: int, checkpoint_every: int,
                keep: int) -> dict[str, Any]:
    """What the processes training ``configs`` must share, known before the text is read: the runs, the
    workdir's path, each process's device count and how it saves (the CLI checks it as they join)."""
    return {**of_configs(configs, together), "workdir": os.path.abspath(workdir),
            "devices": devices, "checkpoint_every": checkpoint_every,
            "keep": keep}


def of_run(p: Any, data: Any, params: Any, checkpoint_every: int, keep: int) -> dict[str, Any]:
    """What the processes training the planned run ``p`` (``rnnjax.start.Plan``) on ``data`` from ``params``
    (on the host) must share; computed only where there are several."""
    if _client() is None:
        return {}
    tokens = np.ascontiguousarray(data.tokens)
    vocab = json.dumps(data.vocab.to_json(), sort_keys=True).encode()
    start = 0
    for leaf in jax.tree.leaves(params):        # given to fit, or made by each process: the same
        start = zlib.crc32(np.ascontiguousarray(leaf), start)
    resumed = "none (a new run)" if p.step is None else f"step {p.step}"
    return {**of_training(list(p.runs) or [p.config], bool(p.runs), p.workdir, p.dp.num_local,
                          checkpoint_every, keep),
            RESUMED: resumed, "the parameters it starts from": f"CRC-32 {start:08x}",
            "the text's tokens": f"{tokens.size} (CRC-32 {zlib.crc32(tokens):08x})",
            "vocabulary": f"CRC-32 {zlib.crc32(vocab):08x}"}


def spans_processes() -> bool:
    """Whether this is a multi-host run, whose processes agree on a stop."""
    return jax.process_count() > 1


def on_stop(caught: int | None, raised: Exception | None, step: int) -> tuple[int | None, Exception | None]:
    """The signal and the ``progress`` exception a training loop stops on at ``step``: its own; in a
    multi-host run, whose save is collective, those any process had at this call (``stop_by_any``), so
    that all save the same step and stop."""
    if not spans_processes():
        return caught, raised
    signum, by = stop_by_any(caught, raised is not None)
    if raised is None and by is not None:
        raised = StoppedByAnother(f"Process {by} of the multi-host run stopped early at step {step} (its "
                                  "progress raised; it says why): this one saved that step and stops too.")
    return signum, raised


def stop_by_any(signum: int | None, raised: bool = False) -> tuple[int | None, int | None]:
    """``(the signal any process of a multi-host run caught, the lowest-numbered's; the first process whose
    progress raised)``, ``None`` for none, the same on each: one small collective a call, one after
    validation, one after the epoch's progress and one as the run ends."""
    from jax.experimental import multihost_utils
    try:
        gathered = multihost_utils.process_allgather(np.array([signum or 0, int(raised)], np.int32))
    except jax.errors.JaxRuntimeError as e:       # a peer gone: stop now, not at JAX's heartbeat's abort
        said = next(iter(str(e).splitlines()), "")[:200]
        raise LostProcess(f"Another process of the multi-host run stopped or failed ({said}); this one stops "
                          "too; start every process again to resume.") from None
    gathered = np.asarray(gathered).reshape(-1, 2)
    caught = [int(s) for s in gathered[:, 0] if s]
    by = [k for k, r in enumerate(gathered[:, 1]) if r]
    return (caught[0] if caught else None), (by[0] if by else None)
