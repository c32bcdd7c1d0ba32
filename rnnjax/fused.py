"""The training loss of an ``RNNLM`` of ``SimpleRNNCell`` as one fused op: the same math as
``RNNLM.loss``, faster.

``FusedRNNLM`` is ``RNNLM`` with this loss; ``rnnjax.state.make_model`` picks
it where it applies (``applies``: a ``SimpleRNNCell``) unless
``Config.fused`` is off. What makes it fast (``docs/performance.md`` has the
measurements):

- the input projection ``x @ W_xh + b_h`` for all steps at once, a gather of
  the ``W_xh + b_h`` table by token id;
- the forward scan writes each ``H_t`` over its ``XW_t`` in one buffer;
- a hand-written backward pass through time that carries only the gradient
  buffer, and for small blocks takes ``dW_hh`` and the output layer's ``dW``
  as plain matmuls of one transpose of the outputs;
- the output layer and the cross-entropy fused, the vocabulary padded up to
  a multiple of 16 (``_PAD_VOCAB_TO``) for efficiency.

``tests/test_fused.py`` checks its value and gradients against the plain model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnnjax.model import RNNLM, SimpleRNNCell

Array = jax.Array


def applies(cell) -> bool:
    """Whether the fused loss computes this cell's model: d2l's tanh ``SimpleRNNCell``."""
    return type(cell) is SimpleRNNCell


class FusedRNNLM(RNNLM):
    """``RNNLM`` whose ``loss`` is ``rnnlm_loss``; everything else, parameters included, is RNNLM's."""

    def loss(self, X_BxT: Array, Y_BxT: Array, weights_B: Array) -> tuple[Array, Array]:
        if self.is_initializing():
            return super().loss(X_BxT, Y_BxT, weights_B)
        return rnnlm_loss(self.variables["params"], X_BxT, Y_BxT, weights_B, unroll=self.rnn.unroll)


def rnnlm_loss(params, X_BxT: Array, Y_BxT: Array, weights_B: Array, unroll: int = 1
               ) -> tuple[Array, Array]:
    """``RNNLM.loss`` from its ``params`` (initial state zero), as one op with its own backward pass."""
    cell, dense = params["rnn"]["cell"], params["output_layer"]
    B, T = X_BxT.shape
    # The bias goes into the table, not onto every gathered row: its gradient
    # then sums V rows instead of T*B.
    XW_TxBxH = (cell["W_xh"] + cell["b_h"])[X_BxT.T]
    weights_N = jnp.broadcast_to(weights_B, (T, B)).reshape(-1)
    loss_sum = _recurrence_dense_ce(cell["W_hh"], XW_TxBxH, dense["kernel"], dense["bias"],
                                    Y_BxT.T.reshape(-1), weights_N, unroll)
    return loss_sum, jnp.sum(weights_B) * T


def _recurrence(W_hh: Array, H_BxH: Array, XW_BxH: Array) -> Array:
    """``tanh(XW + H @ W_hh)``, the time-dependent half of the step."""
    # Elementwise work on flat vectors: XLA:CPU's loops over them are faster than over (B, H) rows.
    Z = (H_BxH @ W_hh).reshape(-1) + XW_BxH.reshape(-1)
    return jnp.tanh(Z).reshape(XW_BxH.shape)


def _scan_in_place(W_hh: Array, H_BxH: Array, XW_TxBxH: Array, unroll: int) -> Array:
    """The outputs ``(T, B, H)``: step t reads ``XW_t`` and leaves ``H_t`` in its place (no buffer
    of its own, no zero fill)."""
    def step(carry, t):
        H, buffer_TxBxH = carry
        H = _recurrence(W_hh, H, buffer_TxBxH[t])
        return (H, buffer_TxBxH.at[t].set(H)), None
    (_, outputs_TxBxH), _ = jax.lax.scan(step, (H_BxH, XW_TxBxH), jnp.arange(XW_TxBxH.shape[0]),
                                         unroll=unroll)
    return outputs_TxBxH


