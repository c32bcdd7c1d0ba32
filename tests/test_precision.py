"""Mixed precision (``Config.compute_dtype``) and float32 matmul precision (``Config.matmul_precision``):
bfloat16 operands summed in float32, gradients close to float32's, everything kept stays float32, the
precision reaches the compiled steps, and the run's first line says both."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, DenseCell, random_batch, relative_error
from rnnjax import model as model_lib
from rnnjax.checkpoint import CheckpointError
from rnnjax.compiled import compile_run
from rnnjax.precision import at_precision, check_ambient, describe, dot
from rnnjax.start import plan
from rnnjax.state import create_train_state, make_model
from rnnjax.train import eval_steps, fit, train_step, train_windows


def rounded(x):
    """``x`` rounded to bfloat16, in float64."""
    return np.asarray(jnp.asarray(x).astype(jnp.bfloat16), np.float64)


def test_dot_in_bfloat16_rounds_the_operands_and_accumulates_in_float32():
    a = jax.random.normal(jax.random.key(0), (8, 64))
    b = jax.random.normal(jax.random.key(1), (64, 5))
    exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    np.testing.assert_allclose(dot(a, b), exact, rtol=1e-5, atol=1e-5)
    half = dot(a, b, jnp.bfloat16)
    assert half.dtype == jnp.float32
    np.testing.assert_allclose(half, rounded(a) @ rounded(b), rtol=1e-5, atol=1e-4)
    assert np.abs(np.asarray(half) - exact).max() > 1e-3


def test_dot_gradients_in_bfloat16_are_bfloat16_products_summed_in_float32():
    """Both backward matmuls round their operands (the incoming gradient too) and return float32: the
    weights' gradient, summed over every row, is not rounded to bfloat16."""
    a = jax.random.normal(jax.random.key(0), (3, 4, 64))            # rows over two axes, as (T, B, H)
    b = jax.random.normal(jax.random.key(1), (64, 5))
    g = jax.random.normal(jax.random.key(2), (3, 4, 5))
    out, vjp = jax.vjp(lambda a, b: dot(a, b, jnp.bfloat16), a, b)
    da, db = vjp(g)
    assert out.dtype == da.dtype == db.dtype == jnp.float32
    np.testing.assert_allclose(da, rounded(g) @ rounded(b).T, rtol=1e-5, atol=1e-4)
    want_db = rounded(a).reshape(-1, 64).T @ rounded(g).reshape(-1, 5)
    np.testing.assert_allclose(db, want_db, rtol=1e-5, atol=1e-4)
    assert not np.array_equal(np.asarray(db), rounded(db))          # not rounded to bfloat16 after the sum


CELL_CONFIGS = {"rnn": TINY, "gru": TINY.replace(cell="gru"),
                "lstm, 2 layers": TINY.replace(cell="lstm", num_layers=2)}


def mean_loss_and_grads(config, params, X, Y, mask):
    model = make_model(config, 12)

    def mean_loss(params):
        loss_sum, count, _ = model.apply({"params": params}, X, Y, mask, method="loss")
        return loss_sum / count
    return jax.jit(jax.value_and_grad(mean_loss))(params)


def batch(B=8, T=10, V=12):
    return (*random_batch(B, T, V), jnp.ones(B).at[-1].set(0.0))


@pytest.mark.parametrize("name", list(CELL_CONFIGS))
@pytest.mark.parametrize("kernel", ["plain", "fused"])
def test_bfloat16_gradients_are_close_to_float32_ones(name, kernel):
    """Within bfloat16's rounding (8 bits: 0.4% per operand), and not equal: the matmuls are bfloat16."""
    config = CELL_CONFIGS[name].replace(kernel=kernel)
    params = create_train_state(config, 12).params
    X, Y, mask = batch()
    loss32, grads32 = mean_loss_and_grads(config, params, X, Y, mask)
    loss16, grads16 = mean_loss_and_grads(config.replace(compute_dtype="bfloat16"), params, X, Y, mask)
    assert loss16.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
    assert abs(float(loss16) - float(loss32)) < 1e-3 * float(loss32)
    assert 1e-4 < relative_error(grads16, grads32) < 2e-2


def test_parameters_optimizer_state_and_carry_stay_float32_after_a_bfloat16_step(small_data):
    config = TINY.replace(cell="lstm", num_layers=2, compute_dtype="bfloat16")
    state = create_train_state(config, len(small_data.vocab))
    new_state, metrics = jax.jit(train_step)(state, next(small_data.train_batches(0)))
    for tree in (new_state.params, new_state.opt_state, metrics):       # d2l's SGD keeps no floats
        floats = {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}
        assert floats <= {jnp.dtype(jnp.float32)} and (floats or tree is new_state.opt_state)
    kernel = "output_layer", "kernel"
    assert not np.array_equal(new_state.params[kernel[0]][kernel[1]], state.params[kernel[0]][kernel[1]])
    model = make_model(config, len(small_data.vocab))
    logits, carries = model.apply({"params": new_state.params}, small_data.X[:2], method="forward")
    assert logits.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(carries)} == {jnp.dtype(jnp.float32)}
    assert len(jax.tree.leaves(carries)) == 4


