import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, DenseCell
from rnnjax import spelling, cudnn, fused, hoisted, kernels, model as model_lib
from rnnjax.config import Config
from rnnjax.model import RNNLM
from rnnjax.state import make_model
from rnnjax.train import fit


@pytest.fixture
def user_cell(monkeypatch):
    monkeypatch.setitem(model_lib.CELLS, "user", DenseCell)      # a user's: no kernel knows its gates
    return "user"


def test_auto_takes_the_fused_kernel_on_a_cpu_and_a_named_kernel_is_forced():
    for cell in ("rnn", "gru", "lstm"):
        assert kernels.choose(Config(cell=cell), "cpu") == "fused"
        assert kernels.choose(Config(cell=cell, num_layers=3, dropout=0.1), "cpu") == "fused"
    for name in kernels.KERNELS:
        forced = Config(kernel=name)
        assert kernels.choose(forced, "cpu") == name == kernels.choose(forced, "gpu")


def test_auto_takes_the_hoisted_kernel_elsewhere_for_its_own_cells_and_never_cudnn(user_cell):
    for backend in ("gpu", "tpu"):
        for config in (Config(), Config(nonlinearity="relu"), Config(cell="gru", num_layers=2),
                       Config(cell="lstm"), Config(cell="lstm", num_layers=2, dropout=0.2)):
            assert kernels.choose(config, backend) == "hoisted"
        assert kernels.choose(Config(cell=user_cell), backend) == "fused"      # a cell it does not know


def test_check_refuses_what_a_forced_kernel_cannot_train_in_one_sentence(user_cell):
    refused = [(Config(cell=user_cell, kernel="hoisted"), "gpu", "^kernel='hoisted' writes out the gates"),
               (Config(cell="lstm", kernel="cudnn"), "cpu", "needs an NVIDIA GPU"),
               (Config(cell="gru", kernel="cudnn"), "gpu", "not gru; use kernel='hoisted' or kernel='auto'"),
               (Config(cell=user_cell, kernel="cudnn"), "gpu",
                f"{user_cell}; use kernel='fused' or kernel='auto'"),
               (Config(cell="lstm", kernel="cudnn", num_layers=2, bidirectional=True), "gpu",
                "one direction"),
               (Config(cell="lstm", kernel="cudnn", compute_dtype="bfloat16"), "gpu", "float32 only")]
    for config, backend, why in refused:
        with pytest.raises(ValueError, match=why) as e:
            kernels.check(config, backend)
        assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")
    command = "^--kernel cudnn is cuDNN's LSTM and trains --cell lstm only, not gru; use --kernel hoisted or "
    with pytest.raises(ValueError, match=command + "--kernel auto\\.$"), spelling.flag_spelling():
        kernels.check(Config(cell="gru", kernel="cudnn"), "gpu")        # as the command names them
    for config, backend in [(Config(cell="lstm", kernel="cudnn", num_layers=3, dropout=0.2), "gpu"),
                            (Config(cell=user_cell), "gpu"), (Config(cell=user_cell, kernel="fused"), "cpu"),
                            (Config(cell="gru", kernel="hoisted"), "cpu")]:
        kernels.check(config, backend)


def test_cudnn_is_refused_where_jax_s_default_matmul_precision_is_one_bfloat16_pass():
    """JAX's cuDNN LSTM raises NotImplementedError at that ambient precision; the run's own
    ``--matmul-precision`` (traced inside ``jax.default_matmul_precision``) overrides it."""
    lstm = Config(cell="lstm", kernel="cudnn")
    for ambient in ("bfloat16", "default"):
        with jax.default_matmul_precision(ambient):
            with pytest.raises(ValueError, match=f"default matmul precision '{ambient}'") as e:
                kernels.check(lstm, "gpu")
            assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")
            kernels.check(lstm.replace(matmul_precision="high"), "gpu")
            kernels.check(lstm.replace(kernel="hoisted"), "gpu")
    for ambient in ("tensorfloat32", "highest", "BF16_BF16_F32", None):
        with jax.default_matmul_precision(ambient):
            kernels.check(lstm, "gpu")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="on a GPU the cudnn kernel trains")
def test_a_refused_kernel_stops_fit_before_anything_is_written(small_data, tmp_path):
    with pytest.raises(ValueError, match="^kernel='cudnn' runs cuDNN's LSTM, which needs an NVIDIA GPU"):
        fit(TINY.replace(cell="lstm", kernel="cudnn"), small_data, tmp_path / "run", devices=1)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kernel,cls", [("plain", RNNLM), ("fused", fused.FusedRNNLM),
                                        ("hoisted", hoisted.HoistedRNNLM), ("cudnn", cudnn.CudnnRNNLM)])
def test_make_model_builds_the_chosen_kernel(kernel, cls):
    assert type(make_model(Config(kernel=kernel, cell="lstm"), 28)) is cls


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["fused", "hoisted"])
def test_every_kernel_that_runs_here_trains_as_the_plain_model(kernel):
    """The same loss and gradients from ``make_model``'s kernels, at full float32 matmul precision
    (tests/test_fused.py and tests/test_hoisted.py check them in depth; test_cudnn.py the cudnn kernel)."""
    config = TINY.replace(cell="lstm", num_layers=2, dropout=0.25, num_hiddens=8)
    plain, fast = (make_model(config.replace(kernel=k), 10) for k in ("plain", kernel))
    X = jax.random.randint(jax.random.key(1), (4, 6), 0, 10)
    weights = jnp.array([1.0, 0.0, 1.0, 1.0])
    variables = plain.init(jax.random.key(0), X)

    def value_and_grad(model):
        def mean_loss(v):
            loss_sum, count, _ = model.apply(v, X, X[:, ::-1], weights, True, method="loss",
                                             rngs={"dropout": jax.random.key(2)})
            return loss_sum / count
        return jax.jit(jax.value_and_grad(mean_loss))(variables)
    with jax.default_matmul_precision("highest"):
        (l_fast, g_fast), (l_plain, g_plain) = value_and_grad(fast), value_and_grad(plain)
    np.testing.assert_allclose(l_fast, l_plain, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
