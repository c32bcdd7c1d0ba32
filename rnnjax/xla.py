"""XLA's compiler options per program and shape, and programs compiled ahead of time with them.

``compiler_options`` and ``CompiledPerShape`` are what ``rnnjax.loop``
compiles a run's steps with, ``init_compiler_options`` what ``rnnjax.state``
compiles its init with; ``per_module`` keeps what is made for a flax
module. Why each option pays, with measurements:
``docs/performance.md``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

# XLA:CPU hands single dots to YNNPACK, which splits even the recurrence's
# small matmuls over the thread pool, so the devices' programs wait on each
# other's tasks; reductions kept from YNNPACK fuse with the ops that feed them.
# The value is XLA's default set less dots and reductions.
_YNN_CONVOLUTIONS_ONLY = {"xla_cpu_experimental_ynn_fusion_type":
                          "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}

# LLVM at -O1 instead of -O3: the same code bit for bit here, compiled faster.
_LLVM_O1 = {"xla_backend_optimization_level": 1}

# 512-bit vectors on CPUs with AVX-512 (XLA asks LLVM for 256-bit ones).
_AVX512_VECTORS = {"xla_cpu_prefer_vector_width": 512}

# Init runs once but its random number generator makes a large program: on a CPU,
# built unoptimized, in one piece, with the older code generator (where XLA
# still has it), it compiles faster, to values as deterministic (docs/performance.md).
_INIT_CPU = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
             "xla_cpu_parallel_codegen_split_count": 1}


def init_compiler_options() -> dict[str, Any]:
    """XLA options for the one-off init program: ``_INIT_CPU`` on a CPU, none elsewhere (not measured)."""
    return dict(_INIT_CPU) if jax.default_backend() == "cpu" else {}


@functools.cache
def _cpu_has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text().split()
    except OSError:           # not Linux: keep XLA's default
        return False


def compiler_options(batch_size: int, num_hiddens: int, num_shards: int) -> dict[str, Any]:
    """XLA options for training steps of ``batch_size`` rows over ``num_shards`` devices.

    On a CPU: LLVM at -O1, and where the rows per device outnumber the hidden
    units fourfold (below that YNNPACK's kernels win), dots and reductions out
    of YNNPACK and, given AVX-512, 512-bit vectors. Elsewhere none.
    """
    if jax.default_backend() != "cpu":
        return {}
    options = dict(_LLVM_O1)
    if batch_size // num_shards >= 4 * num_hiddens:
        options.update(_YNN_CONVOLUTIONS_ONLY)
        if _cpu_has_avx512():
            options.update(_AVX512_VECTORS)
    return options


class CompiledPerShape:
    """``fn(*args)``, jitted or pmapped, compiled ahead of time with XLA ``options`` per argument shapes.

    ``pmap`` takes no compiler options, and ``jax.jit`` around a pmap drops
    them, hence this. Options this XLA does not know, or values it does not
    take (they come and go between versions), are left out; the rest apply.
    """

    def __init__(self, fn: Callable, options: dict[str, Any]):
        self.fn, self.options = fn, dict(options)
        self.executables: dict[Any, Any] = {}

    def executable(self, *args) -> Any:
        leaves, treedef = jax.tree.flatten(args)
        key = treedef, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves)
        if key not in self.executables:
            lowered = self.fn.lower(*args)
            while True:
                try:
                    self.executables[key] = lowered.compile(compiler_options=self.options)
                    break
                except jax.errors.JaxRuntimeError as e:
                    rejected = _rejected_options(str(e), self.options)
                    if not rejected:
                        raise
                    self.options = {k: v for k, v in self.options.items() if k not in rejected}
        return self.executables[key]

    def __call__(self, *args):
        return self.executable(*args)(*args)


def _rejected_options(error: str, options: dict[str, Any]) -> set[str]:
    """The options XLA's compile ``error`` says it does not know or cannot take: the one it names,
    or all of ``options`` where it names none of them."""
    match = re.search(r"No such compile option: '(\w+)'|While setting option (\w+),.*not a valid enum", error)
    if match and (match[1] or match[2]) in options:
        return {match[1] or match[2]}
    mentions_options = "No such compile option" in error or "not a valid enum value" in error
    return set(options) if mentions_options else set()


def hashable(module: Any) -> bool:
    """Whether jit can key a compile on ``module``: flax hashes a module by its fields, which a list field
    (a cell of one's own) cannot be."""
    try:
        hash(module)
    except TypeError:
        return False
    return True


def per_module(maxsize: int = 16) -> Callable:
    """``f(module, *args)`` made once per module (compared by its fields) and arguments, for the latest
    ``maxsize``; made afresh on each call for a module that cannot be hashed (``hashable``). Cleared with
    JAX's caches."""
    def wrap(f: Callable) -> Callable:
        cached = cleared_with_jax(functools.lru_cache(maxsize=maxsize)(f))

        @functools.wraps(f)
        def call(module, *args):
            return cached(module, *args) if hashable(module) else f(module, *args)
        call.cache_clear = cached.cache_clear
        return call
    return wrap


def cleared_with_jax(cache: Callable) -> Callable:
    """``cache`` (a ``functools.lru_cache``'s) emptied by ``jax.clear_caches()`` as JAX's own are, so that
    what makes JAX trace afresh (after replacing a function in a running process) makes rnnjax too. A JAX
    without that hook leaves it as it is."""
    try:
        from jax._src import util
        util.register_cache(cache, getattr(cache, "__qualname__", "rnnjax"))
    except (ImportError, AttributeError):
        pass
    return cache
