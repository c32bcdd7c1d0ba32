"""The training loss of an ``RNNLM`` as one fused op: the same math as ``RNNLM.loss``, faster.

``FusedRNNLM`` is ``RNNLM`` with this loss; ``rnnjax.state.make_model``
picks it on a CPU (``rnnjax.kernels.choose``). For every layer the output layer
and the cross-entropy are one op (``rnnjax.output_layer``); for one layer of
d2l's ``SimpleRNNCell`` (``recurrence_fused``) the recurrence joins them,
with a backward pass through time written by hand. What makes it fast
(``docs/performance.md`` has the measurements):

- the input projection ``x @ W_xh + b_h`` for all steps at once, a gather of
  the ``W_xh + b_h`` table by token id;
- the forward scan writes each ``H_t`` over its ``XW_t`` in one buffer;
- a hand-written backward pass through time that carries only the gradient
  buffer, and for small blocks takes ``dW_hh`` and the output layer's ``dW``
  as plain matmuls of one transpose of the outputs;
- the output layer and the cross-entropy fused (``rnnjax.output_layer``).

Every matmul, forward and backward, is ``rnnjax.precision.dot`` in the
compute dtype: the cell's ``dtype`` for the recurrence, the model's for the
output layer (bfloat16 operands, float32 sums). The input projection's
gather is exact, as the cells' ``OneHot`` one is.

``tests/test_fused.py`` checks its value and gradients against the plain model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnnjax import output_layer
from rnnjax.cells import NONLINEARITIES, OneHot
from rnnjax.model import RNN, RNNLM, SimpleRNNCell
from rnnjax.precision import dot

Array = jax.Array


def recurrence_fused(rnn) -> bool:
    """Whether the recurrence is fused too: one layer of d2l's ``SimpleRNNCell``."""
    return type(rnn) is RNN and type(rnn.cell) is SimpleRNNCell and not rnn.reverse


def describe(rnn) -> str:
    """What is fused for ``rnn``, in words: what a run reports."""
    if recurrence_fused(rnn):
        return "fused loss (rnnjax.fused: the recurrence and the output layer)"
    remat = "; the cells' elementwise ops recomputed in the backward pass" if rnn.remat else ""
    return f"fused loss (rnnjax.fused: the output layer{remat})"


class FusedRNNLM(RNNLM):
    """``RNNLM`` whose ``loss`` is one fused op; everything else, parameters included, is RNNLM's."""

    def loss(self, X_BxT: Array, Y_BxT: Array, weights_B: Array, train: bool = False,
             first_row: int | Array = 0) -> tuple[Array, Array, Array]:
        if self.is_initializing():
            return super().loss(X_BxT, Y_BxT, weights_B)
        params = self.variables["params"]
        dense, dtype = params["output_layer"], jnp.dtype(self.dtype)
        if not recurrence_fused(self.rnn):     # its own scan under autodiff, then the fused loss
            outputs_TxBxH, _ = self.rnn(OneHot(X_BxT.T, self.vocab_size), None, train, first_row)
            return output_layer.output_loss(dense, outputs_TxBxH, Y_BxT, weights_B, dtype)
        B, T = X_BxT.shape
        labels_N, weights_N = Y_BxT.T.reshape(-1), jnp.broadcast_to(weights_B, (T, B)).reshape(-1)
        cell = params["rnn"]["cell"]
        # The bias goes into the table, not onto every gathered row: its
        # gradient then sums V rows instead of T*B.
        XW_TxBxH = (cell["W_xh"] + cell["b_h"])[X_BxT.T]
        objective_sum, ce_sum = _recurrence_dense_ce(
            cell["W_hh"], XW_TxBxH, dense["kernel"], dense["bias"], labels_N, weights_N, self.rnn.unroll,
            self.rnn.cell.nonlinearity, jnp.dtype(self.rnn.cell.dtype), dtype)
        # The cross-entropy is measured, not differentiated: its backward ignores it.
        return objective_sum, jnp.sum(weights_B) * T, jax.lax.stop_gradient(ce_sum)


