"""What ``rnnjax.loop.run`` is given, checked before it writes anything: a state that is the plan's, and a
step and an evaluation whose metrics can be logged (traced on the host as they will run; nothing computed).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from rnnjax import metrics as metrics_lib, summed
from rnnjax.spelling import got, in_words, leaf_types, spelt, type_change
from rnnjax.data import WindowedText
from rnnjax.parallel import AXIS
from rnnjax.start import Plan
from rnnjax.state import abstract_run_states, abstract_train_state, check_params


# loop.run's step and evaluation as called, and what rnnjax.train has for each (train_step takes one batch,
# train_steps a stack of them, not windows of the token stream on the device).
_CALLED = {"step": ("step(state, tokens, windows, axis_name)", "train_windows"),
           "evaluate": ("evaluate(state, batches, axis_name), a stack of batches", "eval_steps")}
_TRAIN = ("train_step", "train_steps", "train_windows", "eval_step", "eval_steps")


def check_functions(step: Callable, evaluate: Callable, pmapped: bool = False) -> None:
    """``ValueError`` for a function of ``rnnjax.train`` given as the other (JAX's TypeError from inside
    pmap, or an unpacking error from inside the model, otherwise), or, over several devices (``pmapped``),
    for one that takes no ``axis_name``."""
    for role, given in (("step", step), ("evaluate", evaluate)):
        inner = getattr(given, "func", given)           # a functools.partial of one
        name = getattr(inner, "__name__", "")
        called, wanted = _CALLED[role]
        if getattr(inner, "__module__", "") == "rnnjax.train" and name in _TRAIN and name != wanted:
            raise ValueError(f"loop.run calls its {role} as {called}, and rnnjax.train.{name} is not that: "
                             f"give rnnjax.train.{wanted}.")
        try:
            params = inspect.signature(given).parameters.values()
        except (TypeError, ValueError):     # no signature to read: taken on trust
            continue
        takes = any(p.name == "axis_name" or p.kind is p.VAR_KEYWORD for p in params)
        if pmapped and not takes:
            raise ValueError(f"loop.run calls its {role} as {called}, over several devices with an "
                             "axis_name (to average over them, as rnnjax.train's functions do), and "
                             f"{getattr(given, '__name__', role)} takes no axis_name.")


def checked_step(step: Callable) -> Callable:
    """``step`` (``loop.run``'s), its metrics checked as it is traced, before any step runs: each a number
    a step, as ``loss_sum``, and ``loss_sum`` and ``count`` there (``ValueError`` in one sentence; they
    failed after an epoch's steps, as its record was made). A new function each call, which JAX's caches
    hold weakly: its programs go with it (``rnnjax.compiled`` keeps the latest runs'). Over devices, a step
    of one's own is also checked for what it combines over them (its ``count_fixed``: whether its
    ``count`` is fixed as it is traced)."""
    @functools.wraps(step)
    def checked(*args, **kwargs):
        if kwargs.get("axis_name") is not None and not ours(step):
            checked.count_fixed = _check_combined(step, args, kwargs)
        from rnnjax.train import keys_noted     # here: it imports this module
        with keys_noted() as keys:
            out = step(*args, **kwargs)
        checked.keyless = bool(keys) and not any(keys)      # dropout off, whatever the config says
        _check_out(out, args)
        return out
    return checked


def ours(f: Callable) -> bool:
    """Whether ``f`` (or the function of a partial of it) is rnnjax's own step or evaluation: by identity,
    as a wrapper (functools.wraps) takes their names."""
    from rnnjax import runs, train      # here: each imports this module
    return getattr(f, "func", f) in (train.train_windows, train.eval_steps, runs.train_runs, runs.eval_runs)


def _check_out(out: Any, args: tuple) -> None:
    """``checked_step``'s checks of what a step returned as it is traced."""
    metrics = out[1] if isinstance(out, (tuple, list)) and len(out) == 2 else None
    if not isinstance(metrics, Mapping) or not {"loss_sum", "count"} <= set(metrics):
        lacks = " and ".join(k for k in ("loss_sum", "count") if k not in (metrics or ()))
        given = (f"its metrics lack {lacks}" if isinstance(metrics, Mapping) else
                 f"its metrics are {got(metrics)}" if metrics is not None else f"it returns {got(out)}")
        raise ValueError(f"loop.run's step returns (state, metrics), metrics a dict holding loss_sum and "
                         f"count a step (as rnnjax.train.train_step's); {given}.")
    check_keys("The step's", metrics)
    changed = type_change(leaf_types(args[0]), leaf_types(out[0]))
    if changed:         # the next call's program, compiled for the state given, would fail deep inside
        raise ValueError(f"loop.run's step returns a state of other shapes or dtypes than it was given "
                         f"({changed}): keep each as it was (x.astype(given.dtype)).")
    shape = np.shape(metrics["loss_sum"])
    shaped = {k: np.shape(v) for k, v in metrics.items() if np.shape(v) != shape or not shape}
    if shaped:      # not shape: summed over the call's steps, which are on a first axis
        named = ", ".join(f"{k!r} (shape {s})" for k, s in shaped.items())
        once = (" (one number for the call, as of the state it returns: jnp.full_like(metrics["
                "'loss_sum'], x) gives it each step)") if shape and () in shaped.values() else ""
        raise ValueError(f"The step's metrics must each be one number a step, the call's steps on a "
                         "first axis as train_windows stacks them (their epoch means are logged); "
                         f"{named} {'is' if len(shaped) == 1 else 'are'} not: one a step, each reduced "
                         f"to one number (jnp.mean, jnp.linalg.norm) or given its own key{once}.")


def _check_combined(step: Callable, args: tuple, kwargs: dict) -> bool:
    """``ValueError`` unless ``step`` over devices (traced again, for its collectives) sums the gradients
    that update the parameters, and ``loss_sum`` and ``count``: else each device trains a model of its own,
    and the loss logged is one device's; and unless each metric of its own is combined over them too (the
    first device's would be logged). Whether its ``count`` is fixed as it is traced (``count_fixed``)."""
    traced, shape = jax.make_jaxpr(functools.partial(step, **kwargs), return_shape=True)(*args)
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2 and isinstance(shape[1], Mapping)):
        return False            # not (state, metrics): _check_out says what it returns
    flows = summed.outputs(traced, shape, _varying(args))
    alone = summed.alone(flows, lambda k: k.startswith(("[0].params", "[1]")))
    params = [k[len("[0].params"):] for k in alone if k.startswith("[0].params")]
    what = [k for k in ("loss_sum", "count") if f"[1]['{k}']" in alone]
    if params:
        every = len(params) == len(jax.tree.leaves(getattr(args[0], "params", None)))
        what.insert(0, "the gradients" if every else f"the gradients of {params[0]}"
                    + f" and {len(params) - 1} more parameters" * (len(params) > 1))
    if what:
        hint = " (the gradients: under pmap a pmean-ed loss's are each device's own)" if params else ""
        raise ValueError(f"loop.run's step sums {in_words(what)} over none of the devices it runs on "
                         "(jax.lax.psum over its axis_name): each would train a model of its own, or log its "
                         f"own loss; give axis_name on to rnnjax.train.train_windows, or psum them{hint}.")
    _check_own_metrics("loop.run's step", shape[1], [k[len("[1]"):] for k in alone if k.startswith("[1]")])
    return bool(summed.fixed(flows, lambda k: k == "[1]['count']"))


def _check_own_metrics(who: str, metrics: Mapping, alone: list[str]) -> None:
    """``ValueError`` naming the first of a step's or evaluation's ``metrics`` whose value (by path,
    ``['key']``, ``alone``) is one device's."""
    named = [k for k in metrics if any(p == f"[{k!r}]" or p.startswith(f"[{k!r}][") for p in alone)]
    if named:
        raise ValueError(f"{who}'s metric {named[0]!r} is each device's own (of its part of the batch, "
                         "through no collective), and the first device's would be logged: combine it over "
                         "axis_name (jax.lax.psum of a sum, jax.lax.pmean of a mean).")


def counted_share(counts: Any, wanted: Any, num_shards: int, who: str, of: str = "the global batch"
                  ) -> str | None:
    """A warning where ``counts`` (a step's ``count`` on the host, per run and step; an evaluation's, per
    run), fixed as it is traced (``count_fixed``), are each device's share of ``wanted``, the real tokens
    ``of`` the batch: a count of one device's tokens, or a psum of a constant (JAX folds one into a
    constant) that counts a share of them (a burn-in's half window): neither the trace nor the value tells
    which. Compared where ``wanted`` is largest: a ragged batch's padding may leave any share."""
    counts, wanted = np.asarray(counts, np.float64), np.asarray(wanted, np.float64)
    if counts.shape != wanted.shape or num_shards == 1 or not wanted.size or wanted.max() <= 0:
        return None
    whole = wanted == wanted.max()
    if not np.allclose(counts[whole] * num_shards, wanted[whole]):
        return None
    return (f"warning: loop.run's {who} counts {counts[whole][0]:,.0f} tokens, a number fixed as it is "
            f"traced, where {of} has {wanted[whole][0]:,.0f}: if that is one device's tokens, the perplexity "
            f"logged is the true one to the power {num_shards}; sum the count over the devices (jax.lax.psum "
            "of a traced value over axis_name), as rnnjax.train's functions do")


def _varying(args: tuple) -> list[bool]:
    """Which of the leaves of a step's or evaluation's arguments may differ between the devices: all but the
    state's (``args[0]``), which every device holds alike."""
    return [i >= len(jax.tree.leaves(args[0])) for i in range(len(jax.tree.leaves(args)))]


def check_state(p: Plan, state: Any, vocab_size: int) -> None:
    """``ValueError`` in one sentence unless ``state`` can train plan ``p`` (``rnnjax.loop.run``'s
    docstring)."""
    params, step = getattr(state, "params", None), getattr(state, "step", None)
    if params is None or step is None:
        raise ValueError(f"loop.run trains a TrainState (rnnjax.state.create_train_state), not "
                         f"{got(state)}.")
    if p.runs:
        if {np.shape(x)[:1] for x in jax.tree.leaves(params)} != {(len(p.runs),)}:
            raise ValueError(f"The state does not hold {len(p.runs)} runs' parameters stacked on a first "
                             f"axis (rnnjax.create_run_states).")
        params = jax.tree.map(lambda x: x[0], params)
    check_params(params, p.config, vocab_size)
    made = (abstract_run_states(list(p.runs), vocab_size) if p.runs else
            abstract_train_state(p.config, vocab_size)).opt_state
    given = getattr(state, "opt_state", None)
    if (jax.tree.structure(given) != jax.tree.structure(made)
            or [np.shape(x) for x in jax.tree.leaves(given)] != [x.shape for x in jax.tree.leaves(made)]):
        named = spelt("optimizer", p.config.optimizer)
        one_run = abstract_train_state(p.config, vocab_size).opt_state
        if p.runs and jax.tree.structure(given) == jax.tree.structure(one_run):    # one run's states stacked
            raise ValueError(f"The state's optimizer state is not the one {named} makes for runs trained "
                             "together, each run's lr and clip in it: make the state with "
                             "rnnjax.create_run_states(configs, vocab_size).")
        raise ValueError(f"The state's optimizer state is not the one {named} makes: the run records that "
                         "optimizer and a resume makes it, so name another in "
                         "the config (rnnjax.optimizers; one's own registered in rnnjax.OPTIMIZERS).")
    steps = sorted({int(s) for s in np.ravel(jax.device_get(step))})
    want = 0 if p.step is None else p.step
    if steps != [want]:
        raise ValueError(
            f"The state is at step {', '.join(map(str, steps))}, the planned run at {want}: " + (
                "a new run starts at step 0 (state.replace(step=0))." if p.step is None else
                f"it resumes from {p.workdir}'s checkpoint, whose state is the plan's (Plan.state)."))


def check_evaluation(p: Plan, evaluate: Callable, state: Any, data: WindowedText) -> bool:
    """``ValueError`` unless ``evaluate`` returns ``loss_sum``, ``count`` and metrics that
    ``check_evaluated`` takes: traced on the host as it will run (over devices, with their axis
    name), nothing computed, before any step (not once the first epoch has trained). Whether its
    ``count`` is fixed as it is traced, over devices (``counted_share`` takes its value)."""
    # Every validation batch has the first's shapes: the stack's, without making it.
    batches = jax.tree.map(lambda x: jax.ShapeDtypeStruct((data.num_batches(False), *np.shape(x)),
                                                          np.asarray(x).dtype), next(data.val_batches()))

    def checked(*args, **kwargs):       # its keys, before JAX sorts them (keys of mixed types fail there)
        out = evaluate(*args, **kwargs)
        if isinstance(out, dict):
            check_keys("An evaluation's", out)
        return out
    traced = None
    if p.dp.pmapped:            # as pmap calls it, with its axis: traced for its collectives too
        traced, out = jax.make_jaxpr(functools.partial(checked, axis_name=AXIS), return_shape=True,
                                     axis_env=[(AXIS, p.dp.num_shards)])(state, batches)
    else:
        out = jax.eval_shape(checked, state, batches)
    if not (isinstance(out, dict) and {"loss_sum", "count"} <= set(out)):
        raise ValueError(f"An evaluation must return a dict of 'loss_sum' and 'count' (as "
                         f"rnnjax.train.eval_steps does) and any metrics of its own, not {got(out)}.")
    sums = ("['loss_sum']", "['count']")
    flows = ({} if traced is None or ours(evaluate) else
             summed.outputs(traced, out, _varying((state, batches))))
    alone = summed.alone(flows, lambda k: True)
    if set(alone) & set(sums):
        named = " and ".join(k for k in ("loss_sum", "count") if f"['{k}']" in alone)
        raise ValueError(f"loop.run's evaluate sums {named} over none of the "
                         f"{p.dp.num_shards} devices it runs on (jax.lax.psum over its axis_name): the "
                         "validation logged would be one device's share; give axis_name on to "
                         "rnnjax.train.eval_steps, or psum them.")
    _check_own_metrics("loop.run's evaluate", out, [k for k in alone if k not in sums])
    check_evaluated(out, (len(p.runs),) if p.runs else ())
    return bool(summed.fixed(flows, lambda k: k == "['count']"))


def check_evaluated(metrics: dict, shape: tuple = ()) -> None:
    """``ValueError`` in one sentence unless each of an evaluation's ``metrics`` (``loss_sum``, ``count`` and
    its own) is one number, an array of ``shape`` (runs trained together have one each), and none of its
    own is logged under the name of rnnjax's or of another (``metrics.val_name``)."""
    own, same = _logged_names(metrics, metrics_lib.val_name)
    taken = [k for k, name in own.items() if name in map(metrics_lib.val_name, metrics_lib.VAL_OWN)]
    if taken or same:
        clash = (f"{', '.join(map(repr, taken))} would be rnnjax's {own[taken[0]]}: name "
                 f"{'it' if len(taken) == 1 else 'them'} otherwise" if taken else same)
        raise ValueError(f"An evaluation's own metrics are logged as val_<key> (a <key>_sum as val_<key>, "
                         f"per token), and {clash}.")
    shapes = {k: tuple(v.shape) if hasattr(v, "shape") and hasattr(v, "dtype") else None
              for k, v in metrics.items()}
    wrong = {k: s for k, s in shapes.items() if s != shape}
    if wrong:
        named = ", ".join(f"{k!r} ({got(metrics[k]) if s is None else f'shape {s}'})"
                          for k, s in wrong.items())
        raise ValueError(f"An evaluation's metrics must each be one number an epoch (logged as val_<key>); "
                         f"{named} {'is' if len(wrong) == 1 else 'are'} not: reduce to one number.")


def _logged_names(metrics: dict, name_of: Callable[[str], str]) -> tuple[dict, str]:
    """The record's name (``name_of``) of each of ``metrics``' own keys (all but ``loss_sum`` and ``count``),
    and a clause naming keys that one name would hold ('' if none)."""
    own = {k: name_of(k) for k in metrics if k not in ("loss_sum", "count")}
    same = [k for k, name in own.items() if list(own.values()).count(name) > 1]
    return own, f"{' and '.join(map(repr, same))} would both be {own[same[0]]}: rename one" if same else ""


def check_keys(whose: str, metrics: dict) -> None:
    """``ValueError`` in one sentence unless ``metrics`` are named by strings, as a record's keys are (JAX
    cannot even order keys of mixed types)."""
    other = [k for k in metrics if not isinstance(k, str)]
    if other:
        raise ValueError(f"{whose} metrics are named by strings, the keys of each epoch's record; "
                         f"{', '.join(map(repr, other))} {'is' if len(other) == 1 else 'are'} not.")


def check_step(metrics: dict) -> None:
    """``ValueError`` in one sentence unless each of a step's ``metrics`` is one number, logged under a name
    that is neither one of the record's own nor another's (read from their shapes as the step is traced:
    before any step runs)."""
    check_keys("train_step's", metrics)
    record_own = metrics_lib.RECORD_OWN
    own, same = _logged_names(metrics, metrics_lib.train_name)
    taken = [k for k, name in own.items() if name in (*record_own, "train_") or name.startswith("val_")]
    if taken or same:
        one = len(taken) == 1
        clash = (f"{', '.join(f'{k!r}' + (f' (as {own[k]})' if own[k] != k else '') for k in taken)} "
                 f"{'is' if one else 'are'} the record's own ({', '.join(record_own)}, val_*): name "
                 f"{'it' if one else 'them'} otherwise" if taken else same)
        raise ValueError(f"train_step's metrics are logged by their names in each epoch's record (a "
                         f"<key>_sum as train_<key>, per token), and {clash}.")
    shaped = {k: tuple(v.shape) for k, v in metrics.items() if getattr(v, "shape", ()) != ()}
    if shaped:
        named = ", ".join(f"{k!r} (shape {s})" for k, s in shaped.items())
        raise ValueError(f"train_step's metrics must each be one number a step (their epoch means are "
                         f"logged); {named} {'is' if len(shaped) == 1 else 'are'} not: reduce to one number "
                         "(jnp.mean, jnp.linalg.norm), or give each number its own key.")
