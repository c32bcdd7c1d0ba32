"""The hoisted kernel against the plain model under autodiff: values and gradients, every cell and shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, assert_same, jit_value_and_grad, random_batch, value_and_grad
from rnnjax import hoisted, precision
from rnnjax.hoisted import HoistedRNNLM
from rnnjax.model import RNN, RNNLM, GRUCell, LSTMCell, SimpleRNNCell, StackedRNN
from rnnjax.kernels import loss_path
from rnnjax.state import make_model
from rnnjax.train import fit

V, B, T = 12, 5, 7
WEIGHTS_B = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0])          # a padded row among real ones

CELLS = {"rnn tanh": lambda H: SimpleRNNCell(H), "rnn relu": lambda H: SimpleRNNCell(H, nonlinearity="relu"),
         "gru": GRUCell, "lstm": LSTMCell}


def models(rnn):
    return RNNLM(rnn, V), HoistedRNNLM(rnn, V)


# A few in the fast subset (each compiles two programs); every cell and layout in the slow one.
# Each cell in two layouts; every layout, and the deep bidirectional one for every gated cell.
LAYOUTS = [("rnn tanh", "1"), ("rnn tanh", "3 bidirectional dropout"), ("rnn relu", "1 reverse"),
           ("rnn relu", "2 dropout"), ("gru", "1"), ("gru", "3 bidirectional dropout"),
           ("lstm", "2 dropout"), ("lstm", "3 bidirectional dropout")]
FAST = {("rnn tanh", "1"), ("rnn relu", "1 reverse"), ("lstm", "2 dropout")}


@pytest.mark.parametrize("cell,layers", [pytest.param(*c, marks=() if c in FAST else pytest.mark.slow)
                                         for c in LAYOUTS])
def test_hoisted_loss_equals_plain_loss(cell, layers):
    """Training mode with dropout between layers (the same rng, the same masks), padded rows."""
    make = CELLS[cell]
    rnn = {"1": lambda: RNN(make(8), unroll=2), "1 reverse": lambda: RNN(make(8), reverse=True),
           "2 dropout": lambda: StackedRNN(make(8), 2, dropout=0.3),
           "3 bidirectional dropout": lambda: StackedRNN(make(6), 3, dropout=0.3, bidirectional=True),
           }[layers]()
    plain, fast = models(rnn)
    X, Y = random_batch(B, T, V)
    variables = plain.init(jax.random.key(0), X)
    train = dict(train=True, rngs={"dropout": jax.random.key(3)})
    with jax.default_matmul_precision("highest"):
        want = jit_value_and_grad(plain, variables, X, Y, WEIGHTS_B, **train)
        got = jit_value_and_grad(fast, variables, X, Y, WEIGHTS_B, **train)
    if "dropout" in layers:          # dropout is on: evaluation differs
        loss_sum, count, _ = plain.apply(variables, X, Y, WEIGHTS_B, method="loss")
        assert abs(float(loss_sum / count) - float(want[0])) > 1e-4
    assert_same(got, want)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(got[1]))   # every parameter learns


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm"])
def test_hoisted_loss_under_vmap_over_stacked_params(cell):
    """As ``--seeds`` runs it: params of two seeds stacked, each run its own batch and its own dropout."""
    rnn = StackedRNN(CELLS[cell](8), 2, dropout=0.2)
    plain, fast = models(rnn)
    X, Y = jax.vmap(lambda s: jnp.stack(random_batch(B, T, V, s)))(jnp.array([1, 5])).swapaxes(0, 1)
    variables = jax.vmap(lambda k: plain.init(k, X[0]))(jax.random.split(jax.random.key(0)))
    rngs = jax.random.split(jax.random.key(3))

    def runs(model):
        def one(v, x, y, rng):
            return value_and_grad(model, v, x, y, WEIGHTS_B, train=True, rngs={"dropout": rng})
        return jax.jit(jax.vmap(one))(variables, X, Y, rngs)
    with jax.default_matmul_precision("highest"):
        want, got = runs(plain), runs(fast)
    assert_same(got, want)
    assert abs(float(got[0][0]) - float(got[0][1])) > 1e-4                   # the runs differ


@pytest.mark.slow
def test_one_step_and_a_long_sequence():
    """T = 1 gives W_hh no gradient (from h = 0); a longer sequence than elsewhere still matches."""
    for steps, rnn in ((1, RNN(LSTMCell(4))), (40, RNN(GRUCell(4)))):
        plain, fast = models(rnn)
        X = jax.random.randint(jax.random.key(1), (3, steps), 0, V)
        variables = plain.init(jax.random.key(0), X)
        with jax.default_matmul_precision("highest"):
            want = jit_value_and_grad(plain, variables, X, X, jnp.ones(3))
            got = jit_value_and_grad(fast, variables, X, X, jnp.ones(3))
        assert_same(got, want)
        assert (float(jnp.abs(got[1]["params"]["rnn"]["cell"]["W_hh"]).max()) > 0) == (steps > 1)


def test_hoisted_model_is_the_plain_model_but_for_its_loss():
    plain, fast = models(StackedRNN(GRUCell(8), 2))
    X = random_batch(B, T, V)[0]
    a, b = plain.init(jax.random.key(0), X), fast.init(jax.random.key(0), X)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(plain.apply(a, X), fast.apply(a, X))


def test_a_cell_it_does_not_know_is_refused_by_name():
    class MyGRU(GRUCell):
        pass
    assert hoisted.supports(GRUCell(4)) and hoisted.supports(LSTMCell) and not hoisted.supports(MyGRU(4))
    model = HoistedRNNLM(RNN(MyGRU(4)), V)
    X = random_batch(B, T, V)[0]
    variables = model.init(jax.random.key(0), X)
    with pytest.raises(TypeError, match="not MyGRU"):
        model.apply(variables, X, X, jnp.ones(B), method="loss")


def test_make_model_builds_it_and_the_run_names_it():
    model = make_model(TINY.replace(kernel="hoisted", cell="lstm", num_layers=2), 28)
    assert type(model) is HoistedRNNLM and loss_path(model).startswith("hoisted loss (rnnjax.hoisted")
    assert not model.rnn.remat


@pytest.mark.slow
@pytest.mark.parametrize("cell,num_layers", [("lstm", 2)])     # every cell's loss: above
def test_fit_with_the_hoisted_kernel_is_fit_with_the_plain_one(small_data, tmp_path, cell, num_layers):
    config = TINY.replace(cell=cell, num_layers=num_layers, dropout=0.2 if num_layers > 1 else 0.0, epochs=2)
    lines = []
    with jax.default_matmul_precision("highest"):
        got = fit(config.replace(kernel="hoisted"), small_data, tmp_path / "hoisted", devices=2,
                  log=lines.append)
        want = fit(config.replace(kernel="plain"), small_data, tmp_path / "plain", devices=2, log=None)
    assert "hoisted loss" in lines[0]
    for a, b in zip(got.history, want.history, strict=True):
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5)
    for x, y in zip(jax.tree.leaves(got.state.params), jax.tree.leaves(want.state.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def loop(spec, W_hh, b_hh, XW_TxBxG):
    """``hoisted.recurrence``'s forward as a plain scan, for autodiff to differentiate."""
    kind, nonlinearity, reverse, _, dtype = spec
    H = W_hh.shape[0]
    state = (jnp.zeros((XW_TxBxG.shape[1], H)),) * (2 if kind == "lstm" else 1)

    def step(state, XW_BxG):
        HW_BxG = precision.dot(state[0], W_hh, dtype) + (0.0 if b_hh is None else b_hh)
        read = {"rnn": (), "lstm": state[1:], "gru": state[:1]}[kind]
        pre = (XW_BxG, HW_BxG) if kind == "gru" else XW_BxG + HW_BxG
        state = hoisted.gates(kind, nonlinearity, pre, read)
        return state, state[0]
    return jax.lax.scan(step, state, XW_TxBxG, reverse=reverse)[1]


