"""What a ``Config`` builds: the model (the one factory), the optimizer, the train state."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from rnnjax import kernels, optimizers
from rnnjax.optimizer_checks import changing, check_kept, check_rates, failing
from rnnjax.xla import CompiledPerShape, init_compiler_options, per_module
from rnnjax.cells import OWN_CELLS, registered_own
from rnnjax.config import Config, ConfigError
from rnnjax.model import CELLS, RNN, RNNLM, StackedRNN
from rnnjax.precision import COMPUTE_DTYPES
from rnnjax.protocol import StepFailed, StepProblem, check_sized, lacks, step_problem
from rnnjax.spelling import leaf_types, spelt

TrainState = train_state.TrainState


def takes_dtype(cell: Any) -> bool:
    """Whether the cell class (or a ``functools.partial`` of one) has a ``dtype`` field to compute in."""
    return "dtype" in getattr(getattr(cell, "func", cell), "__dataclass_fields__", {})


def check_own_dtype(config: Config) -> None:
    """``ConfigError`` in one sentence if the registered cell is a ``functools.partial`` setting a ``dtype``
    other than ``config.compute_dtype``, which ``make_model`` sets over it (a class's default is a default):
    the run would say one and record the other. As a run is planned; inference reads the parameters."""
    cell = CELLS.get(config.cell)
    own = (getattr(cell, "keywords", None) or {}).get("dtype")
    wanted = jnp.dtype(COMPUTE_DTYPES[config.compute_dtype])
    if own is not None and takes_dtype(cell) and jnp.dtype(own) != wanted:
        raise ConfigError(f"rnnjax.CELLS[{config.cell!r}] sets dtype={jnp.dtype(own).name} itself, and "
                          "rnnjax makes every cell compute in "
                          f"{spelt('compute_dtype', config.compute_dtype)}: give the dtype there "
                          f"({' or '.join(COMPUTE_DTYPES)}), not in the cell (a run trained so computed in "
                          "compute_dtype's).")


def make_model(config: Config, vocab_size: int) -> RNNLM:
    """``RNNLM`` over ``config``'s cells (one ``RNN``, else a ``StackedRNN``), with the loss of the
    kernel ``rnnjax.kernels.choose`` picks (the parameters are the same for every kernel)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a whole number of tokens, at least 1 (len(data.vocab)), got "
                         f"{vocab_size!r}.")
    kernel = kernels.choose(config)
    dtype = COMPUTE_DTYPES[config.compute_dtype]
    kwargs = {"nonlinearity": config.nonlinearity} if config.nonlinearity != "tanh" else {}
    if takes_dtype(CELLS[config.cell]):        # a cell without one computes in float32
        kwargs["dtype"] = dtype
    if isinstance(CELLS[config.cell], nn.Module) or not callable(CELLS[config.cell]):    # a made one, "gru"
        made = "made already" if callable(CELLS[config.cell]) else "not a cell class"
        raise ConfigError(f"rnnjax.CELLS[{config.cell!r}] is a {type(CELLS[config.cell]).__name__}, {made}; "
                          f"register a cell class, or a functools.partial of one: rnnjax makes each "
                          f"layer's cell as rnnjax.CELLS[{config.cell!r}](num_hiddens, ...).")
    try:
        cell = CELLS[config.cell](config.num_hiddens, **kwargs)
    except TypeError as e:            # a user's cell with other required fields
        given = "".join(f", {k}=..." for k in kwargs)
        raise ConfigError(f"rnnjax makes the cell {config.cell!r} as "
                          f"rnnjax.CELLS[{config.cell!r}](num_hiddens{given}), which fails ({e}): register a "
                          "functools.partial of it that sets its other arguments.") from None
    check_sized(config.cell, cell, config.num_hiddens)
    missing = lacks(cell)
    if missing:
        raise ConfigError(f"rnnjax.CELLS[{config.cell!r}] makes a {type(cell).__name__}, which is not a "
                          f"recurrent cell (it lacks {', '.join(missing)}): a cell is called as "
                          "cell(carry, x) -> (carry, y) and has initialize_carry(rng, input_shape) and "
                          "num_feature_axes, as flax's nn.RNNCellBase.")
    problem = cause = None
    own = type(cell) in OWN_CELLS.values()
    if not own:
        try:
            problem = step_problem(cell, vocab_size)      # each time: it may follow a setting of its module
        except StepFailed as e:             # in the cell's own code: said, and raised from its error
            problem, cause = str(e), e.__cause__
    if problem:         # rather than JAX's error about scan's carry, or flax's about its rngs, mid-trace
        raise StepProblem(f"rnnjax.CELLS[{config.cell!r}] makes a {type(cell).__name__} whose step "
                          f"{problem}.") from cause
    remat = kernel == "fused"
    if config.num_layers == 1 and not config.bidirectional:      # dropout acts between layers only
        rnn = RNN(cell, unroll=config.unroll, remat=remat)
    else:
        rnn = StackedRNN(cell, config.num_layers, config.dropout, config.bidirectional, config.unroll,
                         remat=remat)
    model = kernels.MODELS.get(kernel, RNNLM)(rnn, vocab_size, dtype=dtype)
    return _one_of_equals(model) if own else model


