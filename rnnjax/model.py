"""The d2l RNN language model in Flax linen.

``SimpleRNNCell`` is one step, ``h' = tanh(x @ W_xh + h @ W_hh + b_h)``.
``RNN`` scans it over time with ``nn.scan``. For speed the time-independent
half of the step, ``x @ W_xh + b_h``, is computed for all steps at once before
the scan (a gather when x is one-hot), and the scan carries only
``tanh(xw + h @ W_hh)``, writing each step's output over its input. Its
backward pass (``nn.custom_vjp``) is a loop that carries only the gradient
buffer, writing ``dz`` over the incoming gradient; the weight gradients are
large matmuls around it. For training, the recurrence, the output layer and the
cross-entropy are one op with one backward pass (``RNN.dense_cross_entropy``).
All of it is exactly the d2l model: ``tests/test_model.py`` checks values and
gradients against ``flax.linen.SimpleCell``, a NumPy loop, plain autodiff and
optax's cross-entropy. ``experiments/benchmark.py`` measures what each pays.

Shapes are time-major as in d2l: inputs ``(num_steps, batch, num_inputs)``.
Names carry shape suffixes where it helps: T steps, B batch, H hiddens,
V vocabulary, I inputs.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array


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

    ``x @ W`` for such an ``x`` is the row gather ``W[ids]``: the same math
    without building the one-hot tensor.
    """
    ids: Array
    depth: int = struct.field(pytree_node=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.ids.shape, self.depth)

    def dense(self, dtype=jnp.float32) -> Array:
        return jax.nn.one_hot(self.ids, self.depth, dtype=dtype)


class SimpleRNNCell(nn.Module):
    """One step of a tanh RNN: ``h' = tanh(x @ W_xh + h @ W_hh + b_h)``.

    ``__call__(H, X) -> (H', H')`` is the usual cell interface (carry, output).
    ``input_projection`` and ``recurrence`` are its two halves; ``RNN`` applies
    the first to all steps at once and scans the second.
    """
    num_hiddens: int

    def setup(self):
        init = uniform_init(self.num_hiddens)
        self.W_hh = self.param("W_hh", init, (self.num_hiddens, self.num_hiddens))
        self.b_h = self.param("b_h", init, (self.num_hiddens,))

    @nn.compact
    def input_projection(self, X: Array | OneHot) -> Array:
        """``X @ W_xh + b_h`` for any leading shape; a gather for ``OneHot``."""
        W_xh = self.param("W_xh", uniform_init(self.num_hiddens), (X.shape[-1], self.num_hiddens))
        if isinstance(X, OneHot):
            # The bias added to the table, not to every gathered row: the same
            # values, and autodiff then sums b_h's gradient over the V rows of
            # W_xh's instead of over all T*B rows (d2l's step on one core 9.20 ->
            # 9.08 ms, on two CPU devices 4.88 -> 4.86 ms; interleaved).
            return (W_xh + self.b_h)[X.ids]
        return X @ W_xh + self.b_h

    def recurrence(self, H_BxH: Array, XW_BxH: Array) -> Array:
        """``tanh(XW + H @ W_hh)``, the time-dependent half of the step."""
        # The elementwise part works on flat vectors: XLA's CPU loops over a
        # flat array run about twice as fast as over (B, 32) rows.
        Z = (H_BxH @ self.W_hh).reshape(-1) + XW_BxH.reshape(-1)
        return jnp.tanh(Z).reshape(XW_BxH.shape)

    def __call__(self, H_BxH: Array, X_BxI: Array | OneHot) -> tuple[Array, Array]:
        H_BxH = self.recurrence(H_BxH, self.input_projection(X_BxI))
        return H_BxH, H_BxH


def _scan_recurrence(cell: SimpleRNNCell, H_BxH: Array, XW_TxBxH: Array, unroll: int):
    """The plain scan: ``XW`` in, the stacked outputs out (the reference for autodiff)."""
    def step(cell, H, XW):
        H = cell.recurrence(H, XW)
        return H, H
    scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=0, out_axes=0, unroll=unroll)
    return scan(cell, H_BxH, XW_TxBxH)


