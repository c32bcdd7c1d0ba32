"""``experiments.sine_models``: the RNN forecaster against a NumPy loop of its equations, and its compiled
functions, which every seed after the first reuses."""

import jax
import jax.numpy as jnp
import numpy as np

from experiments import sine, sine_models


def _numpy_forecaster(params, x_TxB, h_BxH=None, steps=0):
    """``h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h)``, ``x^_{t+1} = h_t w + b`` over ``x_TxB``; then, with no
    data, ``steps`` predictions each read back as the next input: (predictions, states, rolled out)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    cell, head = p["rnn"]["cell"], p["head"]
    h = np.zeros((x_TxB.shape[1], cell["W_hh"].shape[0])) if h_BxH is None else h_BxH

    def step(h, x_B):
        return np.tanh(x_B[:, None] @ cell["W_xh"] + h @ cell["W_hh"] + cell["b_h"])

    def predict(h):
        return (h @ head["kernel"] + head["bias"])[:, 0]
    preds, states = [], []
    for x_B in x_TxB:
        h = step(h, x_B)
        states.append(h)
        preds.append(predict(h))
    rolled = []
    for _ in range(steps):
        rolled.append(predict(h))
        h = step(h, rolled[-1])
    return np.array(preds), np.array(states), np.array(rolled)


def test_the_forecaster_and_its_rollout_are_the_equations():
    model = sine_models.RNNForecaster(6)
    x_TxB = np.random.default_rng(0).normal(size=(9, 3)).astype(np.float32)
    params = model.init(jax.random.key(1), jnp.asarray(x_TxB))
    preds, states = model.apply(params, jnp.asarray(x_TxB))
    want_preds, want_states, _ = _numpy_forecaster(params, x_TxB)
    np.testing.assert_allclose(preds, want_preds, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states, want_states, rtol=1e-5, atol=1e-6)
    rolled = sine_models.rollout(model, params, states[-1], 5)
    *_, want_rolled = _numpy_forecaster(params, x_TxB[:0], np.asarray(states[-1], np.float64), 5)
    np.testing.assert_allclose(rolled, want_rolled, rtol=1e-5, atol=1e-6)


def test_the_forecaster_s_loss_is_teacher_forcing_then_its_own_predictions():
    model = sine_models.RNNForecaster(4)
    rng = np.random.default_rng(2)
    warmup_BxW, next_BxK = (rng.normal(size=s).astype(np.float32) for s in ((3, 7), (3, 4)))
    params = model.init(jax.random.key(0), jnp.asarray(warmup_BxW.T))
    preds, states, rolled = _numpy_forecaster(params, warmup_BxW.T, steps=next_BxK.shape[1])
    want = np.mean((preds[:-1] - warmup_BxW[:, 1:].T) ** 2) + np.mean((rolled - next_BxK.T) ** 2)
    got = model.apply(params, (jnp.asarray(warmup_BxW), jnp.asarray(next_BxK)), method="loss")
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_second_seed_compiles_nothing_again(tmp_path):
    """The compiled functions take the params as an argument: each seed after the first reuses them."""
    compiled = (sine_models.init, sine_models.forward, sine_models.rollout, sine_models.train_epoch)
    sizes = []
    for seed in (0, 1):
        sine.run(tmp_path, seed, rnn_epochs=1, figures=False)
        sizes.append([f._cache_size() for f in compiled])
    assert sizes[1] == sizes[0] and all(sizes[0])
