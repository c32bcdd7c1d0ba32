"""Which outputs of a step traced over the devices' axis are one device's own: they follow from a value that
differs between the devices (the batch, ``axis_index``) through no collective over ``rnnjax.parallel.AXIS``
(a ``psum``, a gather; a ring of ``ppermute``s). The state every device holds alike differs nowhere, as in
``shard_map``'s typing of varying values. ``rnnjax.preflight`` refuses a step of one's own whose parameters'
updates or loss are one device's. A number fixed as the step is traced differs nowhere either (``fixed``): a
count of one device's tokens, or of all of them (JAX folds a psum of a constant into a constant).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax

from rnnjax.parallel import AXIS

# Collectives after which every device holds the same value.
_SUMMING = ("psum", "pmax", "pmin", "all_gather")
# Collectives that give each device part of a combination: taken as combining (a ring all-reduce of ppermutes
# is one device's own by type, the same on all by arithmetic).
_EXCHANGING = ("psum_scatter", "reduce_scatter", "all_to_all", "ppermute")


def _collective(eqn: Any) -> str:
    names = eqn.params.get("axes", eqn.params.get("axis_name", ()))
    names = names if isinstance(names, (tuple, list)) else (names,)
    if AXIS not in names:
        return ""
    name = eqn.primitive.name
    return "sum" if name in _SUMMING else "exchange" if name in _EXCHANGING else ""


def _inner(eqn: Any) -> Iterator[Any]:
    """The jaxprs inside an equation: a scan's body, a jit's, a cond's branches."""
    for value in eqn.params.values():
        for inner in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(inner, "jaxpr", inner)          # a ClosedJaxpr's
            if hasattr(inner, "eqns"):
                yield inner


def _combines_inside(jaxpr: Any) -> bool:
    return any(_collective(e) or any(_combines_inside(j) for j in _inner(e)) for e in jaxpr.eqns)


def own(jaxpr: Any, varying: list[bool]) -> list[bool]:
    """Per output of ``jaxpr``: whether it is one device's own, given which of its inputs differ between the
    devices (``varying``)."""
    return [differs and not exchanged for differs, exchanged, _ in _flow(jaxpr, _given(varying))]


def _given(varying: list[bool]) -> list[tuple]:
    return [(v, False, False) for v in varying]


def _flow(jaxpr: Any, flags: list[tuple]) -> list[tuple]:
    """``(differs, exchanged, combined)`` of each output of ``jaxpr`` from those of its inputs: may differ
    between the devices; follows from an exchange; from any collective. Followed into a jit's, a checkpoint's,
    a custom_vjp's jaxpr, a scan's or a while's body (again until its carries' flags hold) and a cond's
    branches."""
    of = {id(v): f for v, f in zip(jaxpr.invars, flags)}

    def flag(v):
        return of.get(id(v), (False, False, False))     # a literal or a constant: the same on every device
    for eqn in jaxpr.eqns:
        given = [flag(v) for v in eqn.invars]
        differs, exchanged, combined = (any(f[i] for f in given) for i in range(3))
        inner, kind = list(_inner(eqn)), _collective(eqn)
        shapes = {(len(j.invars), len(j.outvars)) for j in inner}
        if eqn.primitive.name == "axis_index":
            out = [(True, False, False)]
        elif eqn.primitive.name == "optimization_barrier":      # each output its input
            out = given
        elif kind:
            out = [(differs and kind == "exchange", exchanged or kind == "exchange", True)] * len(eqn.outvars)
        elif len(inner) == 1 and shapes == {(len(eqn.invars), len(eqn.outvars))}:
            out = _carried(eqn, inner[0], given)
        elif eqn.primitive.name == "cond" and shapes == {(len(eqn.invars) - 1, len(eqn.outvars))}:
            # its branch index first
            branches = [_flow(j, given[1:]) for j in inner]
            out = [(given[0][0] or any(b[i][0] for b in branches), *(any(b[i][k] for b in branches)
                                                                     for k in (1, 2)))
                   for i in range(len(eqn.outvars))]
        elif eqn.primitive.name == "while" and {"cond_nconsts", "body_nconsts"} <= set(eqn.params):
            out = _looped(eqn, given)
        elif any(_combines_inside(j) for j in inner):       # another JAX's loop: taken as combining
            out = [(False, exchanged, True)] * len(eqn.outvars)
        else:
            out = [(differs, exchanged, combined)] * len(eqn.outvars)
        of.update((id(v), f) for v, f in zip(eqn.outvars, out))
    return [flag(v) for v in jaxpr.outvars]


def _carried(eqn: Any, inner: Any, given: list[tuple]) -> list[tuple]:
    """``_flow`` into ``inner``; a scan's body again with each carry's flags joined with its last output's,
    until they hold (a carry that differs from its second step on)."""
    out = _flow(inner, given)
    if eqn.primitive.name != "scan":
        return out
    # How many of its inputs are constants and carries: JAX 0.10 counts them, 0.11 splits them (ft_in).
    consts, carries = eqn.params.get("num_consts"), eqn.params.get("num_carry")
    parts = eqn.params["ft_in"].unpack() if hasattr(eqn.params.get("ft_in"), "unpack") else ()
    if len(parts) == 3:
        consts, carries = len(parts[0]), len(parts[1])
    if not isinstance(consts, int) or not isinstance(carries, int):
        return out                  # another JAX: followed once
    while True:
        joined = [tuple(a or b for a, b in zip(given[consts + i], out[i])) for i in range(carries)]
        if joined == given[consts:consts + carries]:
            return out
        given = given[:consts] + joined + given[consts + carries:]
        out = _flow(inner, given)


def _looped(eqn: Any, given: list[tuple]) -> list[tuple]:
    """A while's outputs: its body's, followed until the carries' flags hold (as a scan's, run at least
    once); each differs where its condition does (the devices may loop other counts)."""
    cn, bn = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    cond, body = eqn.params["cond_jaxpr"].jaxpr, eqn.params["body_jaxpr"].jaxpr
    consts, carry = given[cn:cn + bn], given[cn + bn:]
    while True:
        out = _flow(body, consts + carry)
        joined = [tuple(a or b for a, b in zip(c, o)) for c, o in zip(carry, out)]
        if joined == carry:
            break
        carry = joined
    differs = _flow(cond, given[:cn] + carry)[0][0]
    return [(o[0] or differs, *o[1:]) for o in out]


def outputs(traced: Any, shape: Any, varying: list[bool]) -> dict[str, tuple]:
    """The ``_flow`` flags of each output of ``traced`` (a ClosedJaxpr over the devices' axis; its outputs'
    tree ``shape``) by path (``jax.tree_util.keystr``): what ``alone`` and ``fixed`` read, followed once."""
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(shape)[0]]
    return dict(zip(paths, _flow(traced.jaxpr, _given(varying))))


def alone(flows: dict[str, tuple], wanted: Callable[[str], bool]) -> list[str]:
    """The outputs (``outputs``' ``flows``) that ``wanted`` picks by path and that are one device's own."""
    return [k for k, (differs, exchanged, _) in flows.items() if wanted(k) and differs and not exchanged]


def fixed(flows: dict[str, tuple], wanted: Callable[[str], bool]) -> list[str]:
    """Those that follow from neither the devices' inputs nor a collective: the same number on every
    device, which may be each one's share or the whole."""
    return [k for k, (differs, _, combined) in flows.items() if wanted(k) and not differs and not combined]
