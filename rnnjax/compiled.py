"""A run's compiled steps: its training and evaluation steps compiled for its devices, their float32 matmuls
at its ``matmul_precision``, and the latest runs' kept for a next run of the same step and settings in the
process (a resume, a sweep's next seed), as JAX reuses what it traced for a function and inputs of equal
structure. Each run's are functions of its own, dropped with it: a process that kept every run's programs
ran out of memory maps (docs/performance.md).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from rnnjax import preflight
from rnnjax.data import WindowedText
from rnnjax.precision import at_precision
from rnnjax.start import Plan
from rnnjax.xla import cleared_with_jax, compiler_options, hashable


class Compiled(NamedTuple):
    train: Callable
    evaluate: Callable
    tokens: Any
    val_batches: Any
    checked: Callable           # the step as preflight.checked_step checks it (its count_fixed)


def compile_run(p: Plan, data: WindowedText, step: Callable, evaluate: Callable, state: Any = None
                ) -> Compiled:
    """A planned run's training and evaluation steps compiled for its devices, and the token stream and
    validation batches on them. The latest four runs' steps of rnnjax's own (``fit``'s, ``fit_runs'``) are
    kept (``_kept``) for a next run in the same thread of the same settings but the seed (the dropout key is
    an argument of the program) and epochs, data sizes, ``state``'s structure (which holds the model and
    optimizer: one object for equal settings of rnnjax's own) and JAX flags; ``jax.clear_caches()`` drops
    them, and a replaced ``_replaceable`` function compiles anew. One's own step or evaluation (which may
    read what it is not given: a global config's dropout key) is compiled for its run alone."""
    options = compiler_options(p.config.batch_size, p.config.num_hiddens, p.dp.num_shards)
    step, keyword, rng = _keyless(step)
    key = (step, keyword, evaluate, p.config.matmul_precision, tuple(sorted(options.items())), p.dp,
           _replaceable(), p.config.replace(seed=0, epochs=1), np.shape(data.tokens), data.num_val,
           jax.tree.structure(state), threading.get_ident(), _flags())
    ours = preflight.ours(step) and preflight.ours(evaluate)
    steps = _kept(*key) if ours and hashable(key) else _compile(*key)
    train = steps[0] if keyword is None else _given(steps[0], p.dp.replicate(rng))
    return Compiled(train, steps[1], p.dp.replicate(data.tokens),
                    p.dp.put(p.dp.shard_stack(data.val_batches())), steps[2])


def _replaceable() -> tuple:
    """What rnnjax's steps look up as they are traced that one replaces in a running process (a target's
    label smoothing, a step's metric): a replaced one compiles anew."""
    from rnnjax import objective, train       # here: train imports this module
    return objective.targets, train.train_step, train.eval_step, train.eval_steps


def _flags() -> tuple:
    """JAX's settings that a trace depends on (its own cache's key), where this JAX says them."""
    try:
        from jax._src import config
        return config.trace_context()
    except (ImportError, AttributeError):
        return ()


def _keyless(step: Callable) -> tuple[Callable, str | None, Any]:
    """rnnjax's own step given its dropout key(s) as a partial (``fit``'s ``rng``, ``fit_runs``' ``rngs``):
    the step, that keyword and the key, which its program takes as an argument. A key closed over is a
    constant of the program: each seed compiled its own, past JAX's persistent cache too."""
    if isinstance(step, functools.partial) and not step.args and preflight.ours(step):
        (keyword, rng), = step.keywords.items() if len(step.keywords) == 1 else ((None, None),)
        dtype = getattr(rng, "dtype", None)
        raw = rng is None or (dtype is not None and not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key))
        if keyword in ("rng", "rngs") and raw:        # a typed key (jax.random.key) stays closed over
            return step.func, keyword if rng is not None else None, rng
    return step, None, None


def _taking(step: Callable, keyword: str) -> Callable:
    """``step`` with its ``keyword`` argument (the dropout key) the program's fourth."""
    def keyed(state, tokens, windows, rng, axis_name=None):
        return step(state, tokens, windows, axis_name=axis_name, **{keyword: rng})
    return keyed


def _given(train: Callable, rng: Any) -> Callable:
    return lambda state, tokens, windows: train(state, tokens, windows, rng)


def _compile(step: Callable, keyword: str | None, evaluate: Callable, precision: str, options: tuple, dp: Any,
             *_) -> tuple:
    checked = preflight.checked_step(step)
    train = checked if keyword is None else _taking(checked, keyword)
    step, evaluate = (at_precision(f, precision) for f in (train, _own(evaluate)))
    return (dp.compile(step, donate_state=True, compiler_options=dict(options)),
            dp.compile(evaluate, compiler_options=dict(options)), checked)


_kept = cleared_with_jax(functools.lru_cache(maxsize=4)(_compile))


def _own(f: Callable) -> Callable:
    """``f`` as a function of its own, which a run's compiled programs can go with."""
    @functools.wraps(f)
    def own(*args, **kwargs):
        return f(*args, **kwargs)
    return own
