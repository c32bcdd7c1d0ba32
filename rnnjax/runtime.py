"""Process-wide JAX settings that the entry points choose: the compilation cache."""

from __future__ import annotations

import os
from pathlib import Path

import jax

from rnnjax.data import cache_dir


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """JAX's persistent compilation cache, so that a second run skips XLA compilation.

    Default ``~/.cache/rnnjax/jax`` (under ``$RNNJAX_CACHE`` if set). Every
    compiled function is cached, however fast it compiled: on a CPU the train
    step's 0.6 s becomes about 0.15 s on the next run.
    """
    path = Path(path) if path is not None else cache_dir() / "jax"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