@pytest.mark.parametrize("kind,gates,dtype", [
    pytest.param(kind, gates, dtype, marks=() if (kind, dtype) == ("gru", "float32")
                 else pytest.mark.slow)
    for kind, gates in [("rnn", 1), ("gru", 3), ("lstm", 4)] for dtype in ("float32", "bfloat16")])
def test_recurrence_backward_is_autodiffs_in_either_direction_and_compute_dtype(kind, gates, dtype):
    """Its hand-written backward against autodiff of the same loop; in bfloat16 to bfloat16's precision."""
    H, keys = 8, jax.random.split(jax.random.key(0), 5)
    W_hh = jax.random.normal(keys[0], (H, gates * H)) / H ** 0.5
    b_hh = jax.random.normal(keys[1], (gates * H,)) if kind == "gru" else None
    XW = jax.random.normal(keys[2], (T, B, gates * H))
    R = jax.random.normal(keys[3], (T, B, H))
    for reverse in (False, True):
        spec = (kind, "tanh", reverse, 1, jnp.dtype(dtype))

        def loss(f):
            return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(f(spec, *a) * R), argnums=(0, 1, 2)))
        with jax.default_matmul_precision("highest"):
            got, want = loss(hoisted.recurrence)(W_hh, b_hh, XW), loss(loop)(W_hh, b_hh, XW)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            if dtype == "float32":
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
            else:        # both round to bfloat16, at other points: within 1% of the largest entry
                assert float(jnp.abs(a - b).max()) <= 0.01 * float(jnp.abs(b).max())
        if dtype == "bfloat16":      # it does compute in bfloat16: not float32's gradients
            spec = (kind, "tanh", reverse, 1, jnp.dtype("float32"))
            with jax.default_matmul_precision("highest"):
                f32 = loss(hoisted.recurrence)(W_hh, b_hh, XW)
            assert float(jnp.abs(f32[1][0] - got[1][0]).max()) > 1e-4


