"""A cell of one's own, defined here, through the whole library: the cell protocol is all it needs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY
from rnnjax import checkpoint, model as model_lib
from rnnjax.generate import predict
from rnnjax.model import RNN, RNNLM
from rnnjax.state import make_model
from rnnjax.train import fit


class LeakyCell(nn.RNNCellBase):
    """A toy cell whose carry is not its output: ``(h, a)``, with ``a`` a running average of ``h``."""
    num_hiddens: int

    @nn.compact
    def __call__(self, carry, x):
        h, a = carry
        W = self.param("W", nn.initializers.normal(0.5), (x.shape[-1], self.num_hiddens))
        U = self.param("U", nn.initializers.orthogonal(), (self.num_hiddens, self.num_hiddens))
        h = jnp.tanh(x @ W + h @ U + a)
        a = 0.9 * a + 0.1 * h
        return (h, a), h

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        zeros = jnp.zeros((*input_shape[:-1], self.num_hiddens))
        return zeros, zeros

    @property
    def num_feature_axes(self):
        return 1


def test_rnn_scans_the_cell_as_a_python_loop_does():
    cell, X = LeakyCell(5), jax.random.normal(jax.random.key(0), (7, 3, 4))
    rnn = RNN(cell)
    params = rnn.init(jax.random.key(1), X)["params"]
    outputs, (h, a) = rnn.apply({"params": params}, X)
    carry = cell.initialize_carry(None, X[0].shape)
    for t in range(7):
        carry, y = cell.apply({"params": params["cell"]}, carry, X[t])
        np.testing.assert_allclose(outputs[t], y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a, carry[1], rtol=1e-6, atol=1e-6)
    assert not np.allclose(a, h)


@pytest.mark.cpu_devices(2)
def test_a_new_cell_trains_checkpoints_restores_and_generates(small_data, tmp_path, monkeypatch):
    monkeypatch.setitem(model_lib.CELLS, "leaky", LeakyCell)
    config = TINY.replace(cell="leaky", epochs=4)
    lines = []
    result = fit(config, small_data, tmp_path, devices=2, log=lines.append)
    # the recurrence is the layer's own scan
    assert "fused loss (rnnjax.fused: the output layer; the cells' elementwise ops recomputed" in lines[0]
    assert type(make_model(config.replace(kernel="plain"), len(small_data.vocab))) is RNNLM
    ppl = [r["train_ppl"] for r in result.history]
    assert ppl[-1] < ppl[0] < len(small_data.vocab)
    assert result.state.params["rnn"]["cell"]["U"].shape == (16, 16)

    restored = checkpoint.restore(tmp_path)
    assert restored.config.cell == "leaky" and restored.step == int(result.state.step)
    text = restored.predict("the time", 30)
    assert text == predict(make_model(config, len(small_data.vocab)), result.state.params, small_data.vocab,
                           "the time", 30)
    assert len(text) == 38 and set(text) <= set(small_data.vocab.idx_to_token)
