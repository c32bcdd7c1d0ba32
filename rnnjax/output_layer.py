"""The output layer and the cross-entropy as one op, its backward written by hand: how every kernel's loss
ends (``rnnjax.fused``, ``rnnjax.hoisted``, ``rnnjax.cudnn``), the same math as ``RNNLM.loss``'s last layer.

The softmax is kept from the forward, so the backward is one elementwise pass
(``dlogits``: softmax minus ``rnnjax.objective.targets``) and two matmuls, in
the compute dtype (``rnnjax.precision.dot``). ``tests/test_output_layer.py``
checks it against optax's cross-entropy under autodiff.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnnjax import objective
from rnnjax.precision import dot

Array = jax.Array

# The vocabulary is padded up to a multiple of 16 for efficiency (zero weights,
# bias -inf: the padding gets probability 0 exactly and no gradient).
PAD_VOCAB_TO = 16


def pad_vocab(x: Array, value: float = 0.0) -> Array:
    pad = -x.shape[-1] % PAD_VOCAB_TO
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=value)


def softmax_cross_entropy(H_NxH, W_HxV, b_V, labels_N, weights_N, dtype) -> tuple[Array, Array, Array]:
    """``(objective sum, cross-entropy sum, the softmax (N, padded V))`` of the logits
    ``H_NxH @ W_HxV + b_V``: sums over n of ``weights_N[n]`` times the cross-entropy against
    ``rnnjax.objective.targets`` and against the label ``labels_N[n]``.

    The softmax is kept, so the backward is one elementwise pass and two matmuls.
    """
    V = W_HxV.shape[1]
    logits_NxP = dot(H_NxH, pad_vocab(W_HxV), dtype) + pad_vocab(b_V, -jnp.inf)
    m_Nx1 = jnp.max(logits_NxP, axis=-1, keepdims=True)
    e_NxP = jnp.exp(logits_NxP - m_Nx1)
    s_Nx1 = jnp.sum(e_NxP, axis=-1, keepdims=True)
    logsumexp_N = jnp.log(s_Nx1[:, 0]) + m_Nx1[:, 0]
    picked_N = jnp.take_along_axis(logits_NxP, labels_N[:, None], axis=-1)[:, 0]
    # Targets sum to 1: their cross-entropy is logsumexp - <targets, logits>, over the real vocabulary
    # only (the padding's logits are -inf).
    objective_N = logsumexp_N - jnp.sum(objective.targets(labels_N, V) * logits_NxP[:, :V], axis=-1)
    return (jnp.sum(objective_N * weights_N), jnp.sum((logsumexp_N - picked_N) * weights_N),
            e_NxP / s_Nx1)


def dense_cross_entropy(H_NxH, W_HxV, b_V, labels_N, weights_N, dtype=jnp.float32) -> tuple[Array, Array]:
    """The output layer and the loss as one op, for the outputs of any recurrent stack; matmuls in ``dtype``.

    Returns ``(objective sum, cross-entropy sum)`` over n, each term weighted by
    ``weights_N[n]``, of the logits ``H_NxH[n] @ W_HxV + b_V``: against
    ``rnnjax.objective.targets`` (differentiated) and against ``labels_N[n]``
    (measured: no gradient flows from it).
    """
    objective_sum, ce_sum = _dense_cross_entropy(H_NxH, W_HxV, b_V, labels_N, weights_N, dtype)
    return objective_sum, jax.lax.stop_gradient(ce_sum)


def output_loss(dense: dict, outputs_TxBxH: Array, Y_BxT: Array, weights_B: Array, dtype=jnp.float32
                ) -> tuple[Array, Array, Array]:
    """``RNNLM.loss``'s three values from a recurrent layer's time-major outputs, the output layer (``dense``,
    its params) and the loss as one op (``dense_cross_entropy``): what every kernel's loss ends with."""
    T, B = outputs_TxBxH.shape[:2]
    labels_N, weights_N = Y_BxT.T.reshape(-1), jnp.broadcast_to(weights_B, (T, B)).reshape(-1)
    objective_sum, ce_sum = dense_cross_entropy(outputs_TxBxH.reshape(T * B, -1), dense["kernel"],
                                                dense["bias"], labels_N, weights_N, dtype)
    return objective_sum, jnp.sum(weights_B) * T, ce_sum


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _dense_cross_entropy(H_NxH, W_HxV, b_V, labels_N, weights_N, dtype):
    """``dense_cross_entropy``'s two sums; the backward is the objective's (the cross-entropy's cotangent
    is ignored: every caller stops its gradient)."""
    return softmax_cross_entropy(H_NxH, W_HxV, b_V, labels_N, weights_N, dtype)[:2]


def _dense_cross_entropy_fwd(H_NxH, W_HxV, b_V, labels_N, weights_N, dtype):
    objective_sum, ce_sum, p_NxP = softmax_cross_entropy(H_NxH, W_HxV, b_V, labels_N, weights_N, dtype)
    return (objective_sum, ce_sum), (H_NxH, W_HxV, p_NxP, labels_N, weights_N)


def _dense_cross_entropy_bwd(dtype, residuals, g):
    H_NxH, W_HxV, p_NxP, labels_N, weights_N = residuals
    V = W_HxV.shape[1]
    dlogits_NxP = dlogits(p_NxP, labels_N, weights_N, g[0], V)
    # A cotangent takes its primal's dtype: a cell of one's own may output bfloat16 (flax's SimpleCell).
    return (dot(dlogits_NxP, pad_vocab(W_HxV).T, dtype).astype(H_NxH.dtype),
            dense_weight_gradient(H_NxH, dlogits_NxP, dtype)[:, :V], jnp.sum(dlogits_NxP, axis=0)[:V], None,
            None)


_dense_cross_entropy.defvjp(_dense_cross_entropy_fwd, _dense_cross_entropy_bwd)


def dlogits(p_NxP, labels_N, weights_N, g, vocab_size):
    """The gradient of ``g * objective sum`` w.r.t. the (padded) logits: softmax minus the targets, which
    holds for any targets that sum to 1 (they are 0 on the padding)."""
    targets_NxP = pad_vocab(objective.targets(labels_N, vocab_size))
    return (p_NxP - targets_NxP) * (g * weights_N)[:, None]


def dense_weight_gradient(H_NxH, dlogits_NxP, dtype):
    """``H.T @ dlogits`` as ``(dlogits.T @ H).T``, the faster way round for XLA:CPU's dot over the
    N rows; the barrier keeps XLA from folding the transpose back into the dot."""
    return jax.lax.optimization_barrier(dot(dlogits_NxP.T, H_NxH, dtype)).T
