"""d2l's RNN language model in Flax linen: the math, plainly.

A cell (``rnnjax.cells``) is one time step. ``RNN`` scans any cell over time
with ``nn.scan``; ``StackedRNN`` is PyTorch's ``nn.RNN``/``nn.GRU``/``nn.LSTM``
layer (``num_layers``, ``dropout`` between layers, ``bidirectional``);
``RNNLM`` puts one-hot inputs in front and a Dense layer behind, and its
``loss`` gives the masked sums of the objective (``rnnjax.objective``) and
the cross-entropy. The fast training kernels live beside this file
(``rnnjax.kernels`` chooses one) and are tested against it.

Shapes are time-major inside the RNN, as in d2l: inputs ``(T, B, I)``. Names
carry shape suffixes: T steps, B batch, H hiddens, V vocabulary, I inputs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax import objective
from rnnjax.cells import CELLS, GRUCell, LSTMCell, OneHot, SimpleRNNCell, compute_dtype, uniform_init
from rnnjax.precision import dot

__all__ = ["CELLS", "GRUCell", "LSTMCell", "Linear", "OneHot", "RNN", "RNNLM", "RowDropout", "SimpleRNNCell",
           "StackedRNN", "uniform_init"]

Array = jax.Array
Carry = Any


class RNN(nn.Module):
    """A cell scanned over time (``nn.scan``, params broadcast over the steps).

    ``__call__(inputs (T, B, I) or OneHot (T, B), carry=None)`` returns
    ``(outputs (T, B, H), final carry)``, as d2l's ``RNN`` does; the carry
    starts from the cell's ``initialize_carry``. A ``OneHot`` input reaches the
    cell as is if it declares ``accepts_one_hot`` (rnnjax's cells), else as
    float one-hot vectors (flax's cells, yours). ``reverse`` runs from the
    last step to the first (outputs stay in time order); ``unroll`` is the
    scan's unroll factor. ``remat`` keeps only each step's matmul outputs for
    the backward pass, which recomputes the cell's elementwise ops from them
    (``jax.checkpoint``): fewer buffers written per step; the fast path's choice.
    Each new carry keeps the dtypes of the one it replaces (float32 from
    ``initialize_carry``), whatever dtype the cell computes in.
    """
    cell: nn.Module
    unroll: int = 1
    reverse: bool = False
    remat: bool = False

    def __call__(self, inputs: Array | OneHot, carry: Carry | None = None, train: bool = False,
                 first_row: int | Array = 0) -> tuple[Array, Carry]:
        """``(outputs, final carry)``; ``train`` and ``first_row`` as ``StackedRNN``'s: no dropout here."""
        if carry is None:
            carry = self.cell.initialize_carry(jax.random.key(0), inputs.shape[1:])
        inputs = self._cell_input(inputs)

        def body(cell, carry, x):
            new_carry, y = cell(carry, x)
            return _like(new_carry, carry), y
        if self.remat:
            body = nn.remat(body, policy=jax.checkpoint_policies.dots_saveable)
        scan = nn.scan(body, variable_broadcast="params",
                       split_rngs={"params": False}, in_axes=0, out_axes=0, unroll=self.unroll,
                       reverse=self.reverse)
        carry, outputs = scan(self.cell, carry, inputs)
        return outputs, carry

    def step(self, carry: Carry, x: Array | OneHot) -> tuple[Carry, Array]:
        """One time step: what generation feeds back."""
        new_carry, y = self.cell(carry, self._cell_input(x))
        return _like(new_carry, carry), y

    def _cell_input(self, x: Array | OneHot) -> Array | OneHot:
        if isinstance(x, OneHot) and not getattr(self.cell, "accepts_one_hot", False):
            return x.dense(compute_dtype(self.cell))
        return x

    @nn.nowrap
    def initialize_carry(self, batch_size: int, input_size: int) -> Carry:
        return self.cell.initialize_carry(jax.random.key(0), (batch_size, input_size))


def _like(new_carry: Carry, carry: Carry) -> Carry:
    """``new_carry`` in ``carry``'s dtypes, leaf by leaf (a no-op where they agree, as for rnnjax's cells)."""
    # A cell computing in bfloat16 (flax's) returns a bfloat16 carry; a scan keeps its carry's type.
    return jax.tree.map(lambda new, old: new.astype(jnp.result_type(old)), new_carry, carry)


class StackedRNN(nn.Module):
    """PyTorch's recurrent layer: ``num_layers`` of ``cell``, each direction its own ``RNN``.

    ``dropout`` applies to the outputs of every layer but the last, in
    training only (``RowDropout``: a batch split over devices, each part given
    its ``first_row``, draws the masks of the whole); a ``bidirectional`` layer
    concatenates its two directions' outputs. Carries in and out are tuples of
    one per layer and direction, in PyTorch's ``h_n`` order (layer 0 forward,
    layer 0 reverse, layer 1, ...).
    """
    cell: nn.Module                 # a template: each layer and direction gets a copy
    num_layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    unroll: int = 1
    remat: bool = False             # as RNN's

    def setup(self):
        self.layers = [RNN(self.cell.clone(parent=None), unroll=self.unroll, reverse=d == 1, remat=self.remat)
                       for _ in range(self.num_layers) for d in range(self.num_directions)]
        self.drop = RowDropout(self.dropout)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def __call__(self, inputs: Array | OneHot, carries: tuple | None = None, train: bool = False,
                 first_row: int | Array = 0) -> tuple[Array, tuple]:
        carries = carries or (None,) * len(self.layers)
        x, finals = inputs, []
        for k in range(self.num_layers):
            if k > 0:
                x = self.drop(x, not train, first_row)
            outputs = []
            for d in range(self.num_directions):
                i = k * self.num_directions + d
                out, carry = self.layers[i](x, carries[i])
                outputs.append(out)
                finals.append(carry)
            x = jnp.concatenate(outputs, axis=-1) if len(outputs) > 1 else outputs[0]
        return x, tuple(finals)

    def step(self, carries: tuple, x: Array | OneHot) -> tuple[tuple, Array]:
        """One time step through every layer (inference: no dropout); unidirectional only."""
        if self.bidirectional:
            raise ValueError("A bidirectional RNN cannot step forward one token at a time: its reverse "
                             "direction needs the whole sequence.")
        finals = []
        for layer, carry in zip(self.layers, carries, strict=True):
            carry, x = layer.step(carry, x)
            finals.append(carry)
        return tuple(finals), x

    @nn.nowrap
    def initialize_carry(self, batch_size: int, input_size: int) -> tuple:
        """Each layer's, for its inputs: ``input_size`` wide into the first, the layer below's outputs (of
        every direction: ``features`` each, as a cell's are) into the others: a carry may depend on them."""
        width = getattr(self.cell, "features", None)
        below = input_size if width is None else width * self.num_directions
        sizes = [input_size] + [below] * (self.num_layers - 1)
        return tuple(self.cell.initialize_carry(jax.random.key(0), (batch_size, size))
                     for size in sizes for _ in range(self.num_directions))


class RowDropout(nn.Module):
    """``nn.Dropout`` of time-major inputs ``(T, B, D)`` whose mask of row ``b`` is drawn from the
    ``"dropout"`` key and ``first_row + b``, the row's index in the global batch: a batch split over devices,
    each device given the index of its first row, trains as on one device."""
    rate: float

    @nn.compact
    def __call__(self, x_TxBxD: Array, deterministic: bool, first_row: int | Array = 0) -> Array:
        if deterministic or self.rate == 0:
            return x_TxBxD
        if self.rate >= 1.0:            # all dropped: no 0 / 0 in the gradient
            return jnp.zeros_like(x_TxBxD)
        key, keep = self.make_rng("dropout"), 1.0 - self.rate
        T, B, D = x_TxBxD.shape

        def row(b):
            return jax.random.bernoulli(jax.random.fold_in(key, b), keep, (T, D))
        keep_TxBxD = jax.vmap(row, out_axes=1)(first_row + jnp.arange(B))
        return jax.lax.select(keep_TxBxD, x_TxBxD / keep, jnp.zeros_like(x_TxBxD))


class Linear(nn.Module):
    """PyTorch's ``nn.Linear``: ``nn.Dense``'s parameters (``kernel (I, O)``, ``bias (O)``), both drawn
    from U(-1/sqrt(I), 1/sqrt(I)) with ``I`` read from the input: no cell is asked its width. Its matmul
    computes in ``dtype`` (``rnnjax.precision.dot``); the bias and the result stay float32."""
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = uniform_init(x.shape[-1])
        kernel = self.param("kernel", init, (x.shape[-1], self.features))
        bias = self.param("bias", init, (self.features,))
        return dot(x, kernel, self.dtype) + bias


class RNNLM(nn.Module):
    """d2l's ``RNNLM``: one-hot inputs, the recurrent layer (``RNN`` or ``StackedRNN``), a Dense layer.

    ``__call__(X (B, T) int, carry=None)`` returns logits ``(B, T, V)``;
    ``train=True`` turns dropout on (it then needs a ``"dropout"`` rng).
    ``dtype`` is the output layer's compute dtype, as the cells' (``rnnjax.cells``).
    """
    rnn: nn.Module
    vocab_size: int
    dtype: Any = jnp.float32

    def setup(self):
        self.output_layer = Linear(self.vocab_size, dtype=self.dtype)

    def __call__(self, X_BxT: Array, carry: Carry | None = None, train: bool = False) -> Array:
        return self.forward(X_BxT, carry, train)[0]

    def forward(self, X_BxT: Array, carry: Carry | None = None, train: bool = False,
                first_row: int | Array = 0) -> tuple[Array, Carry]:
        """``(logits (B, T, V), final carry)``; ``first_row``: row 0's index in a batch split over devices
        (dropout draws each row's masks by its index in the whole)."""
        outputs_TxBxH, carry = self.rnn(OneHot(X_BxT.T, self.vocab_size), carry, train, first_row)
        return self.output_layer(outputs_TxBxH).swapaxes(0, 1), carry

    def step(self, X_B: Array, carry: Carry) -> tuple[Array, Carry]:
        """Feeds one token per row: ``(logits (B, V), carry')``."""
        carry, outputs_BxH = self.rnn.step(carry, OneHot(X_B, self.vocab_size))
        return self.output_layer(outputs_BxH), carry

    @nn.nowrap
    def initialize_carry(self, batch_size: int) -> Carry:
        """The state ``forward`` starts from, for ``batch_size`` rows (what ``step`` takes first)."""
        return self.rnn.initialize_carry(batch_size, self.vocab_size)

    def loss(self, X_BxT: Array, Y_BxT: Array, weights_B: Array, train: bool = False,
             first_row: int | Array = 0) -> tuple[Array, Array, Array]:
        """``(objective sum, number of weighted tokens, cross-entropy sum)``, sums of ``weights_B[b]`` times
        each token's value over b and t (``train`` and ``first_row`` as ``forward``'s).

        The objective (what training differentiates) is the cross-entropy
        against ``rnnjax.objective.targets``; the cross-entropy is against the
        labels (what perplexity reports, carrying no gradient, as in the fused
        kernels); the two are equal for one-hot targets. Padding rows have
        weight 0: a sum over the count is a mean over the real tokens.
        """
        logp_BxTxV = jax.nn.log_softmax(self.forward(X_BxT, None, train, first_row)[0])
        ce_BxT = -jnp.take_along_axis(logp_BxTxV, Y_BxT[..., None], axis=-1)[..., 0]
        objective_BxT = -jnp.sum(objective.targets(Y_BxT, self.vocab_size) * logp_BxTxV, axis=-1)
        return (jnp.sum(objective_BxT * weights_B[:, None]), jnp.sum(weights_B) * X_BxT.shape[1],
                jax.lax.stop_gradient(jnp.sum(ce_BxT * weights_B[:, None])))