def _scan_recurrence_in_place(cell: SimpleRNNCell, H_BxH: Array, XW_TxBxH: Array, unroll: int):
    """The same scan, writing each ``H_t`` over ``XW_t`` in one buffer.

    The scan carries ``(H, buffer)``: step t reads ``XW_t`` and leaves ``H_t``
    in its place, so the outputs need no buffer (and no zero fill) of their own.
    """
    def step(cell, carry, t):
        H, buffer_TxBxH = carry
        H = cell.recurrence(H, buffer_TxBxH[t])
        return (H, buffer_TxBxH.at[t].set(H)), None
    scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False},
                   length=XW_TxBxH.shape[0], unroll=unroll)
    (H_T, outputs_TxBxH), _ = scan(cell, (H_BxH, XW_TxBxH), jnp.arange(XW_TxBxH.shape[0]))
    return H_T, outputs_TxBxH


def _recurrence_fwd(cell: SimpleRNNCell, H_BxH: Array, XW_TxBxH: Array, unroll: int):
    H_T, outputs_TxBxH = _scan_recurrence_in_place(cell, H_BxH, XW_TxBxH, unroll)
    return (H_T, outputs_TxBxH), (cell.variables["params"], H_BxH, outputs_TxBxH)


# Where each step's (batch, hidden) block holds at most this many floats, the
# backward pass makes dW_hh one matmul after the loop, of the outputs transposed
# once, and the training loss's output layer takes its gradient from the same
# transpose (``RNN.dense_cross_entropy``). Together: d2l's step 1.04-1.08x
# faster on two CPU devices (512 x 32 a device; five interleaved A/B runs),
# 1.15x on one. dW_hh after the loop alone gained nothing on two devices. Above
# the bound the sum inside the loop is faster: hidden 128 and 512 at batch 1024
# on two devices took 1.04-1.05x longer after the loop; at 2**15 it is even.
_DW_HH_AFTER_LOOP_MAX_BLOCK = 2 ** 15


def _backprop_through_time(W_hh: Array, H0_BxH: Array, outputs_TxBxH: Array, dout_TxBxH: Array,
                           dH_T: Array) -> tuple[Array, Array, Array, Array | None]:
    """Backprop through ``H_t = tanh(XW_t + H_{t-1} @ W_hh)`` from the gradients w.r.t. its outputs.

    ``dZ_t = (dH_t + dout_t) * (1 - H_t**2)`` with ``dH_t = dZ_{t+1} @ W_hh.T``.
    The loop overwrites each ``dout_t`` with ``dZ_t`` in the incoming gradient
    buffer and reads ``dZ_{t+1}`` back from it, so it needs no buffer of its
    own. ``dW_hh = sum_t H_{t-1}.T @ dZ_t`` is, for small step blocks, one
    matmul after the loop: of the outputs transposed once to ``(H, T*B)`` (a
    plain NN dot, the form XLA:CPU runs fastest) and of ``dZ`` shifted by one
    step. Returns ``(dZ (T, B, H), dH0 (B, H), dW_hh, the transposed outputs
    (H, T*B) or None)``; a caller with more gradients to take against the
    outputs reuses the last. For larger blocks the loop sums ``dW_hh`` itself.
    """
    T, B, H = outputs_TxBxH.shape
    after_loop = B * H <= _DW_HH_AFTER_LOOP_MAX_BLOCK

    def set_dZ(t, dH_BxH, dZ_TxBxH):
        H_t, dout = outputs_TxBxH[t], dZ_TxBxH[t]
        dZ = (dH_BxH.reshape(-1) + dout.reshape(-1)) * (1.0 - jnp.square(H_t.reshape(-1)))
        return dZ_TxBxH.at[t].set(dZ.reshape(H_t.shape))

    # The last step runs in the loop too, taking dH_T where the others take
    # dZ_{t+1} @ W_hh.T: outside it, XLA:CPU copied the whole buffer to update
    # one step of it (d2l's step 1.01-1.03x faster on two CPU devices, 1.04x on
    # one; interleaved A/B).
    def step(i, carry):
        dZ_TxBxH, dW_hh = carry
        t = T - 1 - i
        dZ_next = dZ_TxBxH[jnp.minimum(t + 1, T - 1)]
        dZ_TxBxH = set_dZ(t, jnp.where(t == T - 1, dH_T, dZ_next @ W_hh.T), dZ_TxBxH)
        if after_loop:
            return dZ_TxBxH, dW_hh
        # A transposed copy of H_t makes this a plain (NN) dot, which XLA:CPU runs
        # faster than H_t.T @ dZ_next; the barrier keeps XLA from folding the
        # transpose into the dot.
        dW = jax.lax.optimization_barrier(outputs_TxBxH[t].T) @ dZ_next
        return dZ_TxBxH, dW_hh + jnp.where(t == T - 1, 0.0, dW)

    dZ_TxBxH, dW_hh = jax.lax.fori_loop(0, T, step, (dout_TxBxH, jnp.zeros_like(W_hh)))
    dW_hh = dW_hh + H0_BxH.T @ dZ_TxBxH[0]
    outputs_HxN = None
    if after_loop:
        outputs_HxN = jnp.transpose(outputs_TxBxH, (2, 0, 1)).reshape(H, T * B)
        dZ_next_NxH = jnp.concatenate([dZ_TxBxH[1:], jnp.zeros_like(dZ_TxBxH[:1])]).reshape(T * B, H)
        dW_hh = dW_hh + outputs_HxN @ dZ_next_NxH
    return dZ_TxBxH, dZ_TxBxH[0] @ W_hh.T, dW_hh, outputs_HxN


