"""The cell protocol, and the checks that a cell ``rnnjax.CELLS`` makes keeps it, before any work.

The protocol (flax's ``nn.RNNCellBase``, which ``nn.RNN`` also takes) is all
that ``RNN``, ``RNNLM``, generation and checkpoints ask of a cell:

- ``__call__(carry, x (B, I)) -> (carry, y (B, H))``, the new carry of the
  old one's shapes, y real floating point;
- ``initialize_carry(rng, input_shape (B, I)) -> carry`` (``nn.nowrap``),
  its state (B, ...) floating point or complex (counters, masks beside);
- ``num_feature_axes`` (1);
- constructed as ``Cell(Config.num_hiddens)`` (flax's cells: ``features``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from typing import Any

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax.cells import CELLS, OneHot, compute_dtype
from rnnjax.config import ConfigError
from rnnjax.spelling import spelt

# The batch ``step_problem`` steps: more than one, so that a cell that drops or mixes the batch shows it.
STEP_BATCH = 2


def lacks(cell: Any) -> list[str]:
    """What of the cell protocol (above) the made ``cell`` lacks, as the protocol names it: [] for a cell."""
    missing = []
    try:
        inspect.signature(cell).bind(None, None)
    except TypeError:           # not callable, or not with (carry, x)
        missing.append("__call__(carry, x)")
    except ValueError:          # no signature to read (a builtin): taken on trust
        pass
    try:                        # flax's older (rng, batch_dims, size), a static method, binds no (rng, shape)
        inspect.signature(cell.initialize_carry).bind(None, None)
        if getattr(type(cell), "initialize_carry", None) is nn.RNNCellBase.initialize_carry:  # raises, unmade
            raise TypeError
    except (AttributeError, TypeError):
        missing.append("initialize_carry(rng, input_shape)")
    except ValueError:
        pass
    try:
        cell.num_feature_axes
    except (AttributeError, NotImplementedError):        # nn.RNNCellBase's raises the latter
        missing.append("num_feature_axes")
    return missing


class StepProblem(ConfigError):
    """A made cell's step breaks the protocol (``step_problem``), on the input width it was checked at."""


class StepFailed(Exception):
    """``step_problem``'s step failed in the cell's own code: a clause, the cell's error its cause."""


def step_problem(cell: nn.Module, input_size: int) -> str | None:
    """Where one step of the made ``cell`` (one that ``lacks`` nothing) on a batch of ``STEP_BATCH`` inputs
    of ``input_size`` features, as ``rnnjax.model.RNN`` gives them, breaks the protocol, in a clause;
    ``None`` if it keeps it; ``StepFailed`` if it raises. Shapes and dtypes only: nothing is computed."""
    def one_step(ids):
        x = OneHot(ids, input_size)
        x = x if getattr(cell, "accepts_one_hot", False) else x.dense(compute_dtype(cell))
        carry = cell.initialize_carry(jax.random.key(0), x.shape)
        out = cell.apply(cell.init(jax.random.key(0), carry, x), carry, x)   # init gives any stream a key
        return carry, out
    try:
        carry, out = jax.eval_shape(one_step, jax.ShapeDtypeStruct((STEP_BATCH,), jnp.int32))
    except flax.errors.InvalidRngError as e:        # a Dropout inside the cell, say
        stream = re.search(r'needs PRNG for "(\w+)"', str(e))
        hint = (f": rnnjax's dropout acts between layers ({spelt('dropout')} with {spelt('num_layers', 2)} "
                "or more)" if stream and stream[1] == "dropout" else "")
        named = f"a {stream[1]!r}" if stream else "a"
        return f"asks for {named} random key, which a cell is not given{hint}"
    except Exception as e:      # the cell's own code: its error in a clause, and as the cause (its traceback)
        said = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else ""
        raise StepFailed(f"fails on a batch of {STEP_BATCH} inputs and the carry initialize_carry gives for "
                         f"it ({type(e).__name__}{': ' + said if said else ''})") from e
    if not (isinstance(out, tuple) and len(out) == 2):
        return f"returns {_shapes(out)}, not a pair (carry, y)"
    new, y = out
    leaves = jax.tree.leaves(carry)
    # Its state: the floating-point (or complex) arrays; a step counter or a reset mask may be parts too.
    states = [a for a in leaves if a.ndim >= 1 and jnp.issubdtype(a.dtype, jnp.inexact)]
    if not states:      # cast back to the carry's dtype at each step, no gradient would flow through time
        return (f"starts from initialize_carry's {_shapes(carry)}: a cell's state must be floating point (or "
                "complex); counters and masks may be carried beside it")
    if any(a.shape[0] != STEP_BATCH for a in states):
        return (f"starts from initialize_carry's {_shapes(carry)} for a batch of {STEP_BATCH} inputs: its "
                "state must have the batch first")
    if jax.tree.structure(new) != jax.tree.structure(carry) or any(
            a.shape != b.shape for a, b in zip(jax.tree.leaves(new), leaves)):
        return (f"returns a carry of {_shapes(new)} from initialize_carry's {_shapes(carry)}: the new carry "
                "must have the shapes of the one it replaces")
    if not isinstance(y, jax.ShapeDtypeStruct) or y.ndim != 2 or y.shape[0] != STEP_BATCH:
        return f"returns y as {_shapes(y)} for {STEP_BATCH} inputs, not one (batch, features) array"
    if not jnp.issubdtype(y.dtype, jnp.floating):
        # else no gradient reaches the cell's weights: it would train as a model of the tokens' frequencies
        return f"returns y as {_shapes(y)}: the output layer takes real floating-point features"
    return None


