"""A process's backend settings: CPU devices, malloc, Python's garbage collector, the compilation cache.

They (``use_cpu_cores``, ``keep_freed_memory``, ``collect_less``,
``enable_compilation_cache``) are chosen by the entry points before JAX
starts; importing rnnjax never does. What each program is compiled with is
``rnnjax.xla``'s. Why each one pays, with measurements:
``docs/performance.md``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import gc
import numbers
import os
import platform
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from rnnjax import precision
from rnnjax.source import cache_dir
from rnnjax.spelling import not_utf8, said


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_device_count_chosen() -> bool:
    """Whether the CPU device count was chosen (``use_cpu_cores``, ``$JAX_NUM_CPU_DEVICES``, a count in
    ``$XLA_FLAGS``, ``jax_num_cpu_devices`` set in code) rather than left at JAX's default of one."""
    return (jax.config.jax_num_cpu_devices != -1
            or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""))


def use_cpu_cores(batch_size: int, devices: int | None = None) -> int | None:
    """Makes each CPU core a JAX device, so that data parallelism uses all of them.

    XLA:CPU runs one program's ops one after another, mostly on one core;
    ``pmap`` over one CPU device per core runs the per-device programs side by
    side. The count is ``devices`` if given and the cores this process may use
    allow it (the training then says whether it divides the batch), else the
    largest divisor of ``batch_size`` not above those cores. An explicit choice
    wins: ``$JAX_NUM_CPU_DEVICES``, a device count in ``$XLA_FLAGS``, or
    ``jax_num_cpu_devices`` set in code. Call it before JAX runs anything.
    Returns the count set, or ``None`` where it left the setting alone (already
    chosen; or JAX already started, with a ``RuntimeWarning``). ``ValueError``
    for a ``batch_size`` or ``devices`` that is not a whole number >= 1, and
    for such a ``$JAX_NUM_CPU_DEVICES`` (or ``jax_num_cpu_devices``), which
    JAX would take as one device or fail on as it starts.
    """
    for name, value in (("batch_size", batch_size), ("devices", devices)):
        if value is not None and not _whole_number(value):
            raise ValueError(f"use_cpu_cores: {name} must be a whole number >= 1, got {said(value)}.")
    check_cpu_device_count()
    if cpu_device_count_chosen():
        return None
    cores = available_cores()
    count = devices if devices is not None and devices <= cores else \
        max(n for n in range(1, cores + 1) if batch_size % n == 0)
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:            # JAX has started its backends: too late to change
        warnings.warn(f"use_cpu_cores({batch_size}) left the CPU device count as it is: JAX has already "
                      "started (call it before JAX runs anything).", RuntimeWarning, stacklevel=2)
        return None
    return count


MAX_CPU_DEVICES = 2048      # past it a CPU computation fails ("multiprocess"); JAX makes them as it starts


def check_cpu_device_count() -> None:
    """``ValueError`` where ``$JAX_NUM_CPU_DEVICES``, ``jax_num_cpu_devices`` or ``$XLA_FLAGS``' device count
    is not a whole number from 1 to ``MAX_CPU_DEVICES`` (JAX's -1, unset, aside): JAX takes 0 and below as
    one device, or fails to start its CPU backend; a million keep a CPU busy, deaf to signals, until memory
    runs out."""
    typed, count = os.environ.get("JAX_NUM_CPU_DEVICES"), jax.config.jax_num_cpu_devices
    asked = [("$JAX_NUM_CPU_DEVICES", _as_int(typed), repr(typed))] if typed is not None else []
    # XLA's own flag, each one given (XLA parses them all): 0 fails JAX's start in a traceback, "abc" or
    # "1_0" abort the process in XLA's usage text; XLA takes '"4"' and '+4'
    for typed in re.findall(r"--xla_force_host_platform_device_count=(\S*)", os.environ.get("XLA_FLAGS", "")):
        digits = typed.strip("\"'")           # XLA's flags parser drops quotes, even one
        asked.append(("$XLA_FLAGS's --xla_force_host_platform_device_count",
                      int(digits) if re.fullmatch(r"\+?[0-9]+", digits) else None, repr(typed)))  # not ٤
    for name, value, shown in asked + ([("jax_num_cpu_devices", count, None)] if count != -1 else []):
        if not (_whole_number(value) and value <= MAX_CPU_DEVICES):
            raise ValueError(f"{name} must be a whole number from 1 to {MAX_CPU_DEVICES} (the CPU devices "
                             f"JAX makes), got {shown or value}.")


def start() -> str:
    """Starts JAX's backend and names it; ``ValueError`` in one sentence where ``$JAX_PLATFORMS`` asks for
    one this machine does not have (JAX raises a RuntimeError, or for ``cuda`` an AssertionError), the
    CPU device count is one JAX fails on (``check_cpu_device_count``), or ``$JAX_DEFAULT_MATMUL_PRECISION``
    an algorithm it does not compute (``precision.check_ambient``). Not in a multi-host run before it
    joins: ``jax.distributed`` must start first."""
    check_cpu_device_count()
    try:
        name = jax.default_backend()
    except (RuntimeError, AssertionError) as e:
        asked = os.environ.get("JAX_PLATFORMS")
        if not asked:
            raise
        why = _no_gpu_plugin(asked) or str(e).split(" (set JAX_PLATFORMS")[0].rstrip(". ")
        why = why or "it does not start"
        raise ValueError(f"$JAX_PLATFORMS={said(asked)} asks for a backend JAX cannot start here ({why}); "
                         "leave it unset to take the one this machine has.") from None
    precision.check_ambient()
    return name