def _recurrence(W_hh: Array, H_BxH: Array, XW_BxH: Array, nonlinearity: str, dtype) -> Array:
    """``tanh(XW + H @ W_hh)`` (or ``relu``), the time-dependent half of the step."""
    # Elementwise work on flat vectors: XLA:CPU's loops over them are faster than over (B, H) rows.
    Z = dot(H_BxH, W_hh, dtype).reshape(-1) + XW_BxH.reshape(-1)
    return NONLINEARITIES[nonlinearity](Z).reshape(XW_BxH.shape)


def _derivative(H: Array, nonlinearity: str) -> Array:
    """The nonlinearity's derivative at its input, from its output ``H``."""
    return 1.0 - jnp.square(H) if nonlinearity == "tanh" else (H > 0).astype(H.dtype)


def _write(buffer_TxBxH: Array, t: Array, x_BxH: Array) -> Array:
    """``buffer.at[t].set(x)`` as a plain dynamic-update-slice, which stays one under ``jax.vmap``
    (``.at[t].set`` becomes a scatter there, copied whole every step: ``rnnjax.runs``)."""
    return jax.lax.dynamic_update_index_in_dim(buffer_TxBxH, x_BxH, t, 0)


def _scan_in_place(W_hh: Array, H_BxH: Array, XW_TxBxH: Array, unroll: int, nonlinearity: str, dtype
                   ) -> Array:
    """The outputs ``(T, B, H)``: step t reads ``XW_t`` and leaves ``H_t`` in its place (no buffer
    of its own, no zero fill)."""
    W_hh = W_hh.astype(dtype)                  # rounded once, not every step

    def step(carry, t):
        H, buffer_TxBxH = carry
        H = _recurrence(W_hh, H, buffer_TxBxH[t], nonlinearity, dtype)
        return (H, _write(buffer_TxBxH, t, H)), None
    (_, outputs_TxBxH), _ = jax.lax.scan(step, (H_BxH, XW_TxBxH), jnp.arange(XW_TxBxH.shape[0]),
                                         unroll=unroll)
    return outputs_TxBxH


# Up to this many floats in a step's (batch, hidden) block, dW_hh is one matmul
# after the backward loop, sharing the outputs' transpose with the output layer's
# gradient; above it the sum inside the loop is faster (docs/performance.md).
_DW_HH_AFTER_LOOP_MAX_BLOCK = 2 ** 15


def _backprop_through_time(W_hh: Array, outputs_TxBxH: Array, dout_TxBxH: Array, nonlinearity: str, dtype
                           ) -> tuple[Array, Array, Array | None]:
    """Backprop through ``H_t = tanh(XW_t + H_{t-1} @ W_hh)``, from ``H_0 = 0``, from the gradients w.r.t.
    its outputs.

    ``dZ_t = (dH_t + dout_t) * (1 - H_t**2)`` with ``dH_t = dZ_{t+1} @ W_hh.T``
    (for ``relu``, ``H_t > 0`` in place of ``1 - H_t**2``).
    The loop overwrites each ``dout_t`` with ``dZ_t`` in the incoming buffer
    and reads ``dZ_{t+1}`` back from it. For small blocks ``dW_hh = sum_t
    H_{t-1}.T @ dZ_t`` is one matmul after the loop, of the outputs transposed
    once to ``(H, T*B)`` (a plain NN dot, XLA:CPU's fastest form) and ``dZ``
    shifted by one step; for larger ones the loop sums it. Returns
    ``(dZ (T, B, H), dW_hh, the transposed outputs (H, T*B) or None)``.
    """
    T, B, H = outputs_TxBxH.shape
    after_loop = B * H <= _DW_HH_AFTER_LOOP_MAX_BLOCK
    W_hh_T = W_hh.T.astype(dtype)              # rounded once, not every step

    def set_dZ(t, dH_BxH, dZ_TxBxH):
        H_t, dout = outputs_TxBxH[t], dZ_TxBxH[t]
        dZ = (dH_BxH.reshape(-1) + dout.reshape(-1)) * _derivative(H_t.reshape(-1), nonlinearity)
        return _write(dZ_TxBxH, t, dZ.reshape(H_t.shape))

    # The last step runs in the loop too, with no dZ_{t+1} @ W_hh.T:
    # outside it, XLA:CPU copied the whole buffer to update one step of it.
    def step(i, carry):
        dZ_TxBxH, dW_hh = carry
        t = T - 1 - i
        dZ_next = dZ_TxBxH[jnp.minimum(t + 1, T - 1)]
        dZ_TxBxH = set_dZ(t, jnp.where(t == T - 1, 0.0, dot(dZ_next, W_hh_T, dtype)), dZ_TxBxH)
        if after_loop:
            return dZ_TxBxH, dW_hh
        # A transposed copy of H_t makes this a plain (NN) dot, XLA:CPU's faster
        # form; the barrier keeps XLA from folding the transpose into the dot.
        dW = dot(jax.lax.optimization_barrier(outputs_TxBxH[t].T), dZ_next, dtype)
        return dZ_TxBxH, dW_hh + jnp.where(t == T - 1, 0.0, dW)

    dZ_TxBxH, dW_hh = jax.lax.fori_loop(0, T, step, (dout_TxBxH, jnp.zeros_like(W_hh)))
    outputs_HxN = None
    if after_loop:
        outputs_HxN = jnp.transpose(outputs_TxBxH, (2, 0, 1)).reshape(H, T * B)
        dZ_next_NxH = jnp.concatenate([dZ_TxBxH[1:], jnp.zeros_like(dZ_TxBxH[:1])]).reshape(T * B, H)
        dW_hh = dW_hh + dot(outputs_HxN, dZ_next_NxH, dtype)
    return dZ_TxBxH, dW_hh, outputs_HxN


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _recurrence_dense_ce(W_hh, XW_TxBxH, W_HxV, b_V, labels_N, weights_N, unroll, nonlinearity, dtype,
                         dense_dtype):
    """``dense_cross_entropy``'s two sums for the RNN's outputs from ``H = 0``; the recurrence's matmuls in
    ``dtype``, the output layer's in ``dense_dtype``. The backward is the objective's (the cross-entropy's
    cotangent is ignored: the caller stops its gradient)."""
    return _recurrence_dense_ce_fwd(W_hh, XW_TxBxH, W_HxV, b_V, labels_N, weights_N, unroll, nonlinearity,
                                    dtype, dense_dtype)[0]