# Up to this many floats in a step's (batch, hidden) block, dW_hh is one matmul
# after the backward loop, sharing the outputs' transpose with the output layer's
# gradient; above it the sum inside the loop is faster (docs/performance.md).
_DW_HH_AFTER_LOOP_MAX_BLOCK = 2 ** 15


def _backprop_through_time(W_hh: Array, H0_BxH: Array, outputs_TxBxH: Array, dout_TxBxH: Array,
                           dH_T: Array) -> tuple[Array, Array, Array | None]:
    """Backprop through ``H_t = tanh(XW_t + H_{t-1} @ W_hh)`` from the gradients w.r.t. its outputs.

    ``dZ_t = (dH_t + dout_t) * (1 - H_t**2)`` with ``dH_t = dZ_{t+1} @ W_hh.T``.
    The loop overwrites each ``dout_t`` with ``dZ_t`` in the incoming buffer
    and reads ``dZ_{t+1}`` back from it. For small blocks ``dW_hh = sum_t
    H_{t-1}.T @ dZ_t`` is one matmul after the loop, of the outputs transposed
    once to ``(H, T*B)`` (a plain NN dot, XLA:CPU's fastest form) and ``dZ``
    shifted by one step; for larger ones the loop sums it. Returns
    ``(dZ (T, B, H), dW_hh, the transposed outputs (H, T*B) or None)``.
    """
    T, B, H = outputs_TxBxH.shape
    after_loop = B * H <= _DW_HH_AFTER_LOOP_MAX_BLOCK

    def set_dZ(t, dH_BxH, dZ_TxBxH):
        H_t, dout = outputs_TxBxH[t], dZ_TxBxH[t]
        dZ = (dH_BxH.reshape(-1) + dout.reshape(-1)) * (1.0 - jnp.square(H_t.reshape(-1)))
        return dZ_TxBxH.at[t].set(dZ.reshape(H_t.shape))

    # The last step runs in the loop too, with dH_T for dZ_{t+1} @ W_hh.T:
    # outside it, XLA:CPU copied the whole buffer to update one step of it.
    def step(i, carry):
        dZ_TxBxH, dW_hh = carry
        t = T - 1 - i
        dZ_next = dZ_TxBxH[jnp.minimum(t + 1, T - 1)]
        dZ_TxBxH = set_dZ(t, jnp.where(t == T - 1, dH_T, dZ_next @ W_hh.T), dZ_TxBxH)
        if after_loop:
            return dZ_TxBxH, dW_hh
        # A transposed copy of H_t makes this a plain (NN) dot, XLA:CPU's faster
        # form; the barrier keeps XLA from folding the transpose into the dot.
        dW = jax.lax.optimization_barrier(outputs_TxBxH[t].T) @ dZ_next
        return dZ_TxBxH, dW_hh + jnp.where(t == T - 1, 0.0, dW)

    dZ_TxBxH, dW_hh = jax.lax.fori_loop(0, T, step, (dout_TxBxH, jnp.zeros_like(W_hh)))
    dW_hh = dW_hh + H0_BxH.T @ dZ_TxBxH[0]
    outputs_HxN = None
    if after_loop:
        outputs_HxN = jnp.transpose(outputs_TxBxH, (2, 0, 1)).reshape(H, T * B)
        dZ_next_NxH = jnp.concatenate([dZ_TxBxH[1:], jnp.zeros_like(dZ_TxBxH[:1])]).reshape(T * B, H)
        dW_hh = dW_hh + outputs_HxN @ dZ_next_NxH
    return dZ_TxBxH, dW_hh, outputs_HxN


# The vocabulary is padded up to a multiple of 16 for efficiency (zero weights,
# bias -inf: the padding gets probability 0 exactly and no gradient).
_PAD_VOCAB_TO = 16


def _pad_vocab(x: Array, value: float = 0.0) -> Array:
    pad = -x.shape[-1] % _PAD_VOCAB_TO
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=value)


