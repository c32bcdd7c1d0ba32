import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnnjax import model as model_lib
from rnnjax.model import RNN, RNNLM, OneHot, SimpleRNNCell, build

T, B, I, H, V = 6, 3, 5, 4, 7


def np_loop(params, X_TxBxI, H_BxH):
    W_xh, W_hh, b = (np.asarray(params[k], np.float64) for k in ("W_xh", "W_hh", "b_h"))
    outs = []
    for x in np.asarray(X_TxBxI, np.float64):
        H_BxH = np.tanh(x @ W_xh + H_BxH @ W_hh + b)
        outs.append(H_BxH)
    return np.stack(outs), H_BxH


@pytest.fixture(params=["after the loop", "in the loop"])
def dW_hh_where(request, monkeypatch):
    """Runs a test with both of the backward pass's ways to sum dW_hh (its rule picks by block size)."""
    if request.param == "in the loop":
        monkeypatch.setattr(model_lib, "_DW_HH_AFTER_LOOP_MAX_BLOCK", 0)
    return request.param


@pytest.fixture
def inputs():
    k1, k2 = jax.random.split(jax.random.key(42))
    return jax.random.normal(k1, (T, B, I)), jax.random.normal(k2, (B, H))


def test_cell_equals_flax_simple_cell(inputs):
    X, H0 = inputs
    cell = SimpleRNNCell(H)
    params = cell.init(jax.random.key(0), H0, X[0])["params"]
    ref = nn.SimpleCell(H)
    ref_params = ref.init(jax.random.key(1), H0, X[0])["params"]
    assert jax.tree.map(jnp.shape, ref_params) == {"i": {"kernel": (I, H), "bias": (H,)},
                                                   "h": {"kernel": (H, H)}}
    ref_params = {"i": {"kernel": params["W_xh"], "bias": params["b_h"]},
                  "h": {"kernel": params["W_hh"]}}
    ours, ours_out = cell.apply({"params": params}, H0, X[0])
    theirs, theirs_out = ref.apply({"params": ref_params}, H0, X[0])
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours_out, theirs_out, rtol=1e-6, atol=1e-6)


