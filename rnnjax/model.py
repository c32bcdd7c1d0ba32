"""d2l's RNN language model in Flax linen: the math, plainly.

A cell is one time step. ``RNN`` scans any cell over time with ``nn.scan``;
``RNNLM`` puts one-hot inputs in front of it and a Dense layer behind it, and
its ``loss`` is the masked mean cross-entropy. The fast training kernel for
``SimpleRNNCell`` lives beside this file (``rnnjax.fused``) and is tested
against it.

Shapes are time-major inside the RNN, as in d2l: inputs ``(T, B, I)``. Names
carry shape suffixes: T steps, B batch, H hiddens, V vocabulary, I inputs.

The cell protocol (flax's ``nn.RNNCellBase``, which ``nn.RNN`` also takes)
is all that ``RNN``, ``RNNLM``, generation and checkpoints ask of a cell:

- ``__call__(carry, x (B, I)) -> (carry, y (B, num_hiddens))``;
- ``initialize_carry(rng, input_shape (B, I)) -> carry`` (``nn.nowrap``);
- ``num_feature_axes`` (1) and ``num_hiddens``, the size of ``y``;
- constructed as ``Cell(num_hiddens)`` and listed in ``CELLS`` under the
  name that ``Config.cell`` uses.

Inputs may be ``OneHot``: ``x @ W`` on it is a row gather.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array
Carry = Any


def uniform_init(fan_in: int):
    """PyTorch's default for ``nn.RNN`` and ``nn.Linear``: U(-1/sqrt(H), 1/sqrt(H)).

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


class SimpleRNNCell(nn.RNNCellBase):
    """d2l's RNN step: ``h' = tanh(x @ W_xh + h @ W_hh + b_h)``; the output is ``h'``."""
    num_hiddens: int

    @nn.compact
    def __call__(self, H_BxH: Array, X_BxI: Array | OneHot) -> tuple[Array, Array]:
        init = uniform_init(self.num_hiddens)
        W_hh = self.param("W_hh", init, (self.num_hiddens, self.num_hiddens))
        b_h = self.param("b_h", init, (self.num_hiddens,))
        W_xh = self.param("W_xh", init, (X_BxI.shape[-1], self.num_hiddens))
        H_BxH = jnp.tanh(X_BxI @ W_xh + H_BxH @ W_hh + b_h)
        return H_BxH, H_BxH

    @nn.nowrap
    def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> Array:
        return jnp.zeros((*input_shape[:-1], self.num_hiddens))

    @property
    def num_feature_axes(self) -> int:
        return 1


# The cells ``Config.cell`` can name. A new cell is a class that keeps the
# protocol above, and an entry here.
CELLS: dict[str, Callable[[int], nn.Module]] = {"rnn": SimpleRNNCell}


class RNN(nn.Module):
    """A cell scanned over time (``nn.scan``, params broadcast over the steps).

    ``__call__(inputs (T, B, I) or OneHot (T, B), carry=None)`` returns
    ``(outputs (T, B, num_hiddens), final carry)``, as d2l's ``RNN`` does; the
    carry starts from the cell's ``initialize_carry``. ``unroll`` is the scan's
    unroll factor.
    """
    cell: nn.Module
    unroll: int = 1

    def __call__(self, inputs: Array | OneHot, carry: Carry | None = None) -> tuple[Array, Carry]:
        if carry is None:
            carry = self.cell.initialize_carry(jax.random.key(0), inputs.shape[1:])
        scan = nn.scan(lambda cell, carry, x: cell(carry, x), variable_broadcast="params",
                       split_rngs={"params": False}, in_axes=0, out_axes=0, unroll=self.unroll)
        carry, outputs = scan(self.cell, carry, inputs)
        return outputs, carry

    def step(self, carry: Carry, x: Array | OneHot) -> tuple[Carry, Array]:
        """One time step: what generation feeds back."""
        return self.cell(carry, x)


class RNNLM(nn.Module):
    """d2l's ``RNNLM``: one-hot inputs, the ``RNN``, a Dense output layer.

    ``__call__(X (B, T) int, carry=None)`` returns logits ``(B, T, V)``.
    """
    rnn: RNN
    vocab_size: int

    def setup(self):
        init = uniform_init(self.rnn.cell.num_hiddens)
        self.output_layer = nn.Dense(self.vocab_size, kernel_init=init, bias_init=init)

    def __call__(self, X_BxT: Array, carry: Carry | None = None) -> Array:
        return self.forward(X_BxT, carry)[0]

    def forward(self, X_BxT: Array, carry: Carry | None = None) -> tuple[Array, Carry]:
        """``(logits (B, T, V), final carry)``."""
        outputs_TxBxH, carry = self.rnn(OneHot(X_BxT.T, self.vocab_size), carry)
        return self.output_layer(outputs_TxBxH).swapaxes(0, 1), carry

    def step(self, X_B: Array, carry: Carry) -> tuple[Array, Carry]:
        """Feeds one token per row: ``(logits (B, V), carry')``."""
        carry, outputs_BxH = self.rnn.step(carry, OneHot(X_B, self.vocab_size))
        return self.output_layer(outputs_BxH), carry

    @nn.nowrap
    def initialize_carry(self, batch_size: int) -> Carry:
        """The state ``forward`` starts from, for ``batch_size`` rows (what ``step`` takes first)."""
        return self.rnn.cell.initialize_carry(jax.random.key(0), (batch_size, self.vocab_size))

    def loss(self, X_BxT: Array, Y_BxT: Array, weights_B: Array) -> tuple[Array, Array]:
        """``(sum of weights_B[b] * CE(b, t) over b and t, number of weighted tokens)``.

        Padding rows have weight 0: the first over the second is the mean
        cross-entropy over the real tokens.
        """
        logp_BxTxV = jax.nn.log_softmax(self(X_BxT))
        ce_BxT = -jnp.take_along_axis(logp_BxTxV, Y_BxT[..., None], axis=-1)[..., 0]
        return jnp.sum(ce_BxT * weights_B[:, None]), jnp.sum(weights_B) * X_BxT.shape[1]
