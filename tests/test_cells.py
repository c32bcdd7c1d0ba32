"""Each cell against a float64 NumPy implementation of PyTorch's equations (values, and gradients by
central differences) and against flax's cells where the parametrizations coincide."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.cells import GRUCell, LSTMCell, OneHot, SimpleRNNCell


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_step(kind, p, carry, x, nonlinearity="tanh", dot=np.matmul):
    """One step of PyTorch's nn.RNN / nn.GRU / nn.LSTM, from our (input-major) weights; ``dot(a, W)`` is
    every matmul."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    if kind == "rnn":
        act = np.tanh if nonlinearity == "tanh" else (lambda z: np.maximum(z, 0))
        h = act(dot(x, p["W_xh"]) + dot(carry, p["W_hh"]) + p["b_h"])
        return h, h
    gi, gh = dot(x, p["W_ih"]) + p["b_ih"], dot(carry[0] if kind == "lstm" else carry, p["W_hh"]) + p["b_hh"]
    if kind == "gru":
        H = carry.shape[-1]
        r, z = sigmoid(gi[:, :H] + gh[:, :H]), sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        h = (1 - z) * n + z * carry
        return h, h
    h, c = carry
    i, f, g, o = np.split(gi + gh, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    return (h, c), h


CELLS = {"rnn": SimpleRNNCell, "gru": GRUCell, "lstm": LSTMCell}


def setup_cell(kind, B, n_in, H, seed=0, **kwargs):
    cell = CELLS[kind](H, **kwargs)
    k = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k[0], (B, n_in))
    carry = cell.initialize_carry(None, (B, n_in))
    carry = jax.tree.map(lambda c: jax.random.normal(k[1], c.shape) * 0.5, carry)
    params = cell.init(k[2], carry, x)["params"]
    return cell, params, carry, x


@pytest.mark.parametrize("kind,kwargs", [("rnn", {}), ("rnn", {"nonlinearity": "relu"}), ("gru", {}),
                                         ("lstm", {})])
@pytest.mark.parametrize("B,n_in,H", [(3, 5, 4), (1, 2, 7), (6, 28, 32)])
def test_cell_equals_pytorch_equations(kind, kwargs, B, n_in, H):
    cell, params, carry, x = setup_cell(kind, B, n_in, H, **kwargs)
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
    assert params["W_hh"].shape == (H, gates * H)
    new_carry, y = cell.apply({"params": params}, carry, x)
    ref_carry, ref_y = np_step(kind, params, jax.tree.map(np.asarray, carry), np.asarray(x), **kwargs)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(new_carry), jax.tree.leaves(ref_carry), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_cell_gradients_equal_central_differences(kind):
    cell, params, carry, x = setup_cell(kind, 3, 4, 5, seed=1)
    w_out = np.asarray(jax.random.normal(jax.random.key(9), (3, 5)), np.float64)
    loss = lambda p, x: jnp.sum(cell.apply({"params": p}, carry, x)[1] * w_out)
    g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, x)
    np_carry = jax.tree.map(lambda c: np.asarray(c, np.float64), carry)
    np_loss = lambda p, x: np.sum(np_step(kind, p, np_carry, x)[1] * w_out)
    base = {k: np.asarray(v, np.float64) for k, v in params.items()}
    xs, eps = np.asarray(x, np.float64), 1e-6
    for name in base:
        idx = (0,) * base[name].ndim
        up, down = dict(base), dict(base)
        up[name], down[name] = base[name].copy(), base[name].copy()
        up[name][idx] += eps
        down[name][idx] -= eps
        numeric = (np_loss(up, xs) - np_loss(down, xs)) / (2 * eps)
        np.testing.assert_allclose(g_params[name][idx], numeric, rtol=1e-3, atol=1e-6)
    up, down = xs.copy(), xs.copy()
    up[1, 2] += eps
    down[1, 2] -= eps
    np.testing.assert_allclose(g_x[1, 2], (np_loss(base, up) - np_loss(base, down)) / (2 * eps), rtol=1e-3,
                               atol=1e-6)


