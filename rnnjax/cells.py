"""Recurrent cells: one time step each, with PyTorch's parametrization and gate order.

Each keeps the cell protocol (``rnnjax.protocol``) and is listed in ``CELLS``
under the name that ``Config.cell`` uses.

Weights are stored input-major (``x @ W``), so PyTorch's ``weight_ih_l0`` is
``W_ih.T`` (``W_xh.T`` for ``SimpleRNNCell``); ``rnnjax.interop`` converts.
All are initialized as PyTorch does, U(-1/sqrt(H), 1/sqrt(H)). They declare
``accepts_one_hot``: their inputs may be ``OneHot``, on which ``x @ W`` is a
row gather. Any other cell (flax's ``nn.GRUCell``, one of yours) gets float
one-hot vectors (``rnnjax.model.RNN``).

``dtype`` is the compute dtype of the matmuls (``Config.compute_dtype``):
in ``bfloat16`` their operands are rounded to it and the products summed in
float32 (``rnnjax.precision.dot``); parameters, the carry and every
elementwise op stay float32. A ``OneHot`` input's gather stays exact (an
embedding lookup: there is no matmul to speed up).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rnnjax.precision import dot

Array = jax.Array

NONLINEARITIES = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def uniform_init(fan_in: int):
    """PyTorch's default for ``nn.RNN``, ``nn.GRU``, ``nn.LSTM`` and ``nn.Linear``: U(-1/sqrt(H), 1/sqrt(H)).

    d2l's PyTorch tab, whose perplexities we match, trains from this init.
    """
    bound = 1.0 / fan_in ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


@struct.dataclass
class OneHot:
    """One-hot vectors of ``depth``, stored as integer ``ids``; ``shape`` is ``ids.shape + (depth,)``.

    ``x @ W`` is the row gather ``W[ids]``: the same math without building the
    one-hot tensor. A pytree, so ``nn.scan`` slices it over time like an array.
    """
    ids: Array
    depth: int = struct.field(pytree_node=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.ids.shape, self.depth)

    def __matmul__(self, W: Array) -> Array:
        return jnp.asarray(W)[self.ids]

    def dense(self, dtype=jnp.float32) -> Array:
        return jax.nn.one_hot(self.ids, self.depth, dtype=dtype)


def compute_dtype(cell) -> Any:
    """The dtype of a cell's matmul operands: its ``dtype`` attribute, float32 if it has none."""
    return getattr(cell, "dtype", None) or jnp.float32


def gru_update(XW_Bx3H: Array, HW_Bx3H: Array, H_BxH: Array) -> Array:
    """The GRU's ``h'`` from ``x W_ih + b_ih`` and ``h W_hh + b_hh`` (gates ``r, z, n``): its elementwise
    math, which ``rnnjax.hoisted`` runs too."""
    xr, xz, xn = jnp.split(XW_Bx3H, 3, axis=-1)
    hr, hz, hn = jnp.split(HW_Bx3H, 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * H_BxH


def lstm_update(pre_Bx4H: Array, C_BxH: Array) -> tuple[Array, Array]:
    """The LSTM's ``(h', c')`` from the gates' pre-activations (``i, f, g, o``) and ``c``."""
    i, f, g, o = jnp.split(pre_Bx4H, 4, axis=-1)
    C_BxH = jax.nn.sigmoid(f) * C_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(C_BxH), C_BxH


class _Cell(nn.RNNCellBase):
    """What the cells share: ``num_hiddens``, the matmuls' ``dtype``, a zero carry of one or more
    ``(B, H)`` arrays."""
    num_hiddens: int
    dtype: Any = jnp.float32
    carry_parts = 1
    accepts_one_hot = True      # x @ W only: a OneHot input is a row gather (rnnjax.model.RNN)

    @nn.nowrap
    def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]):
        zeros = jnp.zeros((*input_shape[:-1], self.num_hiddens))
        return zeros if self.carry_parts == 1 else (zeros,) * self.carry_parts

    @property
    def num_feature_axes(self) -> int:
        return 1

    def _param(self, name: str, *shape: int) -> Array:
        return self.param(name, uniform_init(self.num_hiddens), shape)

    def _dot(self, x: Array | OneHot, W: Array) -> Array:
        """``x @ W`` in the compute dtype, accumulated in float32; a ``OneHot`` ``x``'s gather exact."""
        return x @ W if isinstance(x, OneHot) else dot(x, W, self.dtype)


class SimpleRNNCell(_Cell):
    """d2l's RNN step: ``h' = tanh(x @ W_xh + h @ W_hh + b_h)`` (or ``relu``); the output is ``h'``.

    PyTorch's ``nn.RNN``: ``W_xh = weight_ih.T``, ``W_hh = weight_hh.T``,
    ``b_h = bias_ih + bias_hh`` (one bias: d2l's, and the same function).
    """
    nonlinearity: str = "tanh"

    @nn.compact
    def __call__(self, H_BxH: Array, X_BxI: Array | OneHot) -> tuple[Array, Array]:
        H = self.num_hiddens
        W_hh, b_h = self._param("W_hh", H, H), self._param("b_h", H)
        W_xh = self._param("W_xh", X_BxI.shape[-1], H)
        H_BxH = NONLINEARITIES[self.nonlinearity](self._dot(X_BxI, W_xh) + self._dot(H_BxH, W_hh) + b_h)
        return H_BxH, H_BxH


