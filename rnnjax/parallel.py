"""Data parallelism: one per-device step, ``jax.pmap``-ed over local devices.

The state is replicated; each global batch is split into equal per-device
shards (the padding mask keeps the ragged last batch exact). With one device
the same step function is plainly ``jax.jit``-ed. Across hosts, JAX's own
runtime (``jax.distributed``) joins the processes: each feeds its local devices
its slice of the global batch, and ``pmap``'s collectives span all of them.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import numbers
import socket
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from rnnjax import lock
from rnnjax.xla import CompiledPerShape
from rnnjax.spelling import as_flags, said, shown, spelt

AXIS = "batch"

# XLA's CPU runtime can deadlock in a collective when a pmapped program is
# queued many calls deep (never seen at this depth: docs/performance.md), so
# loops that dispatch without reading back wait for the call this many
# dispatches back (``wait_for_backlog``).
MAX_IN_FLIGHT = 8
# Seconds a multi-host run waits for all its processes to join (JAX's own default).
JOIN_TIMEOUT_S = 300


def wait_for_backlog(outputs: list) -> None:
    """Blocks until ``outputs[-1 - MAX_IN_FLIGHT]`` is computed: call after each dispatch.

    Keeps at most ``MAX_IN_FLIGHT`` calls queued. The host still runs that
    many steps ahead of the devices, so they never wait for it.
    """
    if len(outputs) > MAX_IN_FLIGHT:
        jax.block_until_ready(outputs[-1 - MAX_IN_FLIGHT])


# Processes of a multi-host run, at most: more hosts than any cluster has; JAX's coordinator allocates for
# each, and 2**31 - 1 of them take all of a machine's memory.
MAX_PROCESSES = 2 ** 16


def check_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None,
                      auto: bool = False, timeout_s: float = JOIN_TIMEOUT_S) -> None:
    """One sentence (``ValueError``) for multi-host settings that cannot start: all three or none, unless
    the cluster provides them (``auto``); a ``HOST:PORT``; a process id below the count; a wait."""
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    missing = [spelt(name) for name, value in given.items() if value is None]
    if not auto and 0 < len(missing) < 3:
        cluster = spelt("distributed") if as_flags() else "auto=True"
        raise ValueError(f"A multi-host run needs {spelt('coordinator')} HOST:PORT, {spelt('num_processes')} "
                         f"N and {spelt('process_id')} K (or {cluster} where SLURM or Open MPI provides "
                         f"them); missing {', '.join(missing)}.")
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        # ASCII only: a port of other digits ("１２３４") passes isdigit, and JAX's client crashes on it.
        if not (host and coordinator.isascii() and coordinator.isprintable() and port.isdigit()) \
                or any(c.isspace() or c in "/@" for c in coordinator):
            raise ValueError(f"{spelt('coordinator')} must be HOST:PORT, e.g. node0:1234, got "
                             f"{said(coordinator)}.")
        if not 0 < int(port) < 65536:
            raise ValueError(f"{spelt('coordinator')}'s port must be from 1 to 65535, got {port} (in "
                             f"{said(coordinator)}).")
        if ":" in host and not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"{spelt('coordinator')}: an IPv6 address goes in brackets, e.g. [::1]:1234, "
                             f"got {said(coordinator)}.")
    if num_processes is not None and not 1 <= num_processes <= MAX_PROCESSES:
        raise ValueError(f"{spelt('num_processes')} must be from 1 to {MAX_PROCESSES}, got {num_processes}.")
    if process_id is not None and not 0 <= process_id < (num_processes or process_id + 1):
        raise ValueError(f"{spelt('process_id')} must be from 0 to {spelt('num_processes')} - 1, got "
                         f"{process_id}.")
    if not 0 < timeout_s < 1e6:         # NaN fails this too
        raise ValueError(f"{_wait()} must be a number of seconds above 0 and below 1e6, "
                         f"got {shown(timeout_s)}.")


def _wait() -> str:
    return spelt("join_timeout") if as_flags() else "timeout_s"       # the argument's name here


def initialize_distributed(coordinator: str | None, num_processes: int | None,
                           process_id: int | None, timeout_s: float = JOIN_TIMEOUT_S) -> None:
    """``jax.distributed.initialize`` with the CPU's gloo collectives.

    Arguments left ``None`` are read by JAX from its environment (cluster
    auto-detection: SLURM, Open MPI, Cloud TPU, ...). Call before any JAX
    computation. JAX waits in C++ for every process to join, where no signal
    reaches Python and a timeout aborts the process with a stack dump: here it
    waits in a thread, so that a signal stops the wait, and after ``timeout_s``
    raises ``TimeoutError``. The process should then exit (``os._exit``): the
    abandoned wait still holds JAX's runtime. ``OtherCount`` (a ``ValueError``)
    if the run joined has another count of processes than ``num_processes``.
    """
    if coordinator is not None and process_id == 0:
        _check_port_free(coordinator)
    if coordinator is not None and process_id is not None:
        lock.claim_process(coordinator, process_id)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Its SIGTERM handler would take the signal from the loop's, which agrees on a stop itself.
    jax.config.update("jax_enable_preemption_service", False)
    failed = []

    def join():
        try:      # JAX's own timeout a minute later, past ours: it would abort the process.
            jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                       process_id=process_id, initialization_timeout=int(timeout_s) + 60)
        except BaseException as e:    # raised in the caller's thread
            failed.append(e)

    waiting = threading.Thread(target=join, name="jax.distributed.initialize", daemon=True)
    waiting.start()
    waiting.join(timeout_s)           # signal handlers run in this (the main) thread while it waits
    if waiting.is_alive():
        where = f"at {coordinator}" if coordinator else "that JAX found"
        raise TimeoutError(f"The multi-host run {where} did not start within {shown(timeout_s)} s: not every "
                           "one of its processes joined. Check the address and that all of them were started "
                           f"({_wait()} sets the wait).")
    if failed and isinstance(failed[0], ValueError):     # settings JAX found missing or wrong
        if "coordinator_address" in str(failed[0]):
            raise ValueError("JAX found no multi-host run to join (no cluster it knows, no "
                             f"$JAX_COORDINATOR_ADDRESS): give {spelt('coordinator')} HOST:PORT, "
                             f"{spelt('num_processes')} and {spelt('process_id')}.") from None
        raise ValueError(f"JAX cannot join the multi-host run: {failed[0]} Give {spelt('coordinator')} "
                         f"HOST:PORT, {spelt('num_processes')} and {spelt('process_id')}, or run where the "
                         "cluster sets them.") from None
    if failed:
        raise failed[0]
    if num_processes is not None and jax.process_count() != num_processes:    # process 0's count was taken
        raise OtherCount(f"This process was given {spelt('num_processes', num_processes)} and joined a "
                         f"multi-host run of {jax.process_count()} (process 0's count): give every process "
                         "the same count.")


class OtherCount(ValueError):
    """Joined a multi-host run of another count of processes than this one was given: it has joined (the
    others, at their check, are to be told it leaves)."""


def _check_port_free(coordinator: str) -> None:
    """``ValueError`` if the port process 0 serves the run on is taken here (JAX's server would crash the
    process, or join a second process 0 to a run and abort the first)."""
    port = int(coordinator.rpartition(":")[2])
    for family, everywhere in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):   # as JAX binds it
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((everywhere, port))
            return
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ValueError(f"Port {port} of {spelt('coordinator')} {coordinator} is in use on this "
                                 "machine, where process 0 serves the run: is another run's process 0 here? "
                                 "Choose a free port.") from None
            # else: no IPv6 here, try IPv4


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Compiles per-device steps for ``devices`` and moves data to and from them.

    ``devices`` are this process's devices; ``num_shards`` counts the devices of
    all processes, which is what the global batch is divided by.
    """
    devices: tuple[Any, ...]

    @classmethod
    def create(cls, num_devices: int | None = None) -> DataParallel:
        local = jax.local_devices()
        if num_devices is not None:
            whole = isinstance(num_devices, numbers.Integral) and not isinstance(num_devices, bool)
            has = f"this process has {len(local)} local device(s) ({local[0].platform})"
            if not whole or num_devices < 1:
                asked = spelt("devices", num_devices) if whole else f"devices={said(num_devices)}"
                raise ValueError(f"{asked}: {has}; give a whole number from 1 to {len(local)} (None: all of "
                                 "them).")
            if num_devices > len(local):
                more = (f"; JAX_NUM_CPU_DEVICES={num_devices} simulates more on a CPU (they share its cores)"
                        if local[0].platform == "cpu" else "")
                raise ValueError(f"{spelt('devices', num_devices)}: {has}{more}.")
            if jax.process_count() > 1 and num_devices != len(local):
                raise ValueError(f"{spelt('devices')} must be left at all local devices when training "
                                 "over several processes.")
            local = local[:num_devices]
        return cls(tuple(local))

    @property
    def num_local(self) -> int:
        return len(self.devices)

    @property
    def num_shards(self) -> int:
        return self.num_local * jax.process_count()

    @property
    def pmapped(self) -> bool:
        return self.num_shards > 1

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.num_shards:
            fewer = [spelt("devices", n) for n in range(self.num_local - 1, 0, -1) if batch_size % n == 0]
            fewer = (f", or train on fewer devices ({' or '.join(fewer[:3])})"
                     if jax.process_count() == 1 else "")
            raise ValueError(
                f"The batch size {batch_size} is not divisible by the number of devices "
                f"{self.num_shards}; choose a batch size that is a multiple of {self.num_shards}{fewer}.")

    def compile(self, step: Callable, donate_state: bool = False,
                compiler_options: dict[str, Any] | None = None) -> Callable:
        """``step(state, batch, axis_name=None)`` jitted, or pmapped with ``axis_name``.

        With ``compiler_options`` for XLA it is compiled ahead of time with them
        (``CompiledPerShape``): ``pmap`` takes none, and ``jax.jit`` around a
        pmap drops them. Across processes, where pmap's own call converts the
        arrays, they are left out.
        """
        donate = (0,) if donate_state else ()
        if not self.pmapped:
            compiled = jax.jit(step, donate_argnums=donate)
        else:
            # Across processes pmap spans every process's devices; ``devices`` would
            # have to list them all, identically everywhere, so leave it to pmap.
            devices = self.devices if jax.process_count() == 1 else None
            fun = functools.partial(step, axis_name=AXIS)
            compiled = jax.pmap(fun, axis_name=AXIS, devices=devices, donate_argnums=donate)
            weakref.finalize(compiled, _forget_pmapped, fun)
        if not compiler_options or jax.process_count() > 1:
            return compiled
        return CompiledPerShape(compiled, compiler_options)

    def shard(self, batch: Any) -> Any:
        """This process's slice of a global host batch, split over its devices."""
        if not self.pmapped:
            return batch
        p, n = jax.process_index(), jax.process_count()

        def split(x):
            rows = x.shape[0] // n
            x = x[p * rows:(p + 1) * rows]
            return x.reshape(self.num_local, rows // self.num_local, *x.shape[1:])
        return jax.tree.map(split, batch)

    def shard_stack(self, batches: Iterable) -> Any:
        """Host batches, each split as by ``shard``, stacked on a new axis after the device axis.

        What a function that scans over batches (``rnnjax.train.train_windows``, ``eval_steps``) takes.
        """
        axis = 1 if self.pmapped else 0
        return jax.tree.map(lambda *x: np.stack(x, axis), *[self.shard(b) for b in batches])

    def put(self, tree: Any) -> Any:
        """A host pytree already split over the devices (``shard``, ``shard_stack``) placed on them:
        for data that a loop passes again and again."""
        if not self.pmapped:
            return jax.device_put(tree, self.devices[0])
        return jax.device_put(tree, self._sharding())

    def _sharding(self) -> jax.sharding.NamedSharding:
        mesh = jax.sharding.Mesh(np.array(self.devices), (AXIS,))
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))

    def replicate(self, tree: Any) -> Any:
        """A host pytree placed on every device (a leading device axis when pmapped)."""
        if not self.pmapped:   # a copy: the caller's arrays outlive a step that donates these
            return jax.device_put(tree, self.devices[0], may_alias=False)
        return self.put(jax.tree.map(lambda x: np.stack([np.asarray(x)] * self.num_local), tree))

    def unreplicate(self, tree: Any) -> Any:
        """Replicated device pytree to host NumPy, one copy (e.g. the state, psum-ed metrics)."""
        if not self.pmapped:
            return jax.device_get(tree)
        # The first local shard, sliced on the host: indexing the device array
        # would dispatch a computation per leaf.
        return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


def _forget_pmapped(fun: Callable) -> None:
    """Drops what ``jax.pmap`` compiled for ``fun``, once its pmapped function is gone: JAX keeps it for the
    process (a cache whose entries hold their own keys), and a process that trains run after run would run
    out of memory maps (the kernel allows 65530; a run's programs hold hundreds). A JAX without that cache
    has nothing to drop."""
    try:
        from jax._src import pmap
        pmap._cached_shard_map.evict_function(fun)
    except (ImportError, AttributeError):
        pass