def _dlogits(p_NxP, labels_N, weights_N, g):
    """The gradient of ``g * loss_sum`` w.r.t. the (padded) logits: softmax minus one-hot."""
    one_hot = jnp.arange(p_NxP.shape[-1]) == labels_N[:, None]
    return (p_NxP - one_hot) * (g * weights_N)[:, None]


def _dense_weight_gradient(H_NxH, dlogits_NxP):
    """``H.T @ dlogits`` as ``(dlogits.T @ H).T``, the faster way round for XLA:CPU's dot over the
    N rows; the barrier keeps XLA from folding the transpose back into the dot."""
    return jax.lax.optimization_barrier(dlogits_NxP.T @ H_NxH).T


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _recurrence_dense_ce(W_hh, XW_TxBxH, W_HxV, b_V, labels_N, weights_N, unroll):
    """``sum_n weights_N[n] * CE(outputs[n] @ W_HxV + b_V, labels_N[n])`` of the RNN from ``H = 0``."""
    return _recurrence_dense_ce_fwd(W_hh, XW_TxBxH, W_HxV, b_V, labels_N, weights_N, unroll)[0]


def _recurrence_dense_ce_fwd(W_hh, XW_TxBxH, W_HxV, b_V, labels_N, weights_N, unroll):
    H0_BxH = jnp.zeros(XW_TxBxH.shape[1:], XW_TxBxH.dtype)
    outputs_TxBxH = _scan_in_place(W_hh, H0_BxH, XW_TxBxH, unroll)
    # The softmax is kept, so the backward is one elementwise pass and two matmuls.
    logits_NxP = outputs_TxBxH.reshape(-1, outputs_TxBxH.shape[-1]) @ _pad_vocab(W_HxV) + _pad_vocab(
        b_V, -jnp.inf)
    m_Nx1 = jnp.max(logits_NxP, axis=-1, keepdims=True)
    e_NxP = jnp.exp(logits_NxP - m_Nx1)
    s_Nx1 = jnp.sum(e_NxP, axis=-1, keepdims=True)
    picked_N = jnp.take_along_axis(logits_NxP, labels_N[:, None], axis=-1)[:, 0]
    ce_N = jnp.log(s_Nx1[:, 0]) + m_Nx1[:, 0] - picked_N
    residuals = (W_hh, H0_BxH, outputs_TxBxH, W_HxV, e_NxP / s_Nx1, labels_N, weights_N)
    return jnp.sum(ce_N * weights_N), residuals


def _recurrence_dense_ce_bwd(unroll, residuals, g):
    """The cross-entropy's backward, then ``_backprop_through_time``; ``dW = outputs.T @ dlogits`` as a
    plain matmul of the outputs it transposed for ``dW_hh``."""
    W_hh, H0_BxH, outputs_TxBxH, W_HxV, p_NxP, labels_N, weights_N = residuals
    V = W_HxV.shape[1]
    dlogits_NxP = _dlogits(p_NxP, labels_N, weights_N, g)
    dout_TxBxH = (dlogits_NxP @ _pad_vocab(W_HxV).T).reshape(outputs_TxBxH.shape)
    dZ_TxBxH, dW_hh, outputs_HxN = _backprop_through_time(
        W_hh, H0_BxH, outputs_TxBxH, dout_TxBxH, jnp.zeros_like(H0_BxH))
    if outputs_HxN is None:
        dW_HxP = _dense_weight_gradient(outputs_TxBxH.reshape(-1, outputs_TxBxH.shape[-1]), dlogits_NxP)
    else:
        dW_HxP = outputs_HxN @ dlogits_NxP
    return dW_hh, dZ_TxBxH, dW_HxP[:, :V], jnp.sum(dlogits_NxP, axis=0)[:V], None, None


_recurrence_dense_ce.defvjp(_recurrence_dense_ce_fwd, _recurrence_dense_ce_bwd)