def _recurrence_dense_ce_fwd(W_hh, XW_TxBxH, W_HxV, b_V, labels_N, weights_N, unroll, nonlinearity, dtype,
                             dense_dtype):
    H0_BxH = jnp.zeros(XW_TxBxH.shape[1:], XW_TxBxH.dtype)
    outputs_TxBxH = _scan_in_place(W_hh, H0_BxH, XW_TxBxH, unroll, nonlinearity, dtype)
    outputs_NxH = outputs_TxBxH.reshape(-1, outputs_TxBxH.shape[-1])
    objective_sum, ce_sum, p_NxP = output_layer.softmax_cross_entropy(outputs_NxH, W_HxV, b_V, labels_N,
                                                                      weights_N, dense_dtype)
    return (objective_sum, ce_sum), (W_hh, outputs_TxBxH, W_HxV, p_NxP, labels_N, weights_N)


def _recurrence_dense_ce_bwd(unroll, nonlinearity, dtype, dense_dtype, residuals, g):
    """The cross-entropy's backward, then ``_backprop_through_time``; ``dW = outputs.T @ dlogits`` as a
    plain matmul of the outputs it transposed for ``dW_hh``."""
    W_hh, outputs_TxBxH, W_HxV, p_NxP, labels_N, weights_N = residuals
    V = W_HxV.shape[1]
    dlogits_NxP = output_layer.dlogits(p_NxP, labels_N, weights_N, g[0], V)
    dout_TxBxH = dot(dlogits_NxP, output_layer.pad_vocab(W_HxV).T, dense_dtype).reshape(outputs_TxBxH.shape)
    dZ_TxBxH, dW_hh, outputs_HxN = _backprop_through_time(W_hh, outputs_TxBxH, dout_TxBxH, nonlinearity,
                                                          dtype)
    if outputs_HxN is None:
        dW_HxP = output_layer.dense_weight_gradient(outputs_TxBxH.reshape(-1, outputs_TxBxH.shape[-1]),
                                                    dlogits_NxP, dense_dtype)
    else:
        dW_HxP = dot(outputs_HxN, dlogits_NxP, dense_dtype)
    return dW_hh, dZ_TxBxH, dW_HxP[:, :V], jnp.sum(dlogits_NxP, axis=0)[:V], None, None


_recurrence_dense_ce.defvjp(_recurrence_dense_ce_fwd, _recurrence_dense_ce_bwd)
