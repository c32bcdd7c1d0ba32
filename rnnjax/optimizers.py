"""The optimizers a run names (``Config.optimizer``, ``--optimizer``): d2l's SGD, and Adam, each after
clipping the gradients to global norm ``clip``. One's own, registered in ``OPTIMIZERS`` as a cell is in
``rnnjax.CELLS`` (in each interpreter that uses its runs), trains, resumes and is recorded by name in
config.json, and in each checkpoint as what it was registered as (``registered_as``); a resume under
another optimizer, or the same name registered otherwise, is refused.

An optimizer is ``make(config, per_run) -> optax.GradientTransformation``.
``per_run`` keeps ``lr`` and ``clip`` in its state (``optax.inject_hyperparams``)
rather than in the function: what lets runs with different values be one
vmapped step (``rnnjax.runs``; ``rnnjax.state.check_per_run`` refuses one that
ignores it). The state's structure differs with it; each is what checkpoints of
its kind hold.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import optax

from rnnjax.cells import described
from rnnjax.config import ConfigError
from rnnjax.spelling import as_flags, got, spelt


def clipped(optimizer: Callable[..., optax.GradientTransformation]) -> Callable:
    """The optimizer that clips to ``config.clip``'s global norm, then steps with ``optimizer`` (an optax
    one taking ``learning_rate``) at ``config.lr``: ``OPTIMIZERS["adamw"] = clipped(optax.adamw)``."""
    def make(config: Any, per_run: bool = False) -> optax.GradientTransformation:
        def kept(make):
            if not per_run:
                return make
            # Numbers only: inject_hyperparams calls any callable argument (a weight-decay mask) as a schedule
            # of the step count, which a run alone never does.
            try:
                static = [name for name, arg in inspect.signature(make).parameters.items()
                          if arg.default is not arg.empty and callable(arg.default)]
            except ValueError:      # no signature to read: inject_hyperparams cannot read one either
                static = []
            return optax.inject_hyperparams(make, static_args=static)
        return optax.chain(kept(optax.clip_by_global_norm)(max_norm=config.clip),
                           kept(optimizer)(learning_rate=config.lr))
    make.clipped = optimizer            # what registered_as says
    return make


OPTIMIZERS: dict[str, Callable[[Any, bool], optax.GradientTransformation]] = {
    "sgd": clipped(optax.sgd),          # d2l's
    "adam": clipped(optax.adam),
}
OWN = dict(OPTIMIZERS)                  # rnnjax's own: one registered in place of one is said as a run starts


def make(config: Any, per_run: bool = False) -> optax.GradientTransformation:
    """``config.optimizer`` made for ``config``; ``ConfigError`` in one sentence if none is registered under
    its name here (checked as a run is planned, not as a ``Config`` is made: a restore for inference, which
    reads the parameters alone, needs none) or what is registered makes no optax transformation."""
    check(config.optimizer)
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
    made = maker(config, per_run)
    if not (callable(getattr(made, "init", None)) and callable(getattr(made, "update", None))):
        raise ConfigError(f"{where} made {got(made)}, not an optax transformation (init, update): register "
                          f"{wanted}.")
    return made


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
                          f"{sorted(OPTIMIZERS)}, or register one of your own in rnnjax.OPTIMIZERS "
                          f"(rnnjax.optimizers) in each interpreter that trains its runs"
                          f"{where * as_flags()}.")
