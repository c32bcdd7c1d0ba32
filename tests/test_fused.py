"""The fused loss against the plain model it computes: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jit_value_and_grad, relative_error
from rnnjax import fused, kernels
from rnnjax.config import Config
from rnnjax.fused import FusedRNNLM
from rnnjax.model import RNN, RNNLM, GRUCell, LSTMCell, SimpleRNNCell, StackedRNN
from rnnjax.state import make_model


@pytest.fixture(params=["after the loop", "in the loop"])
def dW_hh_where(request, monkeypatch):
    """Runs a test with both of the backward pass's ways to sum dW_hh (its rule picks by block size)."""
    if request.param == "in the loop":
        monkeypatch.setattr(fused, "_DW_HH_AFTER_LOOP_MAX_BLOCK", 0)
    return request.param


@pytest.mark.parametrize("V,H,B,T,unroll,nonlinearity", [
    pytest.param(28, 32, 16, 12, 1, "tanh", marks=pytest.mark.slow), (6, 8, 5, 7, 3, "tanh"),
    (16, 4, 3, 1, 1, "tanh"),
    pytest.param(40, 16, 8, 5, 2, "tanh", marks=pytest.mark.slow),
    pytest.param(28, 32, 16, 12, 1, "relu", marks=pytest.mark.slow), (6, 8, 5, 7, 2, "relu")])