# One model object for equal models of rnnjax's cells (flax compares modules by their fields; another's
# cell may follow more): a state's apply_fn is then the same, and a next run of the same settings in this
# process reuses its compiled programs (JAX compares a bound method's object by identity).
_one_of_equals = per_module()(lambda model: model)


def make_optimizer(config: Config, per_run: bool = False) -> optax.GradientTransformation:
    """``config.optimizer`` made for ``config`` (``rnnjax.optimizers``: d2l's SGD after clipping to global
    norm ``clip`` by default): what every run, new or resumed, steps with. ``per_run``: ``lr`` and ``clip``
    kept in its state, as runs trained together need them."""
    return optimizers.make(config, per_run)


def create_run_states(configs: list[Config], vocab_size: int, params: Any = None) -> TrainState:
    """Step 0 of each config's run, stacked on a leading run axis (its own seed, ``clip`` and ``lr``); each
    from ``params`` (one run's: a fine-tune of several rates), else initialized from its own seed. Runs in one
    program differ in ``SWEEPABLE`` only (``ConfigError``)."""
    from rnnjax.runs import check_runs, listed          # rnnjax.runs trains what this makes: imported late
    configs = listed(configs)
    check_runs(configs)     # else they'd be made as the first one's model, silently
    model = make_model(configs[0], vocab_size)
    if params is not None:
        check_params(params, configs[0], vocab_size)
        params = jax.tree.map(lambda x: jnp.stack([x] * len(configs)), params)
    else:
        seeds = jnp.array([c.seed for c in configs], jnp.uint32)    # each run's init as create_train_state's
        params = _initialized(CompiledPerShape(jax.jit(jax.vmap(_init(model, configs[0].num_steps))),
                                               init_compiler_options()), seeds, configs[0])
    opt_states = [make_optimizer(c, per_run=True).init(jax.tree.map(lambda x: x[r], params))
                  for r, c in enumerate(configs)]
    check_kept(configs, opt_states)
    tx = make_optimizer(configs[0], per_run=True)        # one function; each run's values are in its state
    return TrainState(step=jnp.zeros(len(configs), jnp.int32), apply_fn=model.apply, params=params, tx=tx,
                      opt_state=jax.tree.map(lambda *x: jnp.stack(x), *opt_states))


def check_per_run(configs: list[Config], vocab_size: int) -> None:
    """``ValueError`` unless each run's optimizer state holds its own ``lr`` and ``clip`` where runs differ in
    them: one optimizer steps every run, so one of one's own (``rnnjax.optimizers``) that ignores
    ``per_run`` would train each at the first run's values, its records saying otherwise (or one that keeps
    the rate and never reads it, ``check_rates``). Before any state is made (``fit_runs``: before the
    workdir), each run's optimizer made for zeros of the model's parameters (an optimizer may follow their
    tree); ``create_run_states`` checks the states it makes."""
    if not changing(configs):
        return
    params = abstract_train_state(configs[0], vocab_size).params
    zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), params)
    try:
        opt_states = [make_optimizer(c, per_run=True).init(zeros) for c in configs]
    except Exception as e:      # one's own optimizer, whatever it raises: before any work, not after it
        raise ValueError(f"{spelt('optimizer', configs[0].optimizer)} cannot be made for the model's "
                         f"parameters{failing(True, e)}.") from None
    check_kept(configs, opt_states)
    check_rates(configs, zeros)         # kept, and read: runs of different rates step differently


