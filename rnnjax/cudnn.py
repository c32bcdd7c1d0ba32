"""cuDNN's LSTM as the training kernel of rnnjax's LSTM language model (NVIDIA GPUs only).

JAX binds cuDNN's LSTM as ``jax.experimental.rnn.lstm``, with ``lstm_ref`` its
reference. It takes all layers' weights in one flat vector in cuDNN's layout
(``pack``): for every layer, ``weight_ih`` then ``weight_hh`` (PyTorch's, i.e.
rnnjax's ``W_ih.T``, ``W_hh.T``, gates ``i, f, g, o``), then every layer's
``b_ih`` and ``b_hh``. ``CudnnRNNLM`` is ``RNNLM`` whose ``loss`` runs the
stack as one cuDNN call (one call per layer with dropout on in training, so
that the stack's own dropout module draws the plain model's masks between
them), then ``output_layer.dense_cross_entropy``.

The binding has no batching rule: under ``jax.vmap`` (``rnnjax.runs``' seeds)
the calls run one run after another (``jax.custom_batching.sequential_vmap``).
It runs float32 only, one direction here; ``rnnjax.kernels.check`` refuses
the rest. ``tests/test_cudnn.py`` checks ``pack`` against ``lstm_ref`` on a CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import rnn as jax_rnn

from rnnjax.output_layer import output_loss
from rnnjax.hoisted import layers
from rnnjax.model import RNNLM

Array = jax.Array


def pack(layer_params: list[dict]) -> Array:
    """rnnjax's LSTM params, one dict per layer (bottom first), as cuDNN's flat weight vector."""
    linear = [w.T.reshape(-1) for p in layer_params for w in (p["W_ih"], p["W_hh"])]
    return jnp.concatenate(linear + [b for p in layer_params for b in (p["b_ih"], p["b_hh"])])


def describe(rnn) -> str:
    """What trains, in words: what a run reports."""
    return "cudnn loss (jax.experimental.rnn.lstm: cuDNN's LSTM; the fused output layer)"


class CudnnRNNLM(RNNLM):
    """``RNNLM`` (of ``LSTMCell``s, one direction) whose ``loss`` runs cuDNN's LSTM; params are RNNLM's."""

    def loss(self, X_BxT: Array, Y_BxT: Array, weights_B: Array, train: bool = False,
             first_row: int | Array = 0) -> tuple[Array, Array, Array]:
        if self.is_initializing():
            return super().loss(X_BxT, Y_BxT, weights_B)
        params = self.variables["params"]
        num_layers, directions, layer_params = layers(self.rnn, params["rnn"])
        if directions != (False,):
            raise ValueError("The cudnn kernel runs one forward direction.")
        H = self.rnn.cell.num_hiddens
        x_BxTxI = jax.nn.one_hot(X_BxT, self.vocab_size, dtype=jnp.float32)
        if train and num_layers > 1 and self.rnn.dropout > 0:
            for k, p in enumerate(layer_params):
                if k > 0:      # the stack's own dropout, on its time-major outputs: the plain model's masks
                    x_BxTxI = self.rnn.drop(x_BxTxI.swapaxes(0, 1), False, first_row).swapaxes(0, 1)
                x_BxTxI = lstm(x_BxTxI, pack([p]), H, 1)
            outputs_BxTxH = x_BxTxI
        else:
            outputs_BxTxH = lstm(x_BxTxI, pack(layer_params), H, num_layers)
        return output_loss(params["output_layer"], outputs_BxTxH.swapaxes(0, 1), Y_BxT, weights_B)


def cudnn_forward(x_BxTxI: Array, weights: Array, hidden_size: int, num_layers: int) -> tuple[Array, tuple]:
    """The binding's forward from zero states: ``(outputs (B, T, H), residuals)``."""
    B, T, input_size = x_BxTxI.shape
    zeros = jnp.zeros((num_layers, B, hidden_size), x_BxTxI.dtype)
    (y, _, _), residuals = jax_rnn.lstm_fwd(
        x_BxTxI, zeros, zeros, weights, jnp.full((B,), T, jnp.int32), input_size=input_size,
        hidden_size=hidden_size,
        num_layers=num_layers, dropout=0.0, bidirectional=False, precision=None)
    return y, residuals


def cudnn_backward(residuals: tuple, dy_BxTxH: Array, hidden_size: int, num_layers: int
                   ) -> tuple[Array, Array]:
    """The binding's backward: ``(dx, dweights)`` from the outputs' gradient (none for the final states)."""
    x_BxTxI = residuals[0]
    zeros = jnp.zeros((num_layers, x_BxTxI.shape[0], hidden_size), dy_BxTxH.dtype)
    dx, _, _, dw, _ = jax_rnn.lstm_bwd(x_BxTxI.shape[-1], hidden_size, num_layers, 0.0, False, None,
                                       residuals, (dy_BxTxH, zeros, zeros))
    return dx, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def lstm(x_BxTxI: Array, weights: Array, hidden_size: int, num_layers: int) -> Array:
    """The outputs ``(B, T, H)`` of ``num_layers`` of cuDNN's LSTM from zero states; under ``jax.vmap``
    one call after another."""
    return _lstm_fwd(x_BxTxI, weights, hidden_size, num_layers)[0]


def _lstm_fwd(x_BxTxI, weights, hidden_size, num_layers):
    # Looked up at call time: a test stands a CPU reference in for the binding.
    forward = jax.custom_batching.sequential_vmap(
        lambda x, w: cudnn_forward(x, w, hidden_size, num_layers))
    return forward(x_BxTxI, weights)


def _lstm_bwd(hidden_size, num_layers, residuals, dy_BxTxH):
    backward = jax.custom_batching.sequential_vmap(
        lambda res, dy: cudnn_backward(res, dy, hidden_size, num_layers))
    return backward(residuals, dy_BxTxH)


lstm.defvjp(_lstm_fwd, _lstm_bwd)
