"""The training loss of an ``RNNLM`` with its recurrence structured as cuDNN structures an RNN.

``HoistedRNNLM`` is ``RNNLM`` with this loss, for rnnjax's own cells
(``SimpleRNNCell``, ``GRUCell``, ``LSTMCell``) at any depth, in either
direction, with dropout between layers. Each layer and direction:

- the input projections of all time steps before the loop, as one matmul
  over all ``T*B`` rows (the first layer: a gather of the ``W_ih + b``
  table by token id; both directions of a layer share one matmul);
- a forward loop (``recurrence``) of only ``h @ W_hh`` and the gates'
  elementwise math, keeping what the backward needs: the gates'
  pre-activations (GRU: ``h @ W_hh + b_hh``) and the state they read;
- a backward loop of only the sequential part: the gates' gradients from
  ``dh``/``dc`` (``jax.vjp`` of the elementwise gate function, recomputed
  from what the forward kept) and ``dh @ W_hh.T``;
- after the loop, ``dW_hh`` one matmul over all ``T*B`` rows; ``dW_ih`` and
  the gradient of the layer's inputs are the projection's own backward,
  one matmul each.

The output layer and the cross-entropy are ``output_layer.dense_cross_entropy``.
Every matmul is ``precision.dot`` in the cell's compute dtype.
``tests/test_hoisted.py`` checks value and gradients against the plain model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnnjax import precision
from rnnjax.cells import (NONLINEARITIES, GRUCell, LSTMCell, OneHot, SimpleRNNCell, compute_dtype, gru_update,
                          lstm_update)
from rnnjax.output_layer import output_loss
from rnnjax.model import RNN, RNNLM, StackedRNN

Array = jax.Array

# The cells this kernel knows, by exact type (a subclass may change the math).
KINDS = {SimpleRNNCell: "rnn", GRUCell: "gru", LSTMCell: "lstm"}


def supports(cell) -> bool:
    """Whether ``cell`` (a module or a class) is one whose gates this kernel writes out."""
    return (cell if isinstance(cell, type) else type(cell)) in KINDS


def describe(rnn) -> str:
    """What trains, in words: what a run reports."""
    return ("hoisted loss (rnnjax.hoisted: input projections before the time loop, the recurrence's "
            "backward pass by hand, weight gradients after it; the fused output layer)")


class HoistedRNNLM(RNNLM):
    """``RNNLM`` whose ``loss`` is this kernel's; everything else, parameters included, is RNNLM's."""

    def loss(self, X_BxT: Array, Y_BxT: Array, weights_B: Array, train: bool = False,
             first_row: int | Array = 0) -> tuple[Array, Array, Array]:
        if self.is_initializing():
            return super().loss(X_BxT, Y_BxT, weights_B)
        params = self.variables["params"]
        outputs_TxBxH = self.hoisted_outputs(X_BxT.T, params["rnn"], train, first_row)
        return output_loss(params["output_layer"], outputs_TxBxH, Y_BxT, weights_B, jnp.dtype(self.dtype))

    def hoisted_outputs(self, ids_TxB: Array, params: dict, train: bool, first_row: int | Array = 0) -> Array:
        """The recurrent layer's outputs ``(T, B, num_outputs)`` from token ids, as ``self.rnn``'s."""
        rnn = self.rnn
        num_layers, directions, layer_params = layers(rnn, params)
        cell = rnn.cell
        if not supports(cell):
            raise TypeError(f"The hoisted kernel knows rnnjax's own cells, not {type(cell).__name__}.")
        kind, dtype = KINDS[type(cell)], jnp.dtype(compute_dtype(cell))
        nonlinearity = getattr(cell, "nonlinearity", "tanh")
        x = OneHot(ids_TxB, self.vocab_size)
        for k in range(num_layers):
            if k > 0:      # the stack's own dropout module, called as the stack calls it: the same masks
                x = rnn.drop(x, not train, first_row)
            ps = layer_params[k * len(directions):(k + 1) * len(directions)]
            XWs = input_projections(kind, ps, x, dtype)
            outputs = [recurrence((kind, nonlinearity, reverse, rnn.unroll, dtype), p["W_hh"],
                                  p["b_hh"] if kind == "gru" else None, XW)
                       for p, reverse, XW in zip(ps, directions, XWs, strict=True)]
            x = jnp.concatenate(outputs, axis=-1) if len(outputs) > 1 else outputs[0]
        return x


def layers(rnn, params: dict) -> tuple[int, tuple[bool, ...], list[dict]]:
    """``(num_layers, each direction's reverse flag, every layer and direction's cell params)`` of an
    ``RNN`` or ``StackedRNN`` and its params, the last in ``StackedRNN``'s order (layer 0 forward, layer
    0 reverse, layer 1, ...)."""
    if isinstance(rnn, StackedRNN):
        return (rnn.num_layers, (False, True)[:rnn.num_directions],
                [params[f"layers_{i}"]["cell"] for i in range(rnn.num_layers * rnn.num_directions)])
    if isinstance(rnn, RNN):
        return 1, (rnn.reverse,), [params["cell"]]
    raise TypeError(f"rnnjax's kernels run an RNN or a StackedRNN, not {type(rnn).__name__}.")


def input_projections(kind: str, layer_params: list[dict], x_TxBxI: Array | OneHot, dtype) -> list[Array]:
    """``x @ W_ih + b`` for every step at once and each direction's params: one gather (token ids) or one
    matmul (the directions' weights side by side). ``b`` holds every bias that adds to the gates' input
    (GRU: ``b_ih`` only, since ``b_hh`` is multiplied by the reset gate)."""
    def weight(p):
        return p["W_xh"] if kind == "rnn" else p["W_ih"]

    def bias(p):
        return p["b_h"] if kind == "rnn" else p["b_ih"] + p["b_hh"] if kind == "lstm" else p["b_ih"]
    W_IxD = jnp.concatenate([weight(p) for p in layer_params], axis=-1)
    b_D = jnp.concatenate([bias(p) for p in layer_params])
    if isinstance(x_TxBxI, OneHot):
        # The bias goes into the table, not onto every gathered row: its gradient then sums V rows, not T*B.
        XW_TxBxD = (W_IxD + b_D)[x_TxBxI.ids]
    else:
        T, B, _ = x_TxBxI.shape
        XW_TxBxD = (precision.dot(x_TxBxI.reshape(T * B, -1), W_IxD, dtype) + b_D).reshape(T, B, -1)
    return jnp.split(XW_TxBxD, len(layer_params), axis=-1) if len(layer_params) > 1 else [XW_TxBxD]


def gates(kind: str, nonlinearity: str, pre, read: tuple) -> tuple:
    """One step's elementwise math: the new state ``(h,)`` or ``(h, c)`` from the gates' pre-activations
    ``pre`` (``XW + HW``; GRU: the pair ``(XW, HW)``) and ``read``, the parts of the old state it reads."""
    if kind == "rnn":
        return (NONLINEARITIES[nonlinearity](pre),)
    if kind == "lstm":
        return lstm_update(pre, *read)
    return (gru_update(*pre, *read),)


def _read(kind: str, state: tuple) -> tuple:
    """The parts of the state the gates read besides ``h @ W_hh``: the LSTM's ``c``, the GRU's ``h``."""
    return {"rnn": (), "lstm": state[1:], "gru": state[:1]}[kind]


def _unread(kind: str, dread: tuple, dstate_zeros: tuple) -> tuple:
    """``_read``'s transpose: the gradient of the whole state from that of the parts read."""
    if kind == "lstm":
        return dstate_zeros[0], dread[0]
    return (dread[0],) if kind == "gru" else dstate_zeros


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def recurrence(spec: tuple, W_hh: Array, b_hh: Array | None, XW_TxBxG: Array) -> Array:
    """The outputs ``(T, B, H)`` of one layer and direction from ``H = 0`` (and ``C = 0``), given its input
    projections ``XW``. ``spec``: ``(kind, nonlinearity, reverse, unroll, dtype)``; ``b_hh`` the bias
    added to ``h @ W_hh`` (GRU's; ``None`` where it is in ``XW``)."""
    return _recurrence_fwd(spec, W_hh, b_hh, XW_TxBxG)[0]


def _recurrence_fwd(spec, W_hh, b_hh, XW_TxBxG):
    kind, nonlinearity, reverse, unroll, dtype = spec
    _, B, _ = XW_TxBxG.shape
    H = W_hh.shape[0]
    state = (jnp.zeros((B, H), XW_TxBxG.dtype),) * (2 if kind == "lstm" else 1)
    W_hh_c = W_hh.astype(dtype)                 # rounded once, not every step

    def step(state, XW_BxG):
        HW_BxG = precision.dot(state[0], W_hh_c, dtype)
        if b_hh is not None:
            HW_BxG = HW_BxG + b_hh
        # Kept for the backward: the pre-activations (GRU: HW; its XW is the input, kept already).
        pre, kept = ((XW_BxG, HW_BxG), HW_BxG) if kind == "gru" else ((XW_BxG + HW_BxG),) * 2
        read = _read(kind, state)
        state = gates(kind, nonlinearity, pre, read)
        return state, (state[0], kept, read)
    _, (outputs_TxBxH, kept_TxBxG, read) = jax.lax.scan(step, state, XW_TxBxG, reverse=reverse, unroll=unroll)
    return outputs_TxBxH, (W_hh, b_hh, XW_TxBxG if kind == "gru" else None, outputs_TxBxH, kept_TxBxG, read)


def _recurrence_bwd(spec, residuals, dout_TxBxH):
    kind, nonlinearity, reverse, unroll, dtype = spec
    W_hh, b_hh, XW_TxBxG, outputs_TxBxH, kept_TxBxG, read = residuals
    T, B, H = outputs_TxBxH.shape
    W_hh_T = W_hh.T.astype(dtype)               # rounded once, not every step
    zeros = (jnp.zeros((B, H), dout_TxBxH.dtype),) * (2 if kind == "lstm" else 1)

    def step(dstate, xs):
        dout_BxH, kept_BxG, XW_BxG, read_t = xs
        dstate = (dstate[0] + dout_BxH, *dstate[1:])
        pre = (XW_BxG, kept_BxG) if kind == "gru" else kept_BxG
        _, vjp = jax.vjp(functools.partial(gates, kind, nonlinearity), pre, read_t)
        dpre, dread = vjp(dstate)
        dHW_BxG = dpre[1] if kind == "gru" else dpre
        dstate = _unread(kind, dread, zeros)
        return (dstate[0] + precision.dot(dHW_BxG, W_hh_T, dtype), *dstate[1:]), dpre
    # The loop runs against the forward's direction.
    _, dpre = jax.lax.scan(step, zeros, (dout_TxBxH, kept_TxBxG, XW_TxBxG, read), reverse=not reverse,
                           unroll=unroll)
    dXW_TxBxG, dHW_TxBxG = dpre if kind == "gru" else (dpre, dpre)
    # dW_hh = sum_t h_{t-1}.T @ dHW_t over all T*B rows; the first step's h_{t-1} = 0 adds nothing.
    prev_h, dHW = (outputs_TxBxH[1:], dHW_TxBxG[:-1]) if reverse else (outputs_TxBxH[:-1], dHW_TxBxG[1:])
    dW_hh = precision.dot(prev_h.reshape(-1, H).T, dHW.reshape(-1, dHW.shape[-1]), dtype)
    db_hh = jnp.sum(dHW_TxBxG, axis=(0, 1)) if b_hh is not None else None
    return dW_hh, db_hh, dXW_TxBxG


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
