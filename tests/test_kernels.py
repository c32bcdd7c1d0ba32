import pytest

from rnnjax import fused, kernels
from rnnjax.config import Config
from rnnjax.model import RNNLM
from rnnjax.state import make_model


def test_auto_takes_the_fused_kernel_on_a_cpu_and_a_named_kernel_is_forced():
    assert kernels.choose(Config(), "cpu") == "fused"
    assert kernels.choose(Config(cell="lstm", num_layers=2), "gpu") == "fused"
    assert kernels.choose(Config(), "gpu") == "plain"
    for name in kernels.KERNELS:
        forced = Config(kernel=name)
        assert kernels.choose(forced, "cpu") == name == kernels.choose(forced, "gpu")


@pytest.mark.parametrize("kernel,cls", [("plain", RNNLM), ("fused", fused.FusedRNNLM)])
def test_make_model_builds_the_chosen_kernel(kernel, cls):
    assert type(make_model(Config(kernel=kernel, cell="gru"), 28)) is cls