def test_a_cell_without_dtype_computes_in_float32_and_the_output_layer_in_bfloat16(monkeypatch):
    monkeypatch.setitem(model_lib.CELLS, "mine", DenseCell)     # no dtype attribute
    model = make_model(TINY.replace(cell="mine", compute_dtype="bfloat16", kernel="plain"), 12)
    assert not hasattr(model.rnn.cell, "dtype") and model.dtype == jnp.bfloat16
    X = batch()[0]
    params = model.init(jax.random.key(0), X)["params"]
    H = model.apply({"params": params}, X, method="forward")[0]
    float32 = make_model(TINY.replace(cell="mine", kernel="plain"), 12).apply({"params": params}, X)
    assert 0 < np.abs(np.asarray(H) - np.asarray(float32)).max() < 0.05


def compiled_text(config, data, tmp_path, step=train_windows):
    """The StableHLO of ``fit``'s compiled training step (or ``eval_steps``) for ``config``."""
    p = plan(config, data, tmp_path, devices=1)
    train, evaluate, tokens, val_batches, _ = compile_run(p, data, step, eval_steps)
    state = create_train_state(config, len(data.vocab))
    windows = p.dp.shard_stack(list(data.train_windows(0))[:2])

    def lower(f, *args):     # ``compile`` wraps the jitted step (``.fn``) only where it has XLA options (CPU)
        return getattr(f, "fn", f).lower(*args).as_text()
    return lower(train, state, tokens, windows), lower(evaluate, state, val_batches)


def precisions(text):
    return {word for word in ("DEFAULT", "HIGHEST", "HIGH,") if f"precision = [{word}" in text}


def test_matmul_precision_reaches_the_compiled_train_and_eval_steps(small_data, tmp_path):
    """``high``/``highest`` are what every dot of both steps asks XLA for; ``default`` leaves JAX's setting
    (here conftest's ``highest``, else JAX's own default)."""
    for precision, want in [("high", {"HIGH,"}), ("highest", {"HIGHEST"}), ("default", {"HIGHEST"})]:
        texts = compiled_text(TINY.replace(matmul_precision=precision), small_data, tmp_path)
        assert [precisions(t) for t in texts] == [want, want], precision
    with jax.default_matmul_precision(None):
        texts = compiled_text(TINY, small_data, tmp_path)
        assert [precisions(t) for t in texts] == [{"DEFAULT"}, {"DEFAULT"}]


def test_on_a_cpu_default_precision_trains_as_highest_bit_for_bit(small_data):
    if jax.default_backend() != "cpu":
        pytest.skip("JAX's default float32 matmuls are full float32 only on a CPU")
    state = create_train_state(TINY, len(small_data.vocab))
    batches = list(small_data.train_batches(0))[:3]

    def train(precision):
        step = jax.jit(at_precision(train_step, precision))
        s = state
        for b in batches:
            s, _ = step(s, b)
        return s.params
    with jax.default_matmul_precision(None):
        default, highest = train("default"), train("highest")
    for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(highest), strict=True):
        np.testing.assert_array_equal(a, b)


def gpu(compute_capability):
    return types.SimpleNamespace(platform="gpu", compute_capability=compute_capability)


def test_describe_says_what_the_matmuls_do_on_each_backend():
    cpu = types.SimpleNamespace(platform="cpu")
    with jax.default_matmul_precision(None):
        assert describe("float32", "default", cpu) == describe("float32", "high", cpu) == "float32 matmuls"
        tf32 = "float32 matmuls at {} precision (TF32 on this GPU)"
        assert describe("float32", "default", gpu("9.0")) == tf32.format("default")
        assert describe("float32", "high", gpu("8.0")) == tf32.format("high")
        assert describe("float32", "highest", gpu("9.0")) == "float32 matmuls"
        assert describe("float32", "default", gpu("7.0")) == "float32 matmuls"         # a V100: no TF32
        tpu = types.SimpleNamespace(platform="tpu")
        one_pass = "float32 matmuls at default precision (one bfloat16 pass on this TPU)"
        assert describe("float32", "default", tpu) == one_pass
        assert describe("bfloat16", "default", gpu("9.0")) == "bfloat16 matmuls accumulated in float32"
        assert describe("bfloat16", "default", cpu, cell_takes_dtype=False) == (
            "bfloat16 matmuls in the output layer, accumulated in float32 (the cell takes no dtype: float32)")
        assert describe("bfloat16", "default", cpu, own_cell=False) == (      # flax's return bfloat16
            "bfloat16 matmuls, the cell's in bfloat16 as it computes with dtype=bfloat16, the output layer's "
            "accumulated in float32")
    # "default" is what JAX is set to: conftest's highest here
    assert describe("float32", "default", gpu("9.0")) == "float32 matmuls"
    with jax.default_matmul_precision("BF16_BF16_F32"):     # an algorithm, which a CPU computes in float32
        said = "float32 matmuls (BF16_BF16_F32 asked: a CPU computes float32)"
        assert describe("float32", "default", cpu) == said
        assert describe("float32", "default", gpu("9.0")) == "float32 matmuls at BF16_BF16_F32"
    with jax.default_matmul_precision("F16_F16_F16"):       # which a CPU computes in float16
        assert describe("float32", "default", cpu) == "float32 matmuls at F16_F16_F16"