def _no_gpu_plugin(asked: str) -> str | None:
    """Why the GPU backend ``asked`` for cannot start where this JAX lacks its plugin (for cuda JAX says
    only ``AssertionError``); ``None`` where it has it or no GPU is asked for."""
    installed, asked = _installed_backends(), {p.strip().lower() for p in asked.split(",")}
    cuda = bool(asked & {"cuda", "gpu"}) and "cuda" not in installed
    rocm = bool(asked & {"rocm", "gpu"}) and "rocm" not in installed
    if not installed or "gpu" in asked and not (cuda and rocm):
        return None
    if cuda and rocm:
        return "this JAX has neither its CUDA nor its ROCm plugin: 'jax[cuda13]' adds CUDA's"
    if cuda:
        return "this JAX has no CUDA plugin: pip install 'jax[cuda13]' adds it"
    return "this JAX has no ROCm plugin" if rocm else None


def _installed_backends() -> list[str]:
    """The backends this JAX has a factory for (a private table: ``[]`` where it moved)."""
    try:
        from jax._src import xla_bridge
        return sorted(xla_bridge._backend_factories)
    except (ImportError, AttributeError):
        return []


def _as_int(text: str) -> int | None:
    try:
        return int(text)          # as JAX reads it
    except ValueError:
        return None


def _whole_number(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def enable_compilation_cache(path: str | os.PathLike | None = None, at_exit: Callable = atexit.register
                             ) -> Path:
    """JAX's persistent compilation cache, so that a second run skips XLA compilation.

    Default ``~/.cache/rnnjax/jax`` (under ``$RNNJAX_CACHE`` if set). Every
    compiled function is cached, however fast it compiled. ``OSError`` (the
    cache left off) where that folder cannot be made or written: a read-only
    home, say, where JAX would warn at every compilation instead. JAX's
    warnings about an entry it cannot read or write become one line on
    stderr, the entries cut short removed (``remove_damaged_entries``; by
    ``at_exit(f, *args)`` where a failed write leaves them: a process that
    ends by ``os._exit`` gives its own).
    """
    path = Path(path) if path is not None else cache_dir() / "jax"
    typed = not_utf8(path)
    if typed is not None:           # XLA's options fail on it at the first compile
        raise OSError(errno.EINVAL, "its path is not UTF-8", typed)
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, "it cannot be written", str(path))
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    shown = getattr(warnings.showwarning, "shown", warnings.showwarning)      # once, whatever the path
    warnings.showwarning = _cache_warnings(path, shown, at_exit)
    return path


# JAX never writes over a cache entry: one a full disk or a kill cut short is read, and warned about, by
# every later run.
CACHE_WARNINGS = ("Error reading persistent compilation cache entry",
                  "Error writing persistent compilation cache entry")


def _cache_warnings(path: Path, shown: Callable, at_exit: Callable = atexit.register) -> Callable:
    """A ``warnings.showwarning`` that says JAX's first cache warning in one line and removes the entries cut
    short: at once where one was read (what this run compiles again is then written whole), at exit where
    writes failed (a full disk fails each one). Any other warning goes to ``shown``."""
    said, removed = [], []

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not str(message).startswith(CACHE_WARNINGS):
            return shown(message, category, filename, lineno, file, line)
        why, reading = str(message).split(": ", 1)[-1][:200], str(message).startswith(CACHE_WARNINGS[0])
        if reading:
            removed.append(remove_damaged_entries(path))
        elif not said:
            at_exit(remove_damaged_entries, path)
        if not said:
            said.append(message)
            print(f"warning: JAX's compilation cache in {path} " + (
                f"held an entry it cannot read ({why}); removed {removed[-1]} cut short: it compiles afresh."
                if reading else f"cannot be written ({why}); entries cut short are removed as this process "
                                "ends."), file=sys.stderr)
    showwarning.shown = shown
    return showwarning


def remove_damaged_entries(path: Path) -> int:
    """Removes the entries of JAX's compilation cache in ``path`` that do not decompress (a write cut short);
    how many it removed."""
    try:        # JAX's own format, whichever compression it uses
        from jax._src.compilation_cache import decompress_executable
    except ImportError:
        return 0
    removed = 0
    for entry in path.glob("*-cache"):
        try:
            decompress_executable(entry.read_bytes())
        except OSError:             # removed meanwhile, or unreadable: not ours to judge
            continue
        except Exception:
            with contextlib.suppress(OSError):
                entry.unlink()
                removed += 1
                entry.with_name(entry.name.removesuffix("-cache") + "-atime").unlink(missing_ok=True)
    return removed


def collect_less() -> Callable[[], None]:
    """Has Python's garbage collector leave what is loaded so far alone (``gc.freeze``) and collect its
    youngest objects every 100,000 allocations rather than 700: tracing and lowering a program allocate
    much, and short runs (the test suite) spend a share of their CPU collecting (docs/performance.md).
    Returns what puts the thresholds back, for a process that goes on (``main`` called from Python)."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    return lambda: gc.set_threshold(*thresholds)


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4


def keep_freed_memory() -> bool:
    """Has glibc's malloc keep freed memory for reuse rather than hand it back to the system.

    Every XLA:CPU execution allocates its intermediates afresh; by default
    glibc maps blocks over 32 MB anew and unmaps them when freed, trims its
    heaps and drops a thread's empty heap, so each step faults its buffers'
    pages in again. With ``mmap`` off, no trimming and a 64 MB top pad (which
    keeps empty heaps) the next step reuses them. Blocks over 64 MB in a
    thread's arena are still mapped afresh. The process keeps its peak memory.
    Returns whether it took effect (``False`` where the C library is not glibc).
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return all([mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, 2**31 - 1),
                mallopt(M_TOP_PAD, 64 << 20)])