def abstract_run_states(configs: list[Config], vocab_size: int) -> TrainState:
    """The shapes and dtypes of ``create_run_states``' result, computing nothing (a restore target)."""
    def stacked(x):
        return jax.ShapeDtypeStruct((len(configs), *x.shape), x.dtype)
    return jax.tree.map(stacked, _abstract_state(configs[0], vocab_size, per_run=True))


SEED_PRNG = "threefry2x32"


def seed_key(seed: Any) -> jax.Array:
    """A seed's key, ``SEED_PRNG``'s whatever ``$JAX_DEFAULT_PRNG_IMPL`` says: a seed draws the same
    parameters, dropout masks and samples everywhere."""
    return jax.random.key(seed, impl=SEED_PRNG)


def _init(model: RNNLM, num_steps: int) -> Callable:
    """``seed -> params`` of ``model``: the key and the dummy input made inside (made eagerly, each would
    compile a small program of its own)."""
    return lambda seed: model.init(seed_key(seed), jnp.zeros((1, num_steps), jnp.int32))["params"]


@per_module()
def _compiled_init(model: RNNLM, num_steps: int, made: tuple) -> CompiledPerShape:
    """``_init`` compiled once per model and the parameters it ``made`` (``leaf_types``; ``()`` for
    rnnjax's own cells), not again for each seed."""
    return CompiledPerShape(jax.jit(_init(model, num_steps)), init_compiler_options())


def _made(model: RNNLM, num_steps: int = 1) -> Any:
    """The shapes and dtypes of ``model``'s parameters, traced each time, not cached per model: a cell's
    parameters may follow more than its fields (a setting of its module), and a restore target, a check of
    parameters, or a fresh init must be what the cell makes now."""
    return jax.eval_shape(_init(model, num_steps), np.uint32(0))


_made_once = per_module()(_made)      # check_model_params', at each prompt: traced anew before it refuses


def create_train_state(config: Config, vocab_size: int, params: Any = None) -> TrainState:
    """Step 0 of ``config``'s model and optimizer, from ``params`` or initialized from ``config.seed``."""
    model = make_model(config, vocab_size)
    if params is not None:
        check_params(params, config, vocab_size)
    else:
        # rnnjax's cells make parameters of their fields alone; another's may follow a setting of its module.
        own = registered_own(config.cell)
        made = () if own else tuple(leaf_types(_made(model, config.num_steps)).items())
        params = _initialized(_compiled_init(model, config.num_steps, made), np.uint32(config.seed), config)
    return TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(config))


def _initialized(init: Callable, seeds: Any, config: Config) -> Any:
    """``init(seeds)``; a dtype the backend's kernels lack (JAX's LAPACK on a CPU has no bfloat16, which
    flax's orthogonal initializer needs) in one sentence."""
    try:
        return init(seeds)
    except NotImplementedError as e:
        dtype = re.search(r"Unsupported dtype (\w+)", str(e))
        if not dtype:
            raise
        raise ConfigError(f"rnnjax.CELLS[{config.cell!r}] makes {dtype[1]} parameters, which JAX cannot "
                          f"initialize on {jax.default_backend().upper()} (its initializer's 'Unsupported "
                          f"dtype {dtype[1]}'): keep them float32 and set compute_dtype='bfloat16' for "
                          "bfloat16 matmuls.") from None


def abstract_train_state(config: Config, vocab_size: int) -> TrainState:
    """The shapes and dtypes of ``create_train_state``'s result, computing nothing (a restore target)."""
    return _abstract_state(config, vocab_size)


def _abstract_state(config: Config, vocab_size: int, per_run: bool = False) -> TrainState:
    model = make_model(config, vocab_size)
    tx = make_optimizer(config, per_run)        # its errors outside the trace, without JAX's note
    made = _made_once if registered_own(config.cell) else _made     # rnnjax's: of its fields alone
    try:
        params = made(model, config.num_steps)
    except Exception as e:      # a cell of one's own that steps on the check's batch of 2 only, say
        lines = [line for line in str(e).splitlines() if line.strip()] or [""]
        said = " ".join(lines[:2] if lines[0].endswith(":") else lines[:1]).rstrip(".")    # JAX's "differ:"
        init = f"init (a batch of 1 sequence, {spelt('num_layers', config.num_layers)})"
        raise StepProblem(f"rnnjax.CELLS[{config.cell!r}] makes a model whose {init} fails "
                          f"({type(e).__name__}: {said}).") from e
    try:
        return jax.eval_shape(lambda p: TrainState.create(apply_fn=model.apply, params=p, tx=tx), params)
    except Exception as e:      # one's own optimizer, whatever it raises: before any work, not after it
        raise ValueError(f"{spelt('optimizer', config.optimizer)} cannot be made for the model's parameters"
                         f"{failing(per_run, e)}.") from None


