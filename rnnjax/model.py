"""The d2l RNN language model in Flax linen.

``SimpleRNNCell`` is one step, ``h' = tanh(x @ W_xh + h @ W_hh + b_h)``.
``RNN`` scans it over time with ``nn.scan``. For speed the time-independent
half of the step, ``x @ W_xh + b_h``, is computed for all steps at once before
the scan (a gather when x is one-hot), and the scan carries only
``tanh(xw + h @ W_hh)``, writing each step's output over its input. Its
backward pass (``nn.custom_vjp``) is a loop that carries only ``dh`` and
``dW_hh``, writing ``dz`` over the incoming gradient; the output layer and the
cross-entropy are one fused op with its own backward.
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


def _recurrence_bwd(residuals, cotangents):
    """Backprop through ``H_t = tanh(XW_t + H_{t-1} @ W_hh)`` carrying only ``dH`` and ``dW_hh``.

    ``dZ_t = (dH_t + dout_t) * (1 - H_t**2)`` with ``dH_t = dZ_{t+1} @ W_hh.T``.
    The loop overwrites each ``dout_t`` with ``dZ_t`` in the incoming gradient
    buffer and reads ``dZ_{t+1}`` back from it, so it needs no buffer of its
    own. With ``dZ_{t+1}`` and ``H_t`` at hand it also adds ``H_t.T @ dZ_{t+1}``
    to ``dW_hh``: cheaper than one long-contraction matmul after the loop,
    which would need the shifted ``H_{t-1}`` as a copy (the recipe's step
    10.4 -> 9.9 ms on one core, 7.0 -> 6.5 ms on two devices). The input
    gradients come after the loop, as single large ops.
    """
    params, H0_BxH, outputs_TxBxH = residuals
    dH_T, dZ_TxBxH = cotangents         # the gradient w.r.t. the outputs, turned into dZ in place
    W_hh = params["W_hh"]
    T = outputs_TxBxH.shape[0]

    def set_dZ(t, dH_BxH, dZ_TxBxH):
        H, dout = outputs_TxBxH[t], dZ_TxBxH[t]
        dZ = (dH_BxH.reshape(-1) + dout.reshape(-1)) * (1.0 - jnp.square(H.reshape(-1)))
        return dZ_TxBxH.at[t].set(dZ.reshape(H.shape))

    def step(i, carry):
        dZ_TxBxH, dW_hh = carry
        t = T - 2 - i
        dZ_next = dZ_TxBxH[t + 1]
        # A transposed copy of H_t makes this a plain (NN) dot, which XLA:CPU runs
        # faster than H_t.T @ dZ_next (one core, the recipe's step 9.68 -> 9.51 ms);
        # the barrier keeps XLA from folding the transpose into the dot.
        H_t_HxB = jax.lax.optimization_barrier(outputs_TxBxH[t].T)
        return set_dZ(t, dZ_next @ W_hh.T, dZ_TxBxH), dW_hh + H_t_HxB @ dZ_next

    dZ_TxBxH, dW_hh = jax.lax.fori_loop(0, T - 1, step,
                                        (set_dZ(T - 1, dH_T, dZ_TxBxH), jnp.zeros_like(W_hh)))
    dH0_BxH = dZ_TxBxH[0] @ W_hh.T
    dparams = jax.tree.map(jnp.zeros_like, params)  # W_xh and b_h act outside the scan.
    dparams["W_hh"] = dW_hh + H0_BxH.T @ dZ_TxBxH[0]
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
        mean cross-entropy over real tokens. The output layer and the
        cross-entropy run as one fused op with its own backward pass.
        """
        outputs_TxBxH, _ = self.rnn(OneHot(X_BxT.T, self.vocab_size))
        if self.is_initializing():
            self.output_layer(outputs_TxBxH[:1])           # creates its kernel and bias
        dense = self.output_layer.variables["params"]
        T, B, H = outputs_TxBxH.shape
        weights_N = jnp.broadcast_to(weights_B, (T, B)).reshape(-1)
        loss_sum = dense_cross_entropy(outputs_TxBxH.reshape(-1, H), dense["kernel"], dense["bias"],
                                       Y_BxT.T.reshape(-1), weights_N)
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


def _dense_cross_entropy_bwd(residuals, g):
    H_NxH, W_HxV, p_NxP, labels_N, weights_N = residuals
    V = W_HxV.shape[1]
    one_hot = jnp.arange(p_NxP.shape[-1]) == labels_N[:, None]
    dlogits_NxP = (p_NxP - one_hot) * (g * weights_N)[:, None]
    # dW = H.T @ dlogits, computed as (dlogits.T @ H).T: XLA:CPU's dot over the
    # 32768 rows is faster this way round (one core, this op's forward and backward:
    # 9.3 instead of 15.5 ms at H=128, 61 instead of 85 ms at H=512, equal at H=32).
    # The barrier keeps XLA from folding the transpose back into the dot.
    dW_HxP = jax.lax.optimization_barrier(dlogits_NxP.T @ H_NxH).T
    return (dlogits_NxP @ _pad_vocab(W_HxV).T, dW_HxP[:, :V], jnp.sum(dlogits_NxP, axis=0)[:V], None, None)


dense_cross_entropy.defvjp(_dense_cross_entropy_fwd, _dense_cross_entropy_bwd)


def build(vocab_size: int, num_hiddens: int, unroll: int = 1, **rnn_kwargs: Any) -> RNNLM:
    return RNNLM(RNN(num_hiddens, unroll=unroll, **rnn_kwargs), vocab_size)
