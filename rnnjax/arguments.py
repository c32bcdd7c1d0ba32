"""The checks of a run's arguments, made before anything is read or written: the settings, the
model and optimizer they make (traced for shapes; nothing computed), the devices, memory, and what the
workdir is; then, once the text is read, the data. And ``fit``'s other arguments: the parameters
given (``params_given``), its callbacks and how often it saves.
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rnnjax import agree, kernels, memory, precision, workdir as workdir_lib
from rnnjax.config import Config, check_is_config, whole
from rnnjax.data import WindowedText
from rnnjax.optimizer_checks import check_update
from rnnjax.parallel import DataParallel
from rnnjax.protocol import StepProblem
from rnnjax.restored import Restored
from rnnjax.spelling import got, spelt
from rnnjax.state import (TrainState, abstract_run_states, abstract_train_state, check_own_dtype,
                          check_params, check_per_run)


def check_types(config: Any, data: Any, workdir: Any) -> None:
    """``TypeError`` in one sentence unless ``config`` is a ``Config``, ``data`` a ``WindowedText`` and
    ``workdir`` a path: ``fit``'s and ``fit_runs``' first check, where a wrong type would fail deep inside."""
    check_is_config(config)
    if not isinstance(data, WindowedText):
        raise TypeError("data must be an rnnjax.data.WindowedText (rnnjax.corpus.load(config) makes one), "
                        f"got {got(data)}.")
    if not isinstance(workdir, (str, os.PathLike)):
        raise TypeError(f"workdir must be a path (str or os.PathLike), got {got(workdir)}.")
    if workdir == "":           # Path("") is the current folder: a run wrote there
        raise ValueError("workdir is empty (''); give the run a folder of its own ('.' for this one).")


def check_arguments(config: Config, workdir: str | Path, *, devices: int | None = None,
                    runs: list[Config] | None = None, vocab_size: int | None = None) -> DataParallel:
    """``check``'s checks that need no data (the settings, devices, memory but the vocabulary's, what the
    workdir is), for a caller to make before it reads a text: ``ValueError`` in one sentence; the devices.
    The model is checked for ``vocab_size`` tokens, or, before the text is read, for one (a cell whose step
    fails on one input feature, one that splits its input in halves, say, is checked once it is read)."""
    workdir = Path(workdir)
    if jax.config.jax_disable_jit:      # JAX's own sentence came after the run had begun, naming neither
        raise ValueError("fit compiles its steps ahead of time, which jax.disable_jit ($JAX_DISABLE_JIT) "
                         "turns off: leave jit on (to debug a step, call rnnjax.train_step under it).")
    if config.bidirectional:
        raise ValueError(f"A bidirectional RNN ({spelt('bidirectional', True)}) cannot be trained as a "
                         "language model: its reverse direction reads the characters it is asked to predict. "
                         "Use it where whole sequences are given, e.g. for classification.")
    kernels.check(config)
    for c in runs or [config]:
        check_own_dtype(c)
    slow = memory.compile_note(config)
    if slow:        # before tracing the model, which for hundreds of layers takes minutes too; said once
        warnings.warn(slow)     # from this line (the command line checks first, then fit)
    try:
        abstract = (abstract_run_states(runs, vocab_size or 1) if runs
                    else abstract_train_state(config, vocab_size or 1))
    except StepProblem:         # a cell's step may follow its input's width: checked on the text's once read
        if vocab_size is not None:
            raise
        abstract = None
    if abstract is not None:
        _check_state(config, abstract, runs, vocab_size is not None)
    dp = DataParallel.create(devices)
    dp.check_batch_size(config.batch_size)
    if abstract is not None and vocab_size is None:     # the vocabulary's share is counted once it is read
        memory.check(config, 1, dp.num_shards, len(runs or [None]), dp.devices[0])
    workdir_lib.check_writable(workdir)
    workdir_lib.check_ours(workdir)
    workdir_lib.check_kinds(workdir)
    return dp


def _check_state(config: Config, abstract: Any, runs: list[Config] | None, sized: bool) -> None:
    """``ValueError`` unless the run's ``abstract`` state can be saved and ``config.optimizer`` steps it as
    a run steps it; ``sized``: made for the text's vocabulary (a parameter may be sized by it)."""
    keys = [x for x in jax.tree.leaves(abstract.opt_state)
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]
    if keys:        # orbax saves no key: it would fail at the first save, the epoch trained lost
        raise ValueError(f"The state of {spelt('optimizer', config.optimizer)} holds a random key (as "
                         "optax.add_noise's does), which rnnjax's checkpoints cannot save: keep it as its "
                         "integers (jax.random.key_data) in the state, or leave it out.")
    empty = [jax.tree_util.keystr(k) for k, x in jax.tree_util.tree_flatten_with_path(abstract)[0]
             if 0 in x.shape] if sized else []
    if empty:       # orbax saves none: it would fail at the first save, the epoch trained lost
        whose = spelt("optimizer", config.optimizer) if empty[0].startswith(".opt_state") else "the cell"
        raise ValueError(f"The training state holds an array of no elements ({empty[0]}), which rnnjax's "
                         f"checkpoints (orbax) cannot save: {whose} must make none.")
    # One run's state, as each steps: runs trained together are one vmapped step.
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), abstract) if runs else abstract
    check_update(config, one, per_run=bool(runs))