def _recurrence_bwd(residuals, cotangents):
    params, H0_BxH, outputs_TxBxH = residuals
    dH_T, dout_TxBxH = cotangents
    dZ_TxBxH, dH0_BxH, dW_hh, _ = _backprop_through_time(
        params["W_hh"], H0_BxH, outputs_TxBxH, dout_TxBxH, dH_T)
    dparams = jax.tree.map(jnp.zeros_like, params)  # W_xh and b_h act outside the scan.
    dparams["W_hh"] = dW_hh
    return {"params": dparams}, dH0_BxH, dZ_TxBxH


class RNN(nn.Module):
    """``SimpleRNNCell`` scanned over time (``nn.scan``, params broadcast).

    ``__call__(inputs (T, B, I) or OneHot (T, B), H (B, H) or None)`` returns
    ``(outputs (T, B, H), H_final (B, H))``, as d2l's ``RNN`` does.

    ``unroll`` is the forward scan's unroll factor (on a CPU 1 is best: see
    ``python -m experiments.benchmark --ablations``). ``custom_vjp=False``
    differentiates the scan with plain autodiff: the reference the fast
    backward is tested against.
    """
    num_hiddens: int
    unroll: int = 1
    custom_vjp: bool = True

    def setup(self):
        self.cell = SimpleRNNCell(self.num_hiddens)

    def __call__(self, inputs: Array | OneHot, H: Array | None = None) -> tuple[Array, Array]:
        XW_TxBxH = self.cell.input_projection(inputs)
        if H is None:
            H = jnp.zeros(XW_TxBxH.shape[1:], XW_TxBxH.dtype)
        if self.custom_vjp:
            recurrence = nn.custom_vjp(
                functools.partial(_scan_recurrence_in_place, unroll=self.unroll),
                forward_fn=functools.partial(_recurrence_fwd, unroll=self.unroll),
                backward_fn=_recurrence_bwd)
        else:
            recurrence = functools.partial(_scan_recurrence, unroll=self.unroll)
        H_final, outputs_TxBxH = recurrence(self.cell, H, XW_TxBxH)
        return outputs_TxBxH, H_final

    def step(self, X_BxI: Array | OneHot, H_BxH: Array) -> Array:
        """One time step, ``H' = cell(H, X)``: what generation feeds back."""
        return self.cell(H_BxH, X_BxI)[0]

    def dense_cross_entropy(self, inputs: Array | OneHot, W_HxV: Array, b_V: Array, labels_TxB: Array,
                            weights_TxB: Array) -> Array:
        """``dense_cross_entropy`` of a Dense layer ``(W_HxV, b_V)`` on the outputs from ``H = 0``.

        The training objective as one op. With ``custom_vjp`` its backward pass
        is one piece: the outputs, transposed once for ``dW_hh``, serve
        ``W_HxV``'s gradient too, as a plain matmul (d2l's step on two CPU
        devices 1.04-1.06x faster than with a backward pass of its own for
        each; interleaved). ``custom_vjp=False`` differentiates the scan.
        """
        labels_N, weights_N = labels_TxB.reshape(-1), weights_TxB.reshape(-1)
        if not self.custom_vjp:
            outputs_TxBxH, _ = self(inputs)
            return dense_cross_entropy(outputs_TxBxH.reshape(-1, self.num_hiddens), W_HxV, b_V,
                                       labels_N, weights_N)
        XW_TxBxH = self.cell.input_projection(inputs)
        H0_BxH = jnp.zeros(XW_TxBxH.shape[1:], XW_TxBxH.dtype)
        loss = nn.custom_vjp(functools.partial(_recurrence_dense_ce, unroll=self.unroll),
                             forward_fn=functools.partial(_recurrence_dense_ce_fwd, unroll=self.unroll),
                             backward_fn=_recurrence_dense_ce_bwd)
        return loss(self.cell, H0_BxH, XW_TxBxH, W_HxV, b_V, labels_N, weights_N)