def test_fused_loss_equals_plain_loss(V, H, B, T, unroll, nonlinearity, dW_hh_where):
    """Vocabularies padded inside to 32, to 16, not at all, to 48; one step and several; ragged masks;
    both nonlinearities."""
    cell = SimpleRNNCell(H, nonlinearity=nonlinearity)
    plain, fast = (cls(RNN(cell, unroll=unroll), V) for cls in (RNNLM, FusedRNNLM))
    X = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    Y = jax.random.randint(jax.random.key(2), (B, T), 0, V)
    mask = (jnp.arange(B) < max(1, B - 2)).astype(jnp.float32)
    variables = plain.init(jax.random.key(0), X)
    l_fast, g_fast = jit_value_and_grad(fast, variables, X, Y, mask)
    l_plain, g_plain = jit_value_and_grad(plain, variables, X, Y, mask)
    np.testing.assert_allclose(l_fast, l_plain, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    if T > 1:                                  # from H = 0 one step gives W_hh no gradient
        assert float(jnp.abs(g_fast["params"]["rnn"]["cell"]["W_hh"]).max()) > 0


def test_fused_model_is_the_plain_model_but_for_its_loss():
    plain, fast = RNNLM(RNN(SimpleRNNCell(8)), 10), FusedRNNLM(RNN(SimpleRNNCell(8)), 10)
    X = jax.random.randint(jax.random.key(1), (2, 5), 0, 10)
    a, b = plain.init(jax.random.key(0), X), fast.init(jax.random.key(0), X)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(plain.apply(a, X), fast.apply(a, X))


@pytest.mark.slow
def test_loss_is_causal():
    """The loss at step t has no gradient with respect to the inputs' projections after t."""
    H, B, T, V = 4, 2, 5, 6
    params = RNNLM(RNN(SimpleRNNCell(H)), V).init(jax.random.key(0), jnp.zeros((1, T), jnp.int32))["params"]
    cell, dense = params["rnn"]["cell"], params["output_layer"]
    XW = jax.random.normal(jax.random.key(1), (T, B, H))
    labels = jax.random.randint(jax.random.key(2), (T * B,), 0, V)

    @jax.jit                # one compilation, not five op-by-op backward passes
    def loss_at(t):
        weights = (jnp.arange(T * B) // B == t).astype(jnp.float32)
        loss = lambda *args: fused._recurrence_dense_ce(*args)[0]
        return jax.grad(loss, argnums=1)(cell["W_hh"], XW, dense["kernel"], dense["bias"], labels, weights, 1,
                                         "tanh", jnp.dtype(jnp.float32), jnp.dtype(jnp.float32))
    for t in range(T):
        dXW = np.abs(np.asarray(loss_at(t))).max(axis=(1, 2))
        assert np.all(dXW[t + 1:] == 0) and dXW[t] > 0


@pytest.mark.parametrize("config,recurrence_too", [
    (Config(), True), (Config(nonlinearity="relu"), True), (Config(cell="gru"), False),
    (Config(num_layers=2), False), (Config(cell="lstm", num_layers=3, dropout=0.2), False)])
def test_make_model_fuses_the_loss_unless_told_not_to(config, recurrence_too):
    """Asked for, the fused kernel (``auto`` picks it on a CPU only: ``kernels.choose``)."""
    model = make_model(config.replace(kernel="fused"), 28)
    assert isinstance(model, FusedRNNLM) and fused.recurrence_fused(model.rnn) == recurrence_too
    assert isinstance(make_model(config, 28), FusedRNNLM) == (kernels.choose(config) == "fused")
    assert type(make_model(config.replace(kernel="plain"), 28)) is RNNLM
    assert not fused.recurrence_fused(RNN(SimpleRNNCell(4), reverse=True))


# Every cell at depths 1-3, dropout on in training where there are layers for it.
FAMILY = [(GRUCell, 1, 0.0), pytest.param(GRUCell, 2, 0.3, marks=pytest.mark.slow),
          pytest.param(GRUCell, 3, 0.0, marks=pytest.mark.slow),
          pytest.param(LSTMCell, 1, 0.0, marks=pytest.mark.slow),
          pytest.param(LSTMCell, 2, 0.0, marks=pytest.mark.slow),
          pytest.param(LSTMCell, 3, 0.3, marks=pytest.mark.slow),
          pytest.param(SimpleRNNCell, 2, 0.3, marks=pytest.mark.slow),
          (SimpleRNNCell, 3, 0.0)]


def family_model(cls, cell, num_layers, dropout=0.0):
    rnn = RNN(cell(8)) if num_layers == 1 else StackedRNN(cell(8), num_layers=num_layers, dropout=dropout)
    return cls(rnn, 12)


@pytest.mark.parametrize("cell,num_layers,dropout", FAMILY)
def test_fused_loss_equals_plain_loss_for_every_cell_and_depth(cell, num_layers, dropout):
    """With dropout in training too: the same rng gives both the same masks."""
    plain, fast = (family_model(cls, cell, num_layers, dropout) for cls in (RNNLM, FusedRNNLM))
    X = jax.random.randint(jax.random.key(1), (5, 7), 0, 12)
    Y = jax.random.randint(jax.random.key(2), (5, 7), 0, 12)
    mask = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0])
    variables = plain.init(jax.random.key(0), X)
    train = dict(train=True, rngs={"dropout": jax.random.key(3)})
    l_fast, g_fast = jit_value_and_grad(fast, variables, X, Y, mask, **train)
    l_plain, g_plain = jit_value_and_grad(plain, variables, X, Y, mask, **train)
    if dropout:
        l_eval = jit_value_and_grad(plain, variables, X, Y, mask)[0]
        assert abs(float(l_eval) - float(l_plain)) > 1e-4
    np.testing.assert_allclose(l_fast, l_plain, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def bf16_model(cls, cell, num_layers, dtype, **kwargs):
    cell = cell(8, dtype=dtype, **kwargs)
    rnn = RNN(cell) if num_layers == 1 else StackedRNN(cell, num_layers=num_layers)
    return cls(rnn, 12, dtype=dtype)


BF16_CASES = [(SimpleRNNCell, 1, {}), (SimpleRNNCell, 1, {"nonlinearity": "relu"}), (GRUCell, 1, {}),
              (LSTMCell, 2, {})]


@pytest.mark.parametrize("cell,num_layers,kwargs", BF16_CASES)
def test_fused_loss_equals_plain_loss_in_bfloat16(cell, num_layers, kwargs, dW_hh_where):
    """The same bfloat16 roundings, summed in another order: far closer to each other than to float32."""
    X = jax.random.randint(jax.random.key(1), (6, 9), 0, 12)
    Y = jax.random.randint(jax.random.key(2), (6, 9), 0, 12)
    mask = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    models = {(cls, dtype): bf16_model(cls, cell, num_layers, dtype, **kwargs)
              for cls in (RNNLM, FusedRNNLM) for dtype in (jnp.float32, jnp.bfloat16)}
    variables = models[RNNLM, jnp.float32].init(jax.random.key(0), X)
    (l_fast, g_fast), (l_plain, g_plain), (l_32, g_32) = (
        jit_value_and_grad(models[key], variables, X, Y, mask)
        for key in [(FusedRNNLM, jnp.bfloat16), (RNNLM, jnp.bfloat16), (RNNLM, jnp.float32)])
    np.testing.assert_allclose(l_fast, l_plain, rtol=1e-6)
    assert relative_error(g_plain, g_32) > 1e-3                  # bfloat16's rounding, 8 bits
    # On a CPU 1e-7: float32 sums of the same roundings; a sum that rounds across a bfloat16 step elsewhere
    # could move one product by 2**-8.
    assert relative_error(g_fast, g_plain) < 0.05 * relative_error(g_plain, g_32)