def check_params(params: Any, config: Config, vocab_size: int) -> None:
    """``ValueError`` in one sentence, naming a leaf, unless ``params`` have the tree, shapes and dtypes
    (float32) of the parameters ``config`` makes for ``vocab_size`` tokens."""
    _not_variables(params)
    what = (f"The parameters do not fit the config (cell {config.cell!r}, num_hiddens={config.num_hiddens}, "
            f"vocabulary {vocab_size})")
    _check_fit(params, abstract_train_state(config, vocab_size).params, what)


def check_model_params(params: Any, model: RNNLM) -> None:
    """``check_params`` against the parameters ``model`` makes, of any floating dtype (for inference)."""
    _not_variables(params)
    what = f"The parameters do not fit the model (vocabulary {model.vocab_size})"
    try:        # as each prompt is: the shapes cached per model, traced anew before a refusal (see _made)
        _check_fit(params, _made_once(model), what, any_float=True)
    except ValueError:
        _check_fit(params, _made(model), what, any_float=True)


def _not_variables(params: Any) -> None:
    if isinstance(params, Mapping) and set(params) == {"params"}:
        raise ValueError("Give the parameters themselves (a restored run's .params), not flax's variables "
                         "{'params': params}.")


def _check_fit(params: Any, abstract: Any, what: str, any_float: bool = False) -> None:
    """``check_params``' checks against ``abstract``; ``any_float``: parameters of any floating dtype (cast
    for inference) pass."""
    def leaves(tree):       # by name: a FrozenDict's leaves are a dict's
        return {jax.tree_util.keystr(k): x for k, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    expected, given = leaves(abstract), leaves(params)
    if "" in given:         # not a tree at all
        raise ValueError(f"{what}: they are of type {type(params).__name__}, not a dict of arrays.")
    missing, extra = [k for k in expected if k not in given], [k for k in given if k not in expected]
    wrong = []
    if missing:
        wrong.append(f"they lack {missing[0]}" + (f" (and {len(missing) - 1} more)" if missing[1:] else ""))
    if extra:
        wrong.append(f"they have {extra[0]}, which the model has not")
    if wrong:
        raise ValueError(f"{what}: {'; '.join(wrong)}.")
    stacked = {np.shape(x)[0] if np.ndim(x) == len(want.shape) + 1 and np.shape(x)[1:] == want.shape else None
               for x, want in zip(map(given.get, expected), expected.values())}
    if len(stacked) == 1 and None not in stacked:       # fit_runs' runs, a run axis first
        runs = stacked.pop()
        raise ValueError(f"{what}: they are {runs} runs' parameters stacked on a first axis (fit_runs'); "
                         "take run k's with jax.tree.map(lambda x: x[k], params), or restore(workdir, "
                         "run=k).")
    for name, want in expected.items():
        x = given[name]
        if not isinstance(x, (np.ndarray, jax.Array)):
            raise ValueError(f"{what}: {name} is of type {type(x).__name__}, not an array of shape "
                             f"{want.shape}.")
        if tuple(x.shape) != want.shape:
            raise ValueError(f"{what}: {name} has shape {tuple(x.shape)}, expected {want.shape}.")
        if any_float and jnp.issubdtype(x.dtype, jnp.floating):
            continue
        if jax.dtypes.canonicalize_dtype(x.dtype) != want.dtype:      # float64 is float32 to JAX (no x64)
            # bfloat16 parameters would train in bfloat16 throughout: compute_dtype is what does it right
            hint = ("; keep float32 parameters: Config.compute_dtype='bfloat16' casts them for the matmuls"
                    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32
                    else f"; cast it to {want.dtype}")
            raise ValueError(f"{what}: {name} is {x.dtype}, expected {want.dtype}{hint}.")