def check(config: Config, data: WindowedText, workdir: str | Path, *, devices: int | None = None,
          runs: list[Config] | None = None) -> DataParallel:
    """The checks of the arguments, the data and what the workdir is (not of what it holds), before any
    work: ``ValueError`` (``WorkdirError``, ``CheckpointError``) in one sentence; the devices to train on."""
    agree.check_in_run()
    check_types(config, data, workdir)
    dp = check_arguments(config, workdir, devices=devices, runs=runs, vocab_size=len(data.vocab))
    if config.matmul_precision == "default":       # JAX's: one its backend does not compute, said here
        precision.check_ambient()
    if data.num_val < 1:
        raise ValueError("fit validates every epoch, so the data needs num_val >= 1 validation windows.")
    data.check_tokens()
    data.check_made_for(config)
    per_epoch = data.num_batches(True)
    if config.epochs * per_epoch >= 2 ** 31:        # the state's step counter is an int32
        each = spelt("steps_per_epoch", per_epoch) if config.steps_per_epoch else f"{per_epoch} steps each"
        raise ValueError(f"{spelt('epochs', config.epochs)} of {each} is {config.epochs * per_epoch} "
                         "steps; a run takes at most 2**31 - 1.")
    memory.check(config, len(data.vocab), dp.num_shards, len(runs or [None]), dp.devices[0],
                 data_bytes=data.tokens.nbytes)
    if runs:        # after the memory check: it makes each run's optimizer state
        check_per_run(runs, len(data.vocab))
    return dp


def params_given(params: Any, data: WindowedText, config: Config, caller: str = "fit"
                 ) -> tuple[Any, dict | None]:
    """``params``, or a restored run's, which index the rows of its own vocabulary (``ValueError`` where
    ``data``'s is another: one of the same size trained on silently, each token another's row), and where
    they come from (``Restored.address``: the new run's ``config.json`` records it); ``ValueError`` unless
    they fit ``config`` (``check_params``). Before the workdir is made, and even where it resumes."""
    origin, whose = None, caller + ("'" if caller.endswith("s") else "'s")       # fit_runs'
    if isinstance(params, (list, tuple)):       # read as a tree, it would be refused leaf by leaf
        each = " (each run starts from them)" if caller == "fit_runs" else ""
        raise TypeError(f"{whose} params are one run's{each}, got a {type(params).__name__} of "
                        f"{len(params)}: train runs from other parameters in workdirs of their own.")
    if isinstance(params, TrainState):      # a result's .state: its optimizer's state is no start's
        which = ("one run's of its stacked .params, jax.tree.map(lambda x: x[k], state.params)"
                 if np.ndim(params.step) else "its .params")      # fit_runs': a step per run
        raise TypeError(f"{whose} params are parameters, got a TrainState: give {which} (the run makes its "
                        "own optimizer state), or the restored run.")
    if isinstance(params, Restored):
        if params.vocab.idx_to_token != data.vocab.idx_to_token:
            raise ValueError(f"{whose} params are a run's trained in another vocabulary than the data's: "
                             "load the data in the run's tokens, rnnjax.corpus.load(config, text=..., "
                             "vocab=run.vocab).")
        params, origin = params.params, params.address
    if params is not None:
        check_params(params, config, len(data.vocab))
    return params, origin


def check_callbacks(progress: Any, log: Any) -> None:
    """``TypeError`` in one sentence unless ``fit``'s (``fit_runs``') ``progress`` and ``log`` are functions
    that take what they are called with, or ``None`` (or ``False``: off too): found before the workdir is
    made, not at the first call."""
    for name, f, takes in (("progress", progress, "(done_steps, total_steps, record_or_None)"),
                           ("log", log, "(line)")):
        if f is None or f is False:
            continue
        if not callable(f):
            raise TypeError(f"{name} must be a function or None, got {got(f)}.")
        try:
            inspect.signature(f).bind(*takes.count(",") * [None], None)
        except ValueError:      # no signature to read (some builtins): called as it is
            pass
        except TypeError:
            raise TypeError(f"{name} is called as {name}{takes}; {getattr(f, '__name__', 'it')}"
                            f"{inspect.signature(f)} cannot take that.") from None


def check_saving(checkpoint_every: int, keep: int) -> tuple[int, int]:
    """``fit``'s (and ``fit_runs``') ``checkpoint_every`` and ``keep`` as ``int``s: ``ValueError`` in one
    sentence unless each is a whole number of at least 1."""
    out = []
    for name, value, what in (("checkpoint_every", checkpoint_every, "epochs"),
                              ("keep", keep, "checkpoints")):
        try:
            out.append(whole(value, name))
        except ValueError:
            out.append(0)
        if out[-1] < 1:
            raise ValueError(f"{name} must be a whole number of {what}, at least 1, got {value!r}.")
    return out[0], out[1]