def test_cell_equals_numpy_step(inputs):
    X, H0 = inputs
    cell = SimpleRNNCell(H)
    params = cell.init(jax.random.key(0), H0, X[0])["params"]
    assert params["W_xh"].shape == (I, H) and params["W_hh"].shape == (H, H) and params["b_h"].shape == (H,)
    H1, _ = cell.apply({"params": params}, H0, X[0])
    _, expected = np_loop(params, X[:1], np.asarray(H0))
    np.testing.assert_allclose(H1, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("unroll", [1, 4])
@pytest.mark.parametrize("given_state", [False, True])
def test_rnn_equals_python_loop_over_cell_and_numpy(inputs, unroll, given_state):
    X, H0 = inputs
    rnn = RNN(H, unroll=unroll)
    variables = rnn.init(jax.random.key(0), X)
    state = H0 if given_state else None
    outputs, H_final = rnn.apply(variables, X, state)
    assert outputs.shape == (T, B, H) and H_final.shape == (B, H)

    cell = SimpleRNNCell(H)
    cell_vars = {"params": variables["params"]["cell"]}
    Ht = H0 if given_state else jnp.zeros((B, H))
    loop = []
    for t in range(T):
        Ht, out = cell.apply(cell_vars, Ht, X[t])
        loop.append(out)
    np.testing.assert_allclose(outputs, jnp.stack(loop), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(H_final, Ht, rtol=1e-5, atol=1e-6)

    np_out, np_H = np_loop(variables["params"]["cell"], X, np.asarray(Ht * 0 + (H0 if given_state else 0)))
    np.testing.assert_allclose(outputs, np_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(H_final, np_H, rtol=1e-5, atol=1e-5)


def test_one_hot_gather_equals_dense_one_hot():
    ids = jax.random.randint(jax.random.key(3), (T, B), 0, V)
    rnn = RNN(H)
    variables = rnn.init(jax.random.key(0), OneHot(ids, V))
    assert variables["params"]["cell"]["W_xh"].shape == (V, H)
    gathered = rnn.apply(variables, OneHot(ids, V))
    dense = rnn.apply(variables, OneHot(ids, V).dense())
    for a, b in zip(gathered, dense):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("unroll", [1, 3])
def test_custom_vjp_equals_autodiff(inputs, unroll, dW_hh_where):
    X, H0 = inputs
    fast, plain = RNN(H, unroll=unroll), RNN(H, unroll=unroll, custom_vjp=False)
    variables = fast.init(jax.random.key(0), X)
    c_out = jax.random.normal(jax.random.key(5), (T, B, H))
    c_fin = jax.random.normal(jax.random.key(6), (B, H))

    def loss(module, variables, X, H0):
        outputs, H_final = module.apply(variables, X, H0)
        return jnp.sum(outputs * c_out) + jnp.sum(H_final * c_fin)

    g_fast = jax.grad(loss, argnums=(1, 2, 3))(fast, variables, X, H0)
    g_plain = jax.grad(loss, argnums=(1, 2, 3))(plain, variables, X, H0)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(g_fast[0]["params"]["cell"]["W_hh"]).max()) > 0


@pytest.mark.parametrize("custom_vjp", [True, False])
def test_causality(inputs, custom_vjp):
    """The output at step t has zero gradient with respect to inputs after t."""
    X, _ = inputs
    rnn = RNN(H, custom_vjp=custom_vjp)
    variables = rnn.init(jax.random.key(0), X)
    per_step = lambda X: jnp.sum(rnn.apply(variables, X)[0] ** 2, axis=(1, 2))
    jac_TxTxBxI = jax.jit(jax.jacrev(per_step))(X)       # d loss_t / d X_s
    size_TxT = jnp.abs(jac_TxTxBxI).max(axis=(2, 3))
    assert np.all(np.triu(np.asarray(size_TxT), k=1) == 0.0)
    assert np.all(np.diag(np.asarray(size_TxT)) > 0.0)


def test_rnnlm_shapes_and_loss_equal_optax():
    model = build(V, H)
    X = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    Y = jax.random.randint(jax.random.key(2), (B, T), 0, V)
    variables = model.init(jax.random.key(0), X)
    logits = model.apply(variables, X)
    assert logits.shape == (B, T, V)
    loss_sum, count = model.apply(variables, X, Y, jnp.ones(B), method=RNNLM.loss)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()
    assert float(count) == B * T
    np.testing.assert_allclose(loss_sum / count, expected, rtol=1e-6)


def test_loss_weights_drop_padding_rows():
    model = build(V, H)
    X = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    Y = jax.random.randint(jax.random.key(2), (B, T), 0, V)
    variables = model.init(jax.random.key(0), X)
    mask = jnp.array([1.0, 1.0, 0.0])
    loss_sum, count = model.apply(variables, X, Y, mask, method=RNNLM.loss)
    ref_sum, ref_count = model.apply(variables, X[:2], Y[:2], jnp.ones(2), method=RNNLM.loss)
    assert float(count) == float(ref_count) == 2 * T
    np.testing.assert_allclose(loss_sum, ref_sum, rtol=1e-6)


def test_jit_and_no_jit_agree():
    model = build(V, H)
    X = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    variables = model.init(jax.random.key(0), X)
    loss = lambda p: model.apply(p, X, X, jnp.ones(B), method=RNNLM.loss)[0]
    with jax.disable_jit():
        eager_logits = model.apply(variables, X)
        eager_loss, eager_grad = jax.value_and_grad(loss)(variables)
    np.testing.assert_allclose(jax.jit(model.apply)(variables, X), eager_logits, rtol=1e-5, atol=1e-6)
    jit_loss, jit_grad = jax.jit(jax.value_and_grad(loss))(variables)
    np.testing.assert_allclose(jit_loss, eager_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jit_grad), jax.tree.leaves(eager_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_step_continues_the_sequence():
    model = build(V, H)
    X = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    variables = model.init(jax.random.key(0), X)
    logits, H_T = model.apply(variables, X, method=RNNLM.forward)
    H_t = jnp.zeros((B, H))
    for t in range(T):
        step_logits, H_t = model.apply(variables, X[:, t], H_t, method=RNNLM.step)
        np.testing.assert_allclose(step_logits, logits[:, t], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(H_t, H_T, rtol=1e-5, atol=1e-6)


def test_init_is_pytorch_uniform_and_seeded():
    model = build(28, 32)
    X = jnp.zeros((1, 4), jnp.int32)
    a = model.init(jax.random.key(0), X)["params"]
    b = model.init(jax.random.key(0), X)["params"]
    c = model.init(jax.random.key(1), X)["params"]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a["rnn"]["cell"]["W_hh"], c["rnn"]["cell"]["W_hh"])
    for leaf in jax.tree.leaves(a):
        assert float(jnp.abs(leaf).max()) <= 1 / 32 ** 0.5


def test_fast_loss_equals_plain_reference(dW_hh_where):
    """The training loss (hoisted gather, the RNN and the output layer as one op with its own
    backward) equals a plain implementation: autodiff through the scan and optax's
    cross-entropy on the logits."""
    V, H, B, T = 28, 32, 16, 12
    fast, plain = build(V, H), build(V, H, custom_vjp=False)
    X = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    Y = jax.random.randint(jax.random.key(2), (B, T), 0, V)
    mask = (jnp.arange(B) < 11).astype(jnp.float32)
    variables = fast.init(jax.random.key(0), X)

    def fast_loss(variables):
        loss_sum, count = fast.apply(variables, X, Y, mask, method=RNNLM.loss)
        return loss_sum / count

    def plain_loss(variables):
        logits = plain.apply(variables, X)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, Y)
        return jnp.sum(ce * mask[:, None]) / (jnp.sum(mask) * T)

    l_fast, g_fast = jax.jit(jax.value_and_grad(fast_loss))(variables)
    l_plain, g_plain = jax.jit(jax.value_and_grad(plain_loss))(variables)
    np.testing.assert_allclose(l_fast, l_plain, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("V", [6, 16, 28])   # padded inside to 16, not padded, padded to 32
def test_dense_cross_entropy_gradients(V):
    from rnnjax.model import dense_cross_entropy
    k = jax.random.split(jax.random.key(0), 5)
    H_, W = jax.random.normal(k[0], (40, 8)), jax.random.normal(k[1], (8, V))
    b = jax.random.normal(k[2], (V,))
    labels, weights = jax.random.randint(k[3], (40,), 0, V), jax.random.uniform(k[4], (40,))
    ref = lambda H_, W, b: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(H_ @ W + b, labels)
                                   * weights)
    fused = lambda H_, W, b: dense_cross_entropy(H_, W, b, labels, weights)
    np.testing.assert_allclose(fused(H_, W, b), ref(H_, W, b), rtol=1e-6)
    for a, r in zip(jax.grad(fused, (0, 1, 2))(H_, W, b), jax.grad(ref, (0, 1, 2))(H_, W, b)):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)
