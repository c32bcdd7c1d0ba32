"""rnnjax's LSTM params packed for cuDNN, against ``jax.experimental.rnn.lstm_ref``; the cudnn kernel's
plumbing on a CPU with ``lstm_ref`` standing in for the GPU binding, and the binding itself on a GPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn as jax_rnn

from conftest import assert_same, jit_value_and_grad, random_batch, value_and_grad
from rnnjax import cudnn
from rnnjax.cudnn import CudnnRNNLM
from rnnjax.output_layer import output_loss
from rnnjax.hoisted import layers
from rnnjax.model import RNN, RNNLM, LSTMCell, StackedRNN

V, H, B, T = 11, 6, 4, 5
WEIGHTS_B = jnp.array([1.0, 1.0, 0.0, 1.0])


def lm(cls, num_layers, dropout=0.0):
    return cls(RNN(LSTMCell(H)) if num_layers == 1 else StackedRNN(LSTMCell(H), num_layers, dropout), V)


def reference_outputs(x_BxTxI, weights, num_layers):
    """``lstm_ref`` on the layers that ``jax.experimental.rnn`` unpacks from the flat weights."""
    B, T, inputs = x_BxTxI.shape
    zeros = jnp.zeros((num_layers, B, H))
    unpacked = jax_rnn.unpack_lstm_weights(weights, inputs, H, num_layers, False)
    seq_lengths = jnp.full((B,), T, jnp.int32)
    y, _, _ = jax_rnn.lstm_ref(x_BxTxI, zeros, zeros, *unpacked, seq_lengths, inputs, H, num_layers, 0.0,
                               False)
    return y


@pytest.mark.parametrize("num_layers", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_packed_params_give_lstm_ref_the_plain_models_outputs_loss_and_gradients(num_layers):
    model = lm(RNNLM, num_layers)
    X, Y = random_batch(B, T, V)
    params = model.init(jax.random.key(0), X)["params"]
    n = jax_rnn.get_num_params_in_lstm(V, H, num_layers, False)
    assert cudnn.pack(layers(model.rnn, params["rnn"])[2]).shape == (n,)

    def plain_loss(params):
        loss_sum, count, _ = model.apply({"params": params}, X, Y, WEIGHTS_B, method="loss")
        return loss_sum / count

    def reference_loss(params):
        weights = cudnn.pack(layers(model.rnn, params["rnn"])[2])
        y_BxTxH = reference_outputs(jax.nn.one_hot(X, V), weights, num_layers)
        loss_sum, count, _ = output_loss(params["output_layer"], y_BxTxH.swapaxes(0, 1), Y, WEIGHTS_B)
        return loss_sum / count

    with jax.default_matmul_precision("highest"):
        outputs_TxBxH, _ = model.apply({"params": params}, X.T, method=lambda m, ids: m.rnn(
            jax.nn.one_hot(ids, V)))
        y_BxTxH = reference_outputs(jax.nn.one_hot(X, V), cudnn.pack(layers(model.rnn, params["rnn"])[2]),
                                    num_layers)
        want = jax.jit(jax.value_and_grad(plain_loss))(params)
        got = jax.jit(jax.value_and_grad(reference_loss))(params)
    np.testing.assert_allclose(y_BxTxH, outputs_TxBxH.swapaxes(0, 1), rtol=1e-5, atol=1e-6)
    assert_same(got, want, loss_rtol=1e-6)


@pytest.fixture
def reference_binding(monkeypatch):
    """``lstm_ref`` in the place of the GPU binding: the kernel's packing, per-layer calls, dropout and
    vmap, checked on a CPU. Returns the calls' layer counts."""
    calls = []

    def forward(x, weights, hidden_size, num_layers):
        calls.append(num_layers)
        return reference_outputs(x, weights, num_layers), (x, weights)

    def backward(residuals, dy, hidden_size, num_layers):
        return jax.vjp(lambda x, w: reference_outputs(x, w, num_layers), *residuals)[1](dy)
    monkeypatch.setattr(cudnn, "cudnn_forward", forward)
    monkeypatch.setattr(cudnn, "cudnn_backward", backward)
    return calls


def cudnn_and_plain(num_layers, dropout):
    """``(value, gradients)`` of a dropout training step's mean loss: the cudnn kernel's, then the plain
    model's, from the same parameters and dropout key, at full float32."""
    X, Y = random_batch(B, T, V)
    variables = lm(RNNLM, num_layers).init(jax.random.key(0), X)
    rng = jax.random.key(3)
    with jax.default_matmul_precision("highest"):
        return tuple(jit_value_and_grad(lm(cls, num_layers, dropout), variables, X, Y, WEIGHTS_B, True,
                                        {"dropout": rng}) for cls in (CudnnRNNLM, RNNLM))


@pytest.mark.parametrize("num_layers,dropout,calls", [
    pytest.param(1, 0.0, [1], marks=pytest.mark.slow), pytest.param(3, 0.0, [3], marks=pytest.mark.slow),
    (2, 0.3, [1, 1])])
def test_the_kernel_trains_as_the_plain_model(reference_binding, num_layers, dropout, calls):
    """One call for the whole stack; one a layer with dropout, the stack's own module between them."""
    assert_same(*cudnn_and_plain(num_layers, dropout), loss_rtol=1e-6)
    assert reference_binding == calls


@pytest.mark.slow
def test_the_kernel_under_vmap_runs_one_run_after_another(reference_binding):
    X, Y = jnp.stack(random_batch(B, T, V, 1)), jnp.stack(random_batch(B, T, V, 5))
    plain, fast = lm(RNNLM, 2, 0.2), lm(CudnnRNNLM, 2, 0.2)
    variables = jax.vmap(lambda k: plain.init(k, X[0]))(jax.random.split(jax.random.key(0)))
    rngs = jax.random.split(jax.random.key(3))

    def runs(model):
        one = jax.vmap(lambda v, x, y, r: value_and_grad(model, v, x, y, WEIGHTS_B, True, {"dropout": r}))
        return jax.jit(one)(variables, X, Y, rngs)
    with jax.default_matmul_precision("highest"):
        want, got = runs(plain), runs(fast)
    assert_same(got, want, loss_rtol=1e-6)
    assert abs(float(got[0][0]) - float(got[0][1])) > 1e-4


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN's LSTM runs on an NVIDIA GPU only")
@pytest.mark.parametrize("num_layers,dropout", [(1, 0.0), (2, 0.0), (2, 0.3)])
def test_cudnn_trains_as_the_plain_model_on_a_gpu(num_layers, dropout):
    assert_same(*cudnn_and_plain(num_layers, dropout), loss_rtol=1e-6)