def sized_otherwise(factory: Any) -> str | None:
    """``name: type`` of the field that ``factory(num_hiddens)``, as rnnjax makes a cell, gives the hidden
    size to, where it is declared other than an int (``scale: float``); ``None`` where it is an int, or
    where ``factory`` is not a cell class or a ``functools.partial`` of one (a function places it itself)."""
    while isinstance(factory, functools.partial) and not factory.args:
        factory = factory.func
    if not (isinstance(factory, type) and dataclasses.is_dataclass(factory)):
        return None
    fields = [f for f in dataclasses.fields(factory)       # where a positional argument goes
              if f.init and not f.kw_only and f.name not in ("parent", "name")]
    if not fields:
        return None
    name, declared = fields[0].name, fields[0].type
    if not isinstance(declared, str):       # Optional[int].__name__ is "Optional": its repr names the int
        named = isinstance(declared, type) or inspect.isbuiltin(declared)
        declared = declared.__name__ if named else repr(declared)
    # Only types no size is of (of a union, each but None): an alias or a NewType of int may be meant as one
    heads = [re.sub(r"^((typing|collections\.abc|builtins|numpy|np|jax\.numpy|jnp|jax)\.)+", "", t)
             .split("[")[0].strip() for t in _members(declared)]
    return f"{name}: {declared}" if heads and all(h in _NOT_SIZES for h in heads) else None


def check_sized(name: str, cell: nn.Module, num_hiddens: int) -> None:
    """``ConfigError`` where ``CELLS[name]`` gave ``num_hiddens`` to a first field no size is of
    (``sized_otherwise``): it would train at another width than the config says, silently."""
    field = sized_otherwise(CELLS[name])
    if field:
        raise ConfigError(f"rnnjax makes a cell as rnnjax.CELLS[{name!r}](num_hiddens), which gives "
                          f"num_hiddens={num_hiddens} to {type(cell).__name__}'s first field, {field}: "
                          "declare the hidden size (an int) first, as flax's cells do (features), or "
                          "register a function of num_hiddens that makes the cell.")


# Declared types of a first field that cannot be a hidden size (``sized_otherwise``).
_NOT_SIZES = {"float", "str", "bool", "complex", "bytes", "list", "tuple", "dict", "set", "frozenset",
              "callable", "Callable", "Sequence", "type", "float16", "float32", "float64", "bfloat16",
              "ndarray", "Array"}


def _members(declared: str) -> list[str]:
    """The types a declared type names: a union's (``float | None``, ``Optional[float]``, ``Union[a, b]``)
    but None, ``Annotated[t, ...]``'s ``t``, else itself; quotes of a string annotation dropped."""
    text = declared.strip().strip("'\"")
    wrapped = re.fullmatch(r"(?:typing\.)?(Optional|Union|Annotated)\[(.*)\]", text)
    parts = _split_outside_brackets(wrapped[2], ",") if wrapped else _split_outside_brackets(text, "|")
    if wrapped and wrapped[1] == "Annotated":
        parts = parts[:1]
    return [p for p in (p.strip().strip("'\"") for p in parts) if p not in ("None", "NoneType", "")]


def _split_outside_brackets(text: str, sep: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += (c == "[") - (c == "]")
        if c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _shapes(tree: Any) -> str:
    """``tree``'s arrays as ``float32[1,16]``, in its structure's brackets."""
    said = jax.tree.map(lambda a: f"{a.dtype}[{','.join(map(str, a.shape))}]", tree)
    return str(said).replace("'", "")
