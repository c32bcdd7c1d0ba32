"""The optimizers a run names (``Config.optimizer``, ``--optimizer``): d2l's SGD, and Adam, each after
clipping the gradients to global norm ``clip``. One's own, registered in ``OPTIMIZERS`` as a cell is in
``rnnjax.CELLS`` (in each interpreter that uses its runs), trains, resumes and is recorded by name in
config.json, and in each checkpoint as what it was registered as (``registered_as``); a resume under
another optimizer, or the same name registered otherwise, is refused.

A schedule scales one of peak 1 by the rate, as runs trained together need it (each run's rate is
traced), over the run's ``data.num_batches() * config.epochs`` steps; the data loaded first, as its
config names a known optimizer (loading makes it, to size the run's memory)::

    data = rnnjax.corpus.load(config, text="mytext.txt")
    cosine = optax.cosine_decay_schedule(1.0, data.num_batches() * config.epochs)
    rnnjax.OPTIMIZERS["cosine"] = rnnjax.optimizers.clipped(
        lambda learning_rate: optax.adamw(lambda n: learning_rate * cosine(n)))
    runs = [config.replace(optimizer="cosine", lr=lr) for lr in (0.01, 0.003)]
    result = rnnjax.fit_runs(runs, data, "runs/cosine")

An optimizer is ``make(config, per_run) -> optax.GradientTransformation``, made of the config the run
has now, alone: it is made as the data loads (its state sizes the run's memory), so it loads none (made
again inside itself, it is refused). A resume of more epochs (``Config.RESUMABLE``) makes it anew, and
says so: a schedule of ``config.steps_per_epoch * config.epochs`` steps (``--steps-per-epoch``) follows
the new count; one of a fixed count of steps (``clipped``'s, made as it is registered, as above) keeps
its end, past which its rate is what the schedule gives there (a cosine's 0: the resume warns that it
trains nothing).
``per_run`` keeps ``lr`` and ``clip`` in its state (``optax.inject_hyperparams``)
rather than in the function: what lets runs with different values be one
vmapped step (``rnnjax.runs``; ``rnnjax.state.check_per_run`` refuses one that
ignores it). The state's structure differs with it; each is what checkpoints of
its kind hold.

A run checks, before it writes anything, that its optimizer steps as the run
steps it (``rnnjax.optimizer_checks``).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from rnnjax.cells import described
from rnnjax.config import Config, ConfigError, is_int
from rnnjax.xla import cleared_with_jax
from rnnjax.spelling import as_flags, choices, got, spelt


def clipped(optimizer: Callable[..., optax.GradientTransformation]) -> Callable:
    """The optimizer that clips to ``config.clip``'s global norm, then steps with ``optimizer`` (an optax
    one taking ``learning_rate``) at ``config.lr``: ``OPTIMIZERS["adamw"] = clipped(optax.adamw)``."""
    def make(config: Any, per_run: bool = False) -> optax.GradientTransformation:
        def kept(make):
            if not per_run:
                return make
            try:
                static = [name for name, arg in inspect.signature(make).parameters.items()
                          if _in_function(name, arg)]
            except ValueError:      # no signature to read: inject_hyperparams cannot read one either
                static = []
            return optax.inject_hyperparams(make, static_args=static)
        if not callable(optimizer):     # optax.adam(0.01): made already
            raise ConfigError(f"{spelt('optimizer', config.optimizer)} is clipped of {got(optimizer)}: "
                              "clipped takes an optax optimizer, optax.adamw, not optax.adamw(0.01).")
        name = f"{spelt('optimizer', config.optimizer)}, clipped({described(optimizer)}),"
        try:
            stepper = kept(optimizer)(learning_rate=config.lr)
        except TypeError as e:      # polyak_sgd takes no rate; a partial that gives one already
            raise ConfigError(f"{name} cannot make its optimizer as {described(optimizer)}(learning_rate="
                              f"{config.lr}) ({e}): clipped takes an optimizer that takes learning_rate, as "
                              "optax.adamw does.") from None
        if not (callable(getattr(stepper, "init", None)) and callable(getattr(stepper, "update", None))):
            raise ConfigError(f"{name} made {got(stepper)}, not an optax transformation (init, update): "
                              "clipped takes an optax optimizer, optax.adamw, not optax.adamw(0.01).")
        return optax.chain(kept(clip_by_global_norm)(max_norm=config.clip), stepper)
    make.clipped = optimizer            # what registered_as says
    return make


def clip_by_global_norm(max_norm: float | jax.Array) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm``, each update scaled in its own dtype: runs trained together keep
    ``max_norm`` in their state as a float32 array, which made a bfloat16 parameter's clipped update float32
    (and optax's select refused to mix them)."""
    def update(updates, state, params=None):
        norm = optax.tree.norm(updates)
        small = jnp.squeeze(norm < max_norm)
        return jax.tree.map(lambda t: jax.lax.select(
            small, t, (t / norm.astype(t.dtype)) * jnp.asarray(max_norm, t.dtype)), updates), state
    return optax.GradientTransformation(optax.init_empty_state, update)


def _in_function(name: str, arg: inspect.Parameter) -> bool:
    """Whether ``clipped`` keeps an optimizer's argument in the function for runs trained together, not in
    their state: rates are each run's own; inject_hyperparams calls any callable argument (a weight-decay
    mask) as a schedule of the step count, which a run alone never does, and traces any int, where an int is
    a size or count that Python branches on (adafactor's min_dim_size_to_factor)."""
    return (arg.default is not arg.empty and (callable(arg.default) or is_int(arg.default))
            and name not in ("learning_rate", "max_norm"))