class RNNLM(nn.Module):
    """d2l's ``RNNLM``: one-hot inputs, the ``RNN``, a Dense output layer.

    ``__call__(X (B, T) int, H=None)`` returns logits ``(B, T, V)``.
    """
    rnn: RNN
    vocab_size: int

    def setup(self):
        init = uniform_init(self.rnn.num_hiddens)
        self.output_layer = nn.Dense(self.vocab_size, kernel_init=init, bias_init=init)

    def __call__(self, X_BxT: Array, H: Array | None = None) -> Array:
        return self.forward(X_BxT, H)[0]

    def forward(self, X_BxT: Array, H: Array | None = None) -> tuple[Array, Array]:
        """``(logits (B, T, V), H_final (B, H))``."""
        outputs_TxBxH, H = self.rnn(OneHot(X_BxT.T, self.vocab_size), H)
        return self.output_layer(outputs_TxBxH).swapaxes(0, 1), H

    def step(self, X_B: Array, H_BxH: Array) -> tuple[Array, Array]:
        """Feeds one token per row: ``(logits (B, V), H' (B, H))``."""
        H_BxH = self.rnn.step(OneHot(X_B, self.vocab_size), H_BxH)
        return self.output_layer(H_BxH), H_BxH

    def loss(self, X_BxT: Array, Y_BxT: Array, weights_B: Array) -> tuple[Array, Array]:
        """``(sum over rows of weights_B[b] * CE(b, t) summed over t, number of weighted tokens)``.

        Padding rows have weight 0. Dividing the first by the second is the
        mean cross-entropy over real tokens. The RNN, the output layer and the
        cross-entropy run as one op with its own backward pass
        (``RNN.dense_cross_entropy``).
        """
        if self.is_initializing():
            self(X_BxT[:, :1])                                # creates every parameter
        dense = self.output_layer.variables["params"]
        B, T = X_BxT.shape
        weights_TxB = jnp.broadcast_to(weights_B, (T, B))
        loss_sum = self.rnn.dense_cross_entropy(OneHot(X_BxT.T, self.vocab_size), dense["kernel"],
                                                dense["bias"], Y_BxT.T, weights_TxB)
        return loss_sum, jnp.sum(weights_B) * T


# The fused output layer pads the vocabulary to a multiple of this many columns
# (zero weights, bias -inf, so softmax gives them probability 0 exactly): XLA:CPU
# vectorizes rows of 32 floats well and rows of 28 poorly (an ``exp`` over
# 32768x32 takes 0.60 ms on one core, over 32768x28 1.52 ms), and the logits
# matmul gets faster too. d2l's step on two CPU devices: 1.10x (interleaved).
_PAD_VOCAB_TO = 16


def _pad_vocab(x: Array, value: float = 0.0) -> Array:
    """``x`` with its last axis (the vocabulary) padded by ``value`` up to a multiple of 16."""
    pad = -x.shape[-1] % _PAD_VOCAB_TO
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=value)


@jax.custom_vjp
def dense_cross_entropy(H_NxH: Array, W_HxV: Array, b_V: Array, labels_N: Array, weights_N: Array) -> Array:
    """``sum_n weights_N[n] * CE(H_NxH[n] @ W_HxV + b_V, labels_N[n])``, fused.

    The forward keeps the softmax, so the backward is one elementwise pass
    (softmax minus one-hot) and two matmuls; no gather or scatter of the labels.
    Inside, the vocabulary is padded to a multiple of 16 (``_PAD_VOCAB_TO``).
    """
    return _dense_cross_entropy_fwd(H_NxH, W_HxV, b_V, labels_N, weights_N)[0]


def _dense_cross_entropy_fwd(H_NxH, W_HxV, b_V, labels_N, weights_N):
    logits_NxP = H_NxH @ _pad_vocab(W_HxV) + _pad_vocab(b_V, -jnp.inf)
    m_Nx1 = jnp.max(logits_NxP, axis=-1, keepdims=True)
    e_NxP = jnp.exp(logits_NxP - m_Nx1)
    s_Nx1 = jnp.sum(e_NxP, axis=-1, keepdims=True)
    picked_N = jnp.take_along_axis(logits_NxP, labels_N[:, None], axis=-1)[:, 0]
    ce_N = jnp.log(s_Nx1[:, 0]) + m_Nx1[:, 0] - picked_N
    return jnp.sum(ce_N * weights_N), (H_NxH, W_HxV, e_NxP / s_Nx1, labels_N, weights_N)