def test_gru_equals_flax_gru_cell_when_its_hidden_r_z_biases_are_zero():
    H = 6
    cell, params, carry, x = setup_cell("gru", 4, 3, H)
    params = {**params, "b_hh": params["b_hh"].at[:2 * H].set(0.0)}
    W_ih, W_hh, b_ih, b_hh = params["W_ih"], params["W_hh"], params["b_ih"], params["b_hh"]
    part = lambda a, k: a[..., k * H:(k + 1) * H]
    flax_params = {"ir": {"kernel": part(W_ih, 0), "bias": part(b_ih, 0)},
                   "iz": {"kernel": part(W_ih, 1), "bias": part(b_ih, 1)},
                   "in": {"kernel": part(W_ih, 2), "bias": part(b_ih, 2)},
                   "hr": {"kernel": part(W_hh, 0)}, "hz": {"kernel": part(W_hh, 1)},
                   "hn": {"kernel": part(W_hh, 2), "bias": part(b_hh, 2)}}
    ref = nn.GRUCell(H)
    assert jax.tree.map(jnp.shape, ref.init(jax.random.key(0), carry, x)["params"]) == \
        jax.tree.map(jnp.shape, flax_params)
    theirs, _ = ref.apply({"params": flax_params}, carry, x)
    ours, _ = cell.apply({"params": params}, carry, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_lstm_equals_flax_lstm_cell_with_one_bias_and_carry_c_h():
    H = 5
    cell, params, (h, c), x = setup_cell("lstm", 4, 3, H)
    W_ih, W_hh, b = params["W_ih"], params["W_hh"], params["b_ih"] + params["b_hh"]
    part = lambda a, k: a[..., k * H:(k + 1) * H]
    flax_params = {f"i{g}": {"kernel": part(W_ih, k)} for k, g in enumerate("ifgo")}
    flax_params.update({f"h{g}": {"kernel": part(W_hh, k), "bias": part(b, k)} for k, g in enumerate("ifgo")})
    ref = nn.LSTMCell(H)
    assert jax.tree.map(jnp.shape, ref.init(jax.random.key(0), (c, h), x)["params"]) == \
        jax.tree.map(jnp.shape, flax_params)
    (c2, h2), y = ref.apply({"params": flax_params}, (c, h), x)
    (h1, c1), y1 = cell.apply({"params": params}, (h, c), x)
    for a, b in ((h1, h2), (c1, c2), (y1, y)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_one_hot_inputs_are_a_gather(kind):
    cell, params, carry, _ = setup_cell(kind, 3, 7, 4)
    ids = jnp.array([0, 6, 2])
    a = cell.apply({"params": params}, carry, OneHot(ids, 7))
    b = cell.apply({"params": params}, carry, OneHot(ids, 7).dense())
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def bfloat16_dot(a, W):
    """A matmul of operands rounded to bfloat16, in float64."""
    rounded = lambda x: np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16), np.float64)
    return rounded(a) @ rounded(W)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_bfloat16_cell_rounds_its_matmul_operands_and_keeps_the_rest_float32(kind):
    cell, params, carry, x = setup_cell(kind, 4, 6, 5)
    half = CELLS[kind](5, dtype=jnp.bfloat16)
    new_carry, y = half.apply({"params": params}, carry, x)
    ref_carry, ref_y = np_step(kind, params, jax.tree.map(np.asarray, carry), np.asarray(x), dot=bfloat16_dot)
    exact_y = np_step(kind, params, jax.tree.map(np.asarray, carry), np.asarray(x))[1]
    assert {c.dtype for c in jax.tree.leaves(new_carry)} == {jnp.dtype(jnp.float32)}
    for a, b in zip(jax.tree.leaves((new_carry, y)), jax.tree.leaves((ref_carry, ref_y)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(y) - exact_y).max() > 1e-4


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_one_hot_inputs_are_an_exact_gather_in_bfloat16_too(kind):
    """An embedding lookup: the input weights' rows as they are; the recurrent matmul in bfloat16."""
    cell, params, carry, _ = setup_cell(kind, 3, 7, 4)
    ids = jnp.array([0, 6, 2])
    _, y = CELLS[kind](4, dtype=jnp.bfloat16).apply({"params": params}, carry, OneHot(ids, 7))
    W_hh = np.asarray(params["W_hh"])
    dot = lambda a, W: bfloat16_dot(a, W) if W.shape == W_hh.shape else a @ W       # x @ W_ih exact
    ref_y = np_step(kind, params, jax.tree.map(np.asarray, carry), np.eye(7)[ids], dot=dot)[1]
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-6)


def test_what_is_registered_under_a_cell_name_is_said_as_a_checkpoint_keeps_it(monkeypatch):
    import functools

    from rnnjax.cells import CELLS, registered_as
    assert registered_as("gru") == "rnnjax's own"
    monkeypatch.setitem(CELLS, "gru", nn.GRUCell)
    assert registered_as("gru") == "GRUCell"            # flax's, under rnnjax's name
    monkeypatch.setitem(CELLS, "x", functools.partial(nn.SimpleCell, activation_fn=jax.nn.relu, features=3))
    assert registered_as("x") == "SimpleCell(activation_fn=relu, features=3)"   # functions by name


class Scaled(nn.RNNCellBase):
    features: int
    scale: float = 1.0


class Callable:
    def __call__(self, x):
        return x


def test_a_value_is_described_alike_in_every_process_and_printing():
    """What a partial registered holds, as two processes must say it alike: no address, no print option."""
    import functools

    from rnnjax.cells import described
    assert described(functools.partial(Scaled, scale=1.0)) == described(Scaled) == "Scaled"   # its default
    leaky = functools.partial(jax.nn.leaky_relu, negative_slope=0.1)
    assert described(functools.partial(Scaled, act=leaky, obj=Callable(), scale=np.float32(0.5), t=(1,),
                                       d={"a": [1, None]})) == (
        "Scaled(act=leaky_relu(negative_slope=0.1), d={'a': [1, None]}, obj=Callable, scale=0.5, t=(1,))")
    w = np.linspace(0, 1, 2000)
    with np.printoptions(precision=2, threshold=10):      # a notebook's %precision, numpy's elision
        said = described(w)
    assert said == described(w) and said.startswith("float64[2000]:") and said != described(w + 1e-9)
    assert described(jnp.ones(2)) == described(np.ones(2, np.float32))         # by contents, not by type
