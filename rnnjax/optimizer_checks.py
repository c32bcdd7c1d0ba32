"""The checks of an optimizer a run names (``rnnjax.optimizers``), made before the run writes anything:
that it steps as a run steps it (``check_update``: on the gradients alone, its state keeping its type),
that runs trained together each keep their own rate and clip (``check_kept``, ``check_rates``), and whether
a resumed one updates anything at all (``stalled``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax.optimizers import OPTIMIZERS, OWN, make, raised
from rnnjax.spelling import leaf_types, spelt, type_change

STALL_PROBES = 64      # steps an optimizer that accumulates (optax.MultiSteps) may wait between its updates


def stalled(config: Any, state: Any, per_run: bool = False) -> bool:
    """Whether ``config.optimizer`` from ``state`` (a ``TrainState``, one run's) updates nothing over
    ``STALL_PROBES`` steps of gradients of global norm 1 (under any clip, and small enough for an optimizer
    that skips large updates): its rate is 0, as a schedule's of a fixed count of steps past its end."""
    tx = make(config, per_run)
    try:
        return not bool(_first_moved(tx, state.params, state.opt_state)[1])
    except Exception:       # whatever it raises: the run's own checks (check_update) say it
        return False


def _first_moved(tx: optax.GradientTransformation, params: Any, opt_state: Any) -> tuple[Any, jax.Array]:
    """``(updates, moved)``: the first update ``tx`` makes from ``opt_state`` that is not all zeros, given
    gradients of global norm 1, within ``STALL_PROBES`` steps, and whether there was one. One compiled
    loop, which stops at it."""
    def probe(params, opt_state):
        size = sum(x.size for x in jax.tree.leaves(params))
        grads = jax.tree.map(lambda x: jnp.full_like(x, size ** -0.5), params)

        def step(carry):
            i, opt_state, _, _ = carry
            updates, opt_state = tx.update(grads, opt_state, params)
            moved = jnp.any(jnp.stack([jnp.any(u != 0) for u in jax.tree.leaves(updates)]))
            return i + 1, opt_state, updates, moved
        zero = jax.tree.map(jnp.zeros_like, params)
        return jax.lax.while_loop(lambda c: (c[0] < STALL_PROBES) & ~c[3], step,
                                  (0, opt_state, zero, jnp.array(False)))[2:]
    return jax.jit(probe)(params, opt_state)


def changing(configs: list[Any]) -> list[tuple[str, str]]:
    """The (optax name, ``Config`` field) of the hyperparameters the runs differ in."""
    return [(name, field) for name, field in (("learning_rate", "lr"), ("max_norm", "clip"))
            if len({getattr(c, field) for c in configs}) > 1]


def _number(value: Any) -> float | str:
    """A hyperparameter an optimizer's state holds, as a float; what it is where it is none (a schedule's
    state, as inject_hyperparams keeps a schedule given as the rate)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return f"a {type(value).__name__}"


def check_kept(configs: list[Any], opt_states: list) -> None:
    """``ValueError`` unless each run's optimizer state (``opt_states``, one per config) holds its own ``lr``
    and ``clip`` where the runs differ in them."""
    for name, field in changing(configs):
        for c, opt_state in zip(configs, opt_states):
            found = [_number(v) for _, v in optax.tree_utils.tree_get_all_with_path(opt_state, name)]
            value = getattr(c, field)
            if not found or any(v != float(np.float32(value)) for v in found):
                raise ValueError(
                    f"Runs of different {field} train in one step only where their optimizer, made with "
                    f"per_run=True (rnnjax.optimizers), keeps each run's {field} in its state, as {name!r} "
                    f"(optax.inject_hyperparams, as rnnjax.optimizers.clipped does); for a run of "
                    f"{field}={value} it holds {found or 'none'}.")


def check_update(config: Any, state: Any, per_run: bool = False) -> None:
    """``ValueError`` in one sentence unless ``config.optimizer`` steps as a run steps it, on the gradients
    alone (``tx.update(grads, opt_state, params)``), keeping its state's type: traced on ``state``, a run's
    abstract state (``rnnjax.state.abstract_train_state``; of runs trained together, one run's, ``per_run``),
    computing nothing."""
    try:
        stepped = jax.eval_shape(lambda s: s.apply_gradients(grads=s.params), state).opt_state
    except Exception as e:      # one's own optimizer, whatever it raises: before any work, not after it
        name = spelt('optimizer', config.optimizer)
        if traced(per_run, e):
            raise ValueError(f"{name} cannot step{failing(per_run, e)}.") from None
        more = isinstance(e, AttributeError) or "required" in str(e)     # an argument, or params of its own
        hint = (": one that needs more (optax.contrib.reduce_on_plateau a value=, optax.lookahead parameters "
                "of its own) does not train here" if more else "")
        raise ValueError(f"{name} cannot step on the gradients alone, as a run steps it"
                         f"{failing(False, e)}{hint}.") from None
    what = type_change(leaf_types(state.opt_state), leaf_types(stepped))
    if what:         # a call's steps are one scan, whose carry keeps its type
        why = ("; runs trained together keep its hyperparameters in their state as float32 arrays, which "
               "turn a bfloat16 parameter's state float32: train them one by one, or keep the parameters "
               "float32 with compute_dtype='bfloat16'" if per_run and "bfloat16" in what else "")
        raise ValueError(f"{spelt('optimizer', config.optimizer)} returns a state of other shapes or dtypes "
                         f"than it was given ({what}): a run's steps need one that keeps them{why}.")


def traced(per_run: bool, e: Exception) -> bool:
    """Whether an optimizer made ``per_run`` failed as Python branched on a hyperparameter it keeps traced."""
    return per_run and isinstance(e, jax.errors.ConcretizationTypeError)


def failing(per_run: bool, e: Exception) -> str:
    """The clause that ends a sentence refusing an optimizer that raised ``e``: the error, and why where it
    is ``traced``."""
    said = raised(e)
    if not traced(per_run, e):
        return f" ({said})"
    return (f" as runs trained together need it ({said}): it branches in Python on a hyperparameter that "
            "each run keeps in its state, traced (optax.inject_hyperparams): for a schedule made from the "
            "rate, scale one of peak 1 by it (lambda count: learning_rate * schedule(count)); another, set "
            "it inside the function, not as an argument; or train the runs one by one")


def check_rates(configs: list[Any], params: Any) -> None:
    """``ValueError`` unless runs of different ``lr`` step differently from ``params`` (zeros of the model's):
    an optimizer of one's own may keep each run's rate in its state (``check_kept``) and never read it (a
    schedule not scaled by ``learning_rate``), training every run alike under their rates' names. Each
    run's first update that is not zero is compared (``stalled``'s probe: a warmup may start at 0)."""
    name = configs[0].optimizer
    lrs = list(dict.fromkeys(c.lr for c in configs))
    if len(lrs) < 2 or OPTIMIZERS[name] is OWN.get(name):      # rnnjax's own read it
        return
    pair = [next(c for c in configs if c.lr == lr) for lr in lrs[:2]]
    first = [_first_update(c, params) for c in pair]
    if all(u is not None for u in first) and all(
            np.array_equal(x, y) for x, y in zip(jax.tree.leaves(first[0]), jax.tree.leaves(first[1]))):
        raise ValueError(f"Runs of different lr train alike under {spelt('optimizer', name)}: its first "
                         f"updates at lr {pair[0].lr} and {pair[1].lr} are the same, the rate kept in its "
                         "state but never read (a schedule made from the rate scales one of peak 1 by it: "
                         "lambda count: learning_rate * schedule(count)).")


def _first_update(config: Any, params: Any) -> Any:
    """``_first_moved``'s update of ``config.optimizer`` (``per_run``) from its state for ``params``, on the
    host; ``None`` if none."""
    tx = make(config, per_run=True)
    try:
        updates, moved = _first_moved(tx, params, tx.init(params))
    except Exception:       # whatever it raises: the run's own checks (check_update) say it
        return None
    return jax.device_get(updates) if bool(moved) else None
