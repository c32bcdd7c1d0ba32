"""The plain model against references: a NumPy loop, flax's SimpleCell, optax's cross-entropy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnnjax.model import RNN, RNNLM, GRUCell, LSTMCell, OneHot, SimpleRNNCell, StackedRNN

T, B, I, H, V = 6, 3, 5, 4, 7


def build(vocab_size=V, num_hiddens=H):
    return RNNLM(RNN(SimpleRNNCell(num_hiddens)), vocab_size)


def np_loop(params, X_TxBxI, H_BxH):
    W_xh, W_hh, b = (np.asarray(params[k], np.float64) for k in ("W_xh", "W_hh", "b_h"))
    outs = []
    for x in np.asarray(X_TxBxI, np.float64):
        H_BxH = np.tanh(x @ W_xh + H_BxH @ W_hh + b)
        outs.append(H_BxH)
    return np.stack(outs), H_BxH


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


def test_cell_keeps_flax_carry_protocol(inputs):
    """What ``RNN`` asks of any cell, and what lets flax's own ``nn.RNN`` scan ours."""
    X, _ = inputs
    cell = SimpleRNNCell(H)
    carry = cell.initialize_carry(jax.random.key(0), X[0].shape)
    assert carry.shape == (B, H) and not carry.any() and cell.num_feature_axes == 1
    ours = RNN(cell)
    params = ours.init(jax.random.key(0), X)["params"]
    flax_rnn = nn.RNN(SimpleRNNCell(H), time_major=True)
    np.testing.assert_allclose(flax_rnn.apply({"params": params}, X), ours.apply({"params": params}, X)[0],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("unroll", [1, 4])
@pytest.mark.parametrize("given_state", [False, True])
def test_rnn_equals_numpy_loop(inputs, unroll, given_state):
    X, H0 = inputs
    rnn = RNN(SimpleRNNCell(H), unroll=unroll)
    variables = rnn.init(jax.random.key(0), X)
    outputs, H_final = rnn.apply(variables, X, H0 if given_state else None)
    assert outputs.shape == (T, B, H) and H_final.shape == (B, H)
    H_start = np.asarray(H0) if given_state else np.zeros((B, H))
    np_out, np_H = np_loop(variables["params"]["cell"], X, H_start)
    np.testing.assert_allclose(outputs, np_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(H_final, np_H, rtol=1e-5, atol=1e-5)


def test_rnn_gradients_equal_numpy_finite_differences(inputs):
    """Autodiff through the scan against central differences of the float64 NumPy loop."""
    X, H0 = inputs
    rnn = RNN(SimpleRNNCell(H))
    params = rnn.init(jax.random.key(0), X)["params"]
    c_out = np.asarray(jax.random.normal(jax.random.key(5), (T, B, H)), np.float64)
    loss = lambda p: jnp.sum(rnn.apply({"params": p}, X, H0)[0] * c_out)
    grad = jax.grad(loss)(params)["cell"]["W_hh"]
    W = {k: np.asarray(v, np.float64) for k, v in params["cell"].items()}
    eps, (i, j) = 1e-6, (1, 2)
    up, down = {**W, "W_hh": W["W_hh"].copy()}, {**W, "W_hh": W["W_hh"].copy()}
    up["W_hh"][i, j] += eps
    down["W_hh"][i, j] -= eps
    f = lambda w: np.sum(np_loop(w, X, np.asarray(H0))[0] * c_out)
    np.testing.assert_allclose(grad[i, j], (f(up) - f(down)) / (2 * eps), rtol=1e-4)


def test_one_hot_gather_equals_dense_one_hot():
    ids = jax.random.randint(jax.random.key(3), (T, B), 0, V)
    rnn = RNN(SimpleRNNCell(H))
    variables = rnn.init(jax.random.key(0), OneHot(ids, V))
    assert variables["params"]["cell"]["W_xh"].shape == (V, H)
    gathered = rnn.apply(variables, OneHot(ids, V))
    dense = rnn.apply(variables, OneHot(ids, V).dense())
    for a, b in zip(gathered, dense):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_causality(inputs):
    """The output at step t has zero gradient with respect to inputs after t."""
    X, _ = inputs
    rnn = RNN(SimpleRNNCell(H))
    variables = rnn.init(jax.random.key(0), X)
    per_step = lambda X: jnp.sum(rnn.apply(variables, X)[0] ** 2, axis=(1, 2))
    jac_TxTxBxI = jax.jit(jax.jacrev(per_step))(X)       # d loss_t / d X_s
    size_TxT = jnp.abs(jac_TxTxBxI).max(axis=(2, 3))
    assert np.all(np.triu(np.asarray(size_TxT), k=1) == 0.0)
    assert np.all(np.diag(np.asarray(size_TxT)) > 0.0)


def test_rnnlm_loss_equals_optax_cross_entropy():
    model = build()
    X = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    Y = jax.random.randint(jax.random.key(2), (B, T), 0, V)
    variables = model.init(jax.random.key(0), X)
    logits = model.apply(variables, X)
    assert logits.shape == (B, T, V)
    loss_sum, count, ce_sum = model.apply(variables, X, Y, jnp.ones(B), method=RNNLM.loss)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()
    assert float(count) == B * T
    np.testing.assert_allclose(loss_sum / count, expected, rtol=1e-6)
    np.testing.assert_allclose(ce_sum / count, expected, rtol=1e-6)


def test_loss_weights_drop_padding_rows():
    model = build()
    X = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    Y = jax.random.randint(jax.random.key(2), (B, T), 0, V)
    variables = model.init(jax.random.key(0), X)
    mask = jnp.array([1.0, 1.0, 0.0])
    loss_sum, count, _ = model.apply(variables, X, Y, mask, method=RNNLM.loss)
    ref_sum, ref_count, _ = model.apply(variables, X[:2], Y[:2], jnp.ones(2), method=RNNLM.loss)
    assert float(count) == float(ref_count) == 2 * T
    np.testing.assert_allclose(loss_sum, ref_sum, rtol=1e-6)


@pytest.mark.slow
def test_jit_and_no_jit_agree():
    model = build()
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


# PyTorch's layer semantics: stacks, directions, dropout, carries.

def np_stack(kind, params, X_TxBxI, num_layers, bidirectional, carries=None):
    """PyTorch's nn.RNN/GRU/LSTM over a sequence, as a float64 NumPy loop (``test_cells.np_step``)."""
    from test_cells import np_step
    dirs = 2 if bidirectional else 1
    x, finals = np.asarray(X_TxBxI, np.float64), []
    for k in range(num_layers):
        outs = []
        for d in range(dirs):
            i = k * dirs + d
            p = params[f"layers_{i}"]["cell"]
            carry = jax.tree.map(np.asarray, carries[i])
            ys = [None] * len(x)
            for t in (reversed(range(len(x))) if d else range(len(x))):
                carry, ys[t] = np_step(kind, p, carry, x[t])
            outs.append(np.stack(ys))
            finals.append(carry)
        x = np.concatenate(outs, -1)
    return x, finals


@pytest.mark.parametrize("kind,num_layers,bidirectional", [
    ("rnn", 1, True), pytest.param("gru", 2, False, marks=pytest.mark.slow),
    pytest.param("lstm", 3, True, marks=pytest.mark.slow), ("gru", 1, True), ("lstm", 2, False)])
def test_stacked_rnn_equals_pytorch_semantics_in_numpy(kind, num_layers, bidirectional, inputs):
    from test_cells import CELLS as KINDS
    X, _ = inputs
    rnn = StackedRNN(KINDS[kind](H), num_layers=num_layers, bidirectional=bidirectional)
    params = rnn.init(jax.random.key(0), X)["params"]
    dirs = 2 if bidirectional else 1
    assert len(params) == num_layers * dirs and params["layers_1"]["cell"]["W_hh"].shape[0] == H
    carries = tuple(jax.tree.map(lambda c: jax.random.normal(jax.random.key(i), c.shape), c0)
                    for i, c0 in enumerate(rnn.initialize_carry(B, I)))
    outputs, finals = rnn.apply({"params": params}, X, carries)
    assert outputs.shape == (T, B, H * dirs) and len(finals) == num_layers * dirs
    ref_out, ref_finals = np_stack(kind, params, X, num_layers, bidirectional, carries)
    np.testing.assert_allclose(outputs, ref_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(finals), jax.tree.leaves(ref_finals), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_one_stacked_layer_is_the_rnn(inputs):
    X, H0 = inputs
    params = RNN(SimpleRNNCell(H)).init(jax.random.key(0), X)["params"]
    a = RNN(SimpleRNNCell(H)).apply({"params": params}, X, H0)
    b = StackedRNN(SimpleRNNCell(H)).apply({"params": {"layers_0": params}}, X, (H0,))
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    np.testing.assert_allclose(a[1], b[1][0], rtol=1e-6)


def test_dropout_between_layers_only_in_training_and_deterministic_under_a_key(inputs):
    X, _ = inputs
    rnn = StackedRNN(SimpleRNNCell(H), num_layers=2, dropout=0.5)
    params = {"params": rnn.init(jax.random.key(0), X)["params"]}
    plain = StackedRNN(SimpleRNNCell(H), num_layers=2).apply(params, X)[0]
    np.testing.assert_array_equal(rnn.apply(params, X)[0], plain)                     # evaluation: off
    run = lambda seed: rnn.apply(params, X, train=True, rngs={"dropout": jax.random.key(seed)})[0]
    np.testing.assert_array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2)) and not np.allclose(run(1), plain)
    # Dropout acts on layer 0's outputs, the input of layer 1: zeroing them all is layer 1 from zeros.
    all_dropped = StackedRNN(SimpleRNNCell(H), num_layers=2, dropout=1 - 1e-9).apply(
        params, X, train=True, rngs={"dropout": jax.random.key(0)})[0]
    layer1 = RNN(SimpleRNNCell(H)).apply({"params": params["params"]["layers_1"]}, jnp.zeros((T, B, H)))[0]
    np.testing.assert_allclose(all_dropped, layer1, rtol=1e-6, atol=1e-6)


def test_row_dropout_draws_each_rows_mask_by_its_index_in_the_global_batch():
    """A batch split in two, each half given its first row's index, draws the whole's masks: N devices train
    as one (each device's own key drew other masks, so runs of dropout moved with the device count)."""
    from rnnjax.model import RowDropout
    x_TxBxD, rngs, drop = jnp.ones((7, 8, 300)), {"dropout": jax.random.key(3)}, RowDropout(0.25)
    whole = drop.apply({}, x_TxBxD, False, rngs=rngs)
    halves = [drop.apply({}, x_TxBxD[:, :4], False, first, rngs=rngs) for first in (0, 4)]
    np.testing.assert_array_equal(np.concatenate(halves, axis=1), whole)
    np.testing.assert_array_equal(np.unique(whole), np.float32([0, 1 / 0.75]))     # kept: scaled by 1 / 0.75
    assert abs(np.mean(whole == 0) - 0.25) < 0.01                      # 16800 draws: 3 sigma is 0.01
    kept_BxD = (whole != 0).transpose(1, 0, 2).reshape(8, -1)
    assert len({row.tobytes() for row in kept_BxD}) == 8                # each row its own mask
    np.testing.assert_array_equal(drop.apply({}, x_TxBxD, True, rngs=rngs), x_TxBxD)     # evaluation: off
    assert not np.array_equal(drop.apply({}, x_TxBxD, False, rngs={"dropout": jax.random.key(4)}), whole)
    grad = jax.grad(lambda x: jnp.sum(RowDropout(1.0).apply({}, x, False, rngs=rngs)))(x_TxBxD)
    np.testing.assert_array_equal(grad, 0.0)                            # all dropped: not NaN


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stack_is_causal_unless_bidirectional(inputs, bidirectional):
    X, _ = inputs
    rnn = StackedRNN(GRUCell(H), num_layers=2, bidirectional=bidirectional)
    variables = rnn.init(jax.random.key(0), X)
    per_step = lambda X: jnp.sum(rnn.apply(variables, X)[0] ** 2, axis=(1, 2))
    size_TxT = np.asarray(jnp.abs(jax.jit(jax.jacrev(per_step))(X)).max(axis=(2, 3)))
    assert np.all(np.diag(size_TxT) > 0)
    assert np.all(np.triu(size_TxT, k=1) == 0) != bidirectional


class TraceCell(nn.RNNCellBase):
    """A carry that depends on the input's width (the protocol's ``initialize_carry(rng, (B, I))``): ``h`` and
    a running mean of the inputs."""
    features: int

    @nn.compact
    def __call__(self, carry, x):
        h, trace = carry
        trace = 0.9 * trace + 0.1 * x
        h = jnp.tanh(nn.Dense(self.features)(jnp.concatenate([x, trace], -1))
                     + nn.Dense(self.features, use_bias=False)(h))
        return (h, trace), h

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        return jnp.zeros((*input_shape[:-1], self.features)), jnp.zeros(input_shape)

    @property
    def num_feature_axes(self):
        return 1


@pytest.mark.parametrize("rnn", [RNN(SimpleRNNCell(H)), RNN(GRUCell(H)), RNN(LSTMCell(H)),
                                 StackedRNN(LSTMCell(H), num_layers=3),
                                 StackedRNN(TraceCell(H), num_layers=2)],
                         ids=["rnn", "gru", "lstm", "lstm x3", "input-wide carry x2"])     # each layer's own
def test_step_continues_the_sequence_for_every_cell_and_depth(rnn):
    model = RNNLM(rnn, V)
    X = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    variables = model.init(jax.random.key(0), X)
    logits, carry_T = model.apply(variables, X, method=RNNLM.forward)
    carry = model.initialize_carry(B)
    for t in range(T):
        step_logits, carry = model.apply(variables, X[:, t], carry, method=RNNLM.step)
        np.testing.assert_allclose(step_logits, logits[:, t], rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(carry_T), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bidirectional_cannot_step():
    model = RNNLM(StackedRNN(GRUCell(H), bidirectional=True), V)
    variables = model.init(jax.random.key(0), jnp.zeros((1, T), jnp.int32))
    with pytest.raises(ValueError, match="bidirectional RNN cannot step"):
        model.apply(variables, jnp.zeros(1, jnp.int32), model.initialize_carry(1), method=RNNLM.step)


SLOW_FLAX_CELLS = [pytest.param(c, marks=pytest.mark.slow) for c in (nn.GRUCell, nn.LSTMCell, nn.MGUCell)]


@pytest.mark.parametrize("cell", [nn.SimpleCell, *SLOW_FLAX_CELLS])
def test_a_cell_computing_in_bfloat16_keeps_a_float32_carry(cell):
    """flax's cells compute in bfloat16 given ``dtype``, and SimpleCell returns a bfloat16 carry: the scan
    and the step keep the carry float32 (a scan's carry cannot change type), and the two agree."""
    model = RNNLM(StackedRNN(cell(H, dtype=jnp.bfloat16), num_layers=2), V, dtype=jnp.bfloat16)
    X = jax.random.randint(jax.random.key(1), (B, T), 0, V)

    @jax.jit
    def run(variables):
        def step(carry, x_B):
            logits_BxV, carry = model.apply(variables, x_B, carry, method=RNNLM.step)
            return carry, logits_BxV
        carry, step_logits_TxBxV = jax.lax.scan(step, model.initialize_carry(B), X.T)
        logits, carry_T = model.apply(variables, X, method=RNNLM.forward)
        grads = jax.grad(lambda v: model.apply(v, X, X, jnp.ones(B), method=RNNLM.loss)[0])(variables)
        return logits, carry_T, step_logits_TxBxV.swapaxes(0, 1), carry, grads
    logits, carry_T, step_logits, carry, grads = run(jax.jit(model.init)(jax.random.key(0), X))
    np.testing.assert_allclose(step_logits, logits, rtol=1e-2, atol=1e-2)
    assert {leaf.dtype for leaf in jax.tree.leaves((carry_T, carry))} == {jnp.dtype(jnp.float32)}
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