def test_the_runs_first_line_names_the_compute_dtype_and_the_matmuls(small_data, tmp_path):
    lines = {dtype: plan(TINY.replace(compute_dtype=dtype), small_data, tmp_path, devices=1).describe()
             for dtype in ("float32", "bfloat16")}
    device = jax.devices()[0]
    for dtype, line in lines.items():
        assert f", {describe(dtype, 'default', device)}; writing to" in line
    assert "bfloat16 matmuls accumulated in float32; writing to" in lines["bfloat16"]
    if jax.default_backend() == "cpu":
        assert "(rnnjax.fused: the recurrence and the output layer), float32 matmuls; writing" in \
            lines["float32"]


def test_the_first_line_of_a_cell_not_rnnjaxs_says_which_matmuls_sum_in_bfloat16(
        small_data, tmp_path, monkeypatch):
    import functools

    import flax.linen as nn
    from conftest import DenseCell
    from rnnjax import model as model_lib

    class Mine(model_lib.LSTMCell):
        pass
    for cell, takes, own in [(DenseCell, False, False), (nn.SimpleCell, True, False),
                             (functools.partial(nn.SimpleCell), True, False), (Mine, True, True),
                             (functools.partial(model_lib.GRUCell), True, True)]:
        monkeypatch.setitem(model_lib.CELLS, "mine", cell)
        line = plan(TINY.replace(cell="mine", compute_dtype="bfloat16"), small_data, tmp_path,
                    devices=1).describe()
        assert ("bfloat16 matmuls in the output layer, accumulated in float32 (the cell takes no dtype: "
                "float32); writing" in line) is not takes, line
        foreign = "the cell's in bfloat16 as it computes with dtype=bfloat16"
        assert (foreign in line) is (takes and not own), line
        assert ("bfloat16 matmuls accumulated in float32; writing" in line) is own, line


def test_a_run_resumes_at_another_matmul_precision_but_not_in_another_compute_dtype(small_data, tmp_path):
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    assert plan(TINY.replace(matmul_precision="high"), small_data, tmp_path, devices=1).step == 13
    with pytest.raises(CheckpointError, match=r": compute_dtype='bfloat16' \(it has 'float32'\)\. Use"):
        plan(TINY.replace(compute_dtype="bfloat16"), small_data, tmp_path, devices=1)


@pytest.mark.cpu_devices(1)
def test_a_matmul_algorithm_the_backend_does_not_compute_is_one_sentence_before_any_work(
        monkeypatch, tmp_path, capsys, small_data):
    """``JAX_DEFAULT_MATMUL_PRECISION=TF32_TF32_F32`` on a CPU failed at the run's first matmul, after its
    data line (fit: its config.json written), in XLA's words naming neither the variable nor what to do."""
    from experiments import timemachine
    for computed in ("BF16_BF16_F32", "highest"):
        with jax.default_matmul_precision(computed):
            check_ambient()
    said = (r"^JAX's default_matmul_precision 'TF32_TF32_F32' asks for matmuls this cpu backend does not "
            r"compute \(The precision")
    with jax.default_matmul_precision("TF32_TF32_F32"):
        for refused in (check_ambient, lambda: at_precision(dot, "default"),         # restore's predict too
                        lambda: fit(TINY, small_data, tmp_path / "fit", devices=1, log=None)):
            with pytest.raises(ValueError, match=said):
                refused()
        assert at_precision(dot, "highest") is not dot and not (tmp_path / "fit").exists()
        monkeypatch.setenv("JAX_DEFAULT_MATMUL_PRECISION", "TF32_TF32_F32")
        assert timemachine.main(["--preset", "tiny", "--workdir", str(tmp_path / "w")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and not (tmp_path / "w").exists()
    assert err.startswith("error: $JAX_DEFAULT_MATMUL_PRECISION=TF32_TF32_F32 asks for matmuls this cpu "
                          "backend does not compute (")
    assert err.endswith("): give one it does, or unset it.\n")