def _dlogits(p_NxP, labels_N, weights_N, g):
    """The gradient of ``g * dense_cross_entropy`` w.r.t. the (padded) logits: softmax minus one-hot."""
    one_hot = jnp.arange(p_NxP.shape[-1]) == labels_N[:, None]
    return (p_NxP - one_hot) * (g * weights_N)[:, None]


def _dense_cross_entropy_bwd(residuals, g):
    H_NxH, W_HxV, p_NxP, labels_N, weights_N = residuals
    V = W_HxV.shape[1]
    dlogits_NxP = _dlogits(p_NxP, labels_N, weights_N, g)
    return (dlogits_NxP @ _pad_vocab(W_HxV).T, _dense_weight_gradient(H_NxH, dlogits_NxP)[:, :V],
            jnp.sum(dlogits_NxP, axis=0)[:V], None, None)


def _dense_weight_gradient(H_NxH, dlogits_NxP):
    """``H.T @ dlogits``, computed as ``(dlogits.T @ H).T``.

    XLA:CPU's dot over the N rows is faster this way round (one core, the
    fused op's forward and backward: 9.3 instead of 15.5 ms at H=128, 61
    instead of 85 ms at H=512, equal at H=32). The barrier keeps XLA from
    folding the transpose back into the dot.
    """
    return jax.lax.optimization_barrier(dlogits_NxP.T @ H_NxH).T


dense_cross_entropy.defvjp(_dense_cross_entropy_fwd, _dense_cross_entropy_bwd)


def _recurrence_dense_ce(cell, H0_BxH, XW_TxBxH, W_HxV, b_V, labels_N, weights_N, unroll):
    return _recurrence_dense_ce_fwd(cell, H0_BxH, XW_TxBxH, W_HxV, b_V, labels_N, weights_N, unroll)[0]


def _recurrence_dense_ce_fwd(cell, H0_BxH, XW_TxBxH, W_HxV, b_V, labels_N, weights_N, unroll):
    _, outputs_TxBxH = _scan_recurrence_in_place(cell, H0_BxH, XW_TxBxH, unroll)
    loss_sum, (_, _, p_NxP, _, _) = _dense_cross_entropy_fwd(
        outputs_TxBxH.reshape(-1, outputs_TxBxH.shape[-1]), W_HxV, b_V, labels_N, weights_N)
    return loss_sum, (cell.variables["params"], H0_BxH, outputs_TxBxH, W_HxV, p_NxP, labels_N, weights_N)


def _recurrence_dense_ce_bwd(residuals, g):
    """The cross-entropy's backward, then ``_backprop_through_time``; ``dW = outputs.T @ dlogits``
    as a plain matmul of the outputs it transposed for ``dW_hh``."""
    params, H0_BxH, outputs_TxBxH, W_HxV, p_NxP, labels_N, weights_N = residuals
    V = W_HxV.shape[1]
    dlogits_NxP = _dlogits(p_NxP, labels_N, weights_N, g)
    dout_TxBxH = (dlogits_NxP @ _pad_vocab(W_HxV).T).reshape(outputs_TxBxH.shape)
    dZ_TxBxH, dH0_BxH, dW_hh, outputs_HxN = _backprop_through_time(
        params["W_hh"], H0_BxH, outputs_TxBxH, dout_TxBxH, jnp.zeros_like(H0_BxH))
    if outputs_HxN is None:
        dW_HxP = _dense_weight_gradient(outputs_TxBxH.reshape(-1, outputs_TxBxH.shape[-1]), dlogits_NxP)
    else:
        dW_HxP = outputs_HxN @ dlogits_NxP
    dparams = jax.tree.map(jnp.zeros_like, params)  # W_xh and b_h act outside.
    dparams["W_hh"] = dW_hh
    return ({"params": dparams}, dH0_BxH, dZ_TxBxH, dW_HxP[:, :V], jnp.sum(dlogits_NxP, axis=0)[:V],
            None, None)


def build(vocab_size: int, num_hiddens: int, unroll: int = 1, **rnn_kwargs: Any) -> RNNLM:
    return RNNLM(RNN(num_hiddens, unroll=unroll, **rnn_kwargs), vocab_size)
