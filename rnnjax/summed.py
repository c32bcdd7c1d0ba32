"""Which outputs of a step traced over the devices' axis are no device's own: they follow from a collective
(``psum``, a ring of ``ppermute``...) over ``rnnjax.parallel.AXIS`` of values that follow from the inputs.
``rnnjax.preflight`` refuses a step of one's own whose parameters' updates or loss are one device's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax

from rnnjax.parallel import AXIS


# The collectives that combine the devices' values: a sum (pmean is one), an extreme, a gather, an exchange
# (an all-reduce written as a ring of ppermutes).
_COMBINING = ("psum", "pmax", "pmin", "all_gather", "psum_scatter", "reduce_scatter", "all_to_all",
              "ppermute")


def _combines(eqn: Any) -> bool:
    names = eqn.params.get("axes", eqn.params.get("axis_name", ()))
    names = names if isinstance(names, (tuple, list)) else (names,)
    return eqn.primitive.name in _COMBINING and AXIS in names


def _inner(eqn: Any) -> Iterator[Any]:
    """The jaxprs inside an equation: a scan's body, a jit's, a cond's branches."""
    for value in eqn.params.values():
        for inner in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(inner, "jaxpr", inner)          # a ClosedJaxpr's
            if hasattr(inner, "eqns"):
                yield inner


def _combines_inside(jaxpr: Any) -> bool:
    return any(_combines(e) or any(_combines_inside(j) for j in _inner(e)) for e in jaxpr.eqns)


def combined(jaxpr: Any) -> list[bool]:
    """Per output of ``jaxpr``: whether it is no device's own: it follows from values combined over the
    devices' axis (``psum``) of values that follow from the inputs, or it is an input as given (a frozen
    parameter), or it follows from no input (a count known as it is traced)."""
    return [made or given or not fed
            for made, fed, given in _flow(jaxpr, [(False, True, True)] * len(jaxpr.invars))]


def _flow(jaxpr: Any, flags: list[tuple]) -> list[tuple]:
    """``(made, fed, given)`` of each output of ``jaxpr`` from those of its inputs: follows from a value
    combined over the devices' axis, follows from an input, is an input as given. Followed into an
    equation whose one jaxpr takes and gives its own inputs and outputs (a scan's body, once: a carry that
    is combined only from the second step on is missed; a jit's, a custom_vjp's, a checkpoint's); any other
    with a collective inside (a cond's, a while's) is taken as combining all it returns."""
    of = {id(v): f for v, f in zip(jaxpr.invars, flags)}

    def flag(v):
        return of.get(id(v), (False, False, False))         # a literal or a constant: no input's
    for eqn in jaxpr.eqns:
        given = [flag(v) for v in eqn.invars]
        made, fed = any(f[0] for f in given), any(f[1] for f in given)
        inner = list(_inner(eqn))
        if _combines(eqn):      # of a value known as traced (psum(1); a pmean's backward, of ones): nothing
            out = [(fed, fed, False)] * len(eqn.outvars)
        elif len(inner) == 1 and (len(inner[0].invars), len(inner[0].outvars)) == (len(eqn.invars),
                                                                                   len(eqn.outvars)):
            out = _flow(inner[0], given)
        else:
            out = [(made or any(_combines_inside(j) for j in inner), fed, False)] * len(eqn.outvars)
        of.update((id(v), f) for v, f in zip(eqn.outvars, out))
    return [flag(v) for v in jaxpr.outvars]


def alone(traced: Any, shape: Any, wanted: Callable[[str], bool]) -> list[str]:
    """The outputs of ``traced`` (a ClosedJaxpr over the devices' axis; its outputs' tree ``shape``) that
    ``wanted`` picks by path (``jax.tree_util.keystr``) and that follow from no value combined over the
    devices: one device's own."""
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(shape)[0]]
    return [k for k, summed in zip(paths, combined(traced.jaxpr)) if wanted(k) and not summed]