class GRUCell(_Cell):
    """PyTorch's ``nn.GRU`` step, gates in its order ``r, z, n``::

        r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)
        z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
        n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
        h' = (1 - z) * n + z * h

    ``W_ih (I, 3H) = weight_ih.T``, ``W_hh (H, 3H) = weight_hh.T``, ``b_ih``
    and ``b_hh (3H)`` as PyTorch's. Flax's ``GRUCell`` is this with
    ``b_hr = b_hz = 0``.
    """

    @nn.compact
    def __call__(self, H_BxH: Array, X_BxI: Array | OneHot) -> tuple[Array, Array]:
        H = self.num_hiddens
        W_ih, W_hh = self._param("W_ih", X_BxI.shape[-1], 3 * H), self._param("W_hh", H, 3 * H)
        b_ih, b_hh = self._param("b_ih", 3 * H), self._param("b_hh", 3 * H)
        H_BxH = gru_update(self._dot(X_BxI, W_ih) + b_ih, self._dot(H_BxH, W_hh) + b_hh, H_BxH)
        return H_BxH, H_BxH


class LSTMCell(_Cell):
    """PyTorch's ``nn.LSTM`` step, carry ``(h, c)``, gates in its order ``i, f, g, o``::

        i, f, o = sigmoid(x W_i* + b_i* + h W_h* + b_h*),  g = tanh(...)
        c' = f * c + i * g,  h' = o * tanh(c')

    ``W_ih (I, 4H) = weight_ih.T``, ``W_hh (H, 4H) = weight_hh.T``, ``b_ih``
    and ``b_hh (4H)`` as PyTorch's. Flax's ``LSTMCell`` is this with one bias
    (``b_ih + b_hh``) and the carry as ``(c, h)``.
    """
    carry_parts = 2

    @nn.compact
    def __call__(self, carry: tuple[Array, Array], X_BxI: Array | OneHot
                 ) -> tuple[tuple[Array, Array], Array]:
        H_BxH, C_BxH = carry
        H = self.num_hiddens
        W_ih, W_hh = self._param("W_ih", X_BxI.shape[-1], 4 * H), self._param("W_hh", H, 4 * H)
        b_ih, b_hh = self._param("b_ih", 4 * H), self._param("b_hh", 4 * H)
        H_BxH, C_BxH = lstm_update(self._dot(X_BxI, W_ih) + b_ih + self._dot(H_BxH, W_hh) + b_hh, C_BxH)
        return (H_BxH, C_BxH), H_BxH


# The cells ``Config.cell`` can name. A new cell is a class that keeps the
# protocol (rnnjax.protocol), and an entry here.
CELLS: dict[str, Callable[..., nn.Module]] = {"rnn": SimpleRNNCell, "gru": GRUCell, "lstm": LSTMCell}
OWN_CELLS = dict(CELLS)      # as rnnjax ships them: CELLS may gain (or swap in) a user's


def is_own(cell: Any) -> bool:
    """Whether ``cell`` (a class, or a ``functools.partial`` of one) is rnnjax's own cell or a subclass."""
    while isinstance(cell, functools.partial):
        cell = cell.func
    return isinstance(cell, type) and issubclass(cell, tuple(OWN_CELLS.values()))


def registered_own(name: str) -> bool:
    """Whether ``CELLS[name]`` is rnnjax's own cell of that name (its parameters follow its fields alone)."""
    return CELLS.get(name) is OWN_CELLS.get(name)


def registered_as(name: str) -> str:
    """What ``CELLS[name]`` is, in words a checkpoint keeps and another process says alike: ``rnnjax's
    own``, a class's name, or a ``functools.partial``'s class and the arguments that differ from the
    class's defaults (``ScaledCell(scale=0.5)``). Values as ``described``: what cannot be said alike in
    every process (an object's address) is said by its type's name alone."""
    made = CELLS[name]
    if registered_own(name):
        return "rnnjax's own"
    return described(made)


def described(value: Any) -> str:
    """``value`` in words that do not change from one process to the next: numbers, strings and their
    containers as written; functions and classes by name; a partial by its function and arguments (those
    a dataclass's field defaults to left out); an array by its shape, dtype and a CRC-32 of its bytes;
    anything else by its type's name."""
    if isinstance(value, np.generic):       # a NumPy scalar: as the number it holds
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        items = ", ".join(map(described, value))
        return f"[{items}]" if isinstance(value, list) else f"({items}{',' * (len(value) == 1)})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{described(k)}: {described(v)}" for k, v in value.items()) + "}"
    if isinstance(value, functools.partial):
        defaults = {f.name: f.default for f in getattr(value.func, "__dataclass_fields__", {}).values()
                    if f.default is not dataclasses.MISSING}
        keywords = {k: v for k, v in sorted(value.keywords.items())
                    if k not in defaults or described(defaults[k]) != described(v)}
        args = [*map(described, value.args), *(f"{k}={described(v)}" for k, v in keywords.items())]
        return f"{described(value.func)}({', '.join(args)})" if args else described(value.func)
    if hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__array__"):
        data = np.asarray(value)
        return f"{data.dtype}{list(data.shape)}:{zlib.crc32(data.tobytes()):08x}"
    if callable(value) and getattr(value, "__qualname__", None):
        return value.__qualname__
    return type(value).__qualname__