def loops_and_dots(jaxpr) -> list:
    """The dots of a jaxpr in program order: ``"dot"`` outside a loop, ``("loop", its dots)`` for a loop."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("scan", "while"):
            body = eqn.params.get("jaxpr") or eqn.params["body_jaxpr"]
            out.append(("loop", sum(1 for x in loops_and_dots(body.jaxpr) if x == "dot")))
        elif eqn.primitive.name == "dot_general":
            out.append("dot")
        else:
            for p in eqn.params.values():
                inner = getattr(p, "jaxpr", p)
                if hasattr(inner, "eqns"):
                    out.extend(loops_and_dots(inner))
    return out


def test_the_loops_do_one_matmul_a_step_and_the_weight_gradients_come_after_them():
    """In the training step's program each loop, forward and backward, has one dot (``h @ W_hh``,
    ``dHW @ W_hh.T``); the plain model's backward loops take the weight gradients step by step."""
    X = random_batch(B, T, V)[0]
    programs = {}
    pair = models(StackedRNN(LSTMCell(4), 2, dropout=0.1))
    for name, model in zip(("plain", "hoisted"), pair, strict=True):
        variables = model.init(jax.random.key(0), X)
        step = jax.grad(lambda v: model.apply(v, X, X, WEIGHTS_B, True, method="loss",
                                              rngs={"dropout": jax.random.key(1)})[0])
        programs[name] = loops_and_dots(jax.make_jaxpr(step)(variables).jaxpr)
    loops = [x for x in programs["hoisted"] if x != "dot"]
    assert loops == [("loop", 1)] * 4                                # 2 layers, forward and backward
    # after the last loop (layer 1's backward), its dW_hh; before it, layer 2's dW_hh, dW_ih and dx
    assert programs["hoisted"][-1] == "dot" and programs["hoisted"][-5:-1] == ["dot"] * 3 + [("loop", 1)]
    assert max(x[1] for x in programs["plain"] if x != "dot") >= 2


@pytest.mark.parametrize("cell", ["lstm"])
def test_hoisted_loss_equals_plain_loss_in_bfloat16(cell):
    """The output layer too computes in the model's dtype: bfloat16 roundings shared with the plain model."""
    config = TINY.replace(cell=cell, num_layers=2, compute_dtype="bfloat16")
    plain, fast, plain_32 = (make_model(config.replace(kernel=k, compute_dtype=d), V)
                             for k, d in [("plain", "bfloat16"), ("hoisted", "bfloat16"),
                                          ("plain", "float32")])
    X, Y = random_batch(B, T, V)
    variables = plain_32.init(jax.random.key(0), X)
    l_fast, g_fast = value_and_grad(fast, variables, X, Y, WEIGHTS_B)
    l_plain, g_plain = value_and_grad(plain, variables, X, Y, WEIGHTS_B)
    l_32 = value_and_grad(plain_32, variables, X, Y, WEIGHTS_B)[0]
    assert abs(float(l_plain) - float(l_32)) > 1e-6 * abs(float(l_32))      # it does round
    np.testing.assert_allclose(l_fast, l_plain, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-4)