def int_arguments(name: str) -> set[str]:
    """The arguments of int defaults that ``clipped`` keeps in the function for runs trained together (not
    in their state, as before 2026-12-07), of the optimizer registered as ``name``."""
    inner = getattr(OPTIMIZERS.get(name), "clipped", None)
    try:
        arguments = inspect.signature(inner).parameters.items() if inner is not None else []
    except (TypeError, ValueError):
        return set()
    return {k for k, a in arguments if _in_function(k, a) and is_int(a.default)}


OPTIMIZERS: dict[str, Callable[[Any, bool], optax.GradientTransformation]] = {
    "sgd": clipped(optax.sgd),          # d2l's
    "adam": clipped(optax.adam),
}
OWN = dict(OPTIMIZERS)                  # rnnjax's own: one registered in place of one is said as a run starts


@cleared_with_jax
@functools.lru_cache(maxsize=16)
def _own(name: str, lr: float, clip: float, per_run: bool) -> optax.GradientTransformation:
    """rnnjax's own optimizer ``name``, of ``lr`` and ``clip`` alone: one object for equal ones, so that a
    next run of the same settings in this process reuses its compiled programs (JAX compares the optimizer
    in a state's structure by identity)."""
    return OWN[name](Config(optimizer=name, lr=lr, clip=clip), per_run)


# The optimizers this thread is making, by name: one made inside itself is refused.
_MAKING: contextvars.ContextVar[frozenset] = contextvars.ContextVar("making", default=frozenset())


def make(config: Any, per_run: bool = False) -> optax.GradientTransformation:
    """``config.optimizer`` made for ``config``; ``ConfigError`` in one sentence if none is registered under
    its name here (checked as a run is planned, not as a ``Config`` is made: a restore for inference, which
    reads the parameters alone, needs none) or what is registered makes no optax transformation."""
    check(config.optimizer)
    if OPTIMIZERS[config.optimizer] is OWN.get(config.optimizer):
        return _own(config.optimizer, config.lr, config.clip, per_run)
    maker, where = OPTIMIZERS[config.optimizer], f"rnnjax.OPTIMIZERS[{config.optimizer!r}]"
    wanted = "make(config, per_run) -> optax.GradientTransformation (rnnjax.optimizers.clipped(optax.adamw))"
    if not callable(maker):     # optax.adam(0.01): a transformation, not what makes one for a config
        raise ConfigError(f"{where} is {got(maker)} made already: register {wanted}.")
    if getattr(maker, "__module__", "").partition(".")[0] == "optax":       # optax.adam itself
        raise ConfigError(f"{where} is optax's {getattr(maker, '__name__', 'optimizer')} itself, which takes "
                          f"a learning rate, not a config: register {wanted}.")
    try:
        inspect.signature(maker).bind(config, per_run)
    except TypeError:           # not with (config, per_run)
        raise ConfigError(f"{where} is {got(maker)} that cannot be called as make(config, per_run): register "
                          f"{wanted}.") from None
    except ValueError:          # no signature to read: taken on trust
        pass
    if config.optimizer in _MAKING.get():     # one that loads the data, whose check makes it: no end
        raise ConfigError(f"{where} is made again as it is made (loading the data, whose memory check makes "
                          "the optimizer, say): make it of the config alone; a schedule over the whole run "
                          "takes data.num_batches() * config.epochs from the data as it is registered, or "
                          "config.steps_per_epoch * config.epochs (rnnjax.optimizers).")
    making = _MAKING.set(_MAKING.get() | {config.optimizer})
    try:
        made = maker(config, per_run)
    except (ConfigError, jax.errors.ConcretizationTypeError):      # said; a traced rate's: by the caller
        raise
    except Exception as e:      # one's own, whatever it raises: named, not raw
        said = raised(e)
        steps = ("; config.steps_per_epoch is 0 unless the run sets it (--steps-per-epoch): a schedule over "
                 "the run takes data.num_batches() * config.epochs as it is registered (rnnjax.optimizers)"
                 if not config.steps_per_epoch and "step" in said.lower() else "")
        raise ConfigError(f"{where} cannot be made for this run ({said}){steps}.") from None
    finally:
        _MAKING.reset(making)
    if not (callable(getattr(made, "init", None)) and callable(getattr(made, "update", None))):
        raise ConfigError(f"{where} made {got(made)}, not an optax transformation (init, update): register "
                          f"{wanted}.")
    return made


def raised(e: Exception) -> str:
    """What an optimizer of one's own raised, in a clause: its type and its message's first line."""
    return f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0].rstrip(".")


def registered_as(name: str) -> str | None:
    """What ``OPTIMIZERS[name]`` is, in words a checkpoint keeps (as ``rnnjax.cells.registered_as`` says a
    cell): ``rnnjax's own``, ``clipped(adam(b1=0.5))``, a function's name; ``None`` if none is registered."""
    def said(maker):
        inner = getattr(maker, "clipped", None)
        return f"clipped({described(inner)})" if inner is not None else described(maker)
    maker = OPTIMIZERS.get(name)
    if maker is None:
        return None
    if name in OWN and (maker is OWN[name] or said(maker) == said(OWN[name])):    # registered again alike
        return "rnnjax's own"
    return said(maker)


def check(name: str) -> None:
    if name not in OPTIMIZERS:
        where = " (on the command line, a script that registers it calls experiments.timemachine.main())"
        raise ConfigError(f"{spelt('optimizer', name)} is not a known optimizer; choose from "
                          f"{choices(OPTIMIZERS)}, or register one of your own in "
                          f"rnnjax.OPTIMIZERS (rnnjax.optimizers) in each interpreter that trains its runs"
                          f"{where * as_flags()}.")
