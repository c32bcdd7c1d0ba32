"""Cells that are not rnnjax's, through the whole library: flax's own cells and cells of one's own.

The cell protocol is all they need. Only rnnjax's cells declare ``accepts_one_hot``;
every other cell gets float one-hot vectors, as it would from ``nn.RNN``.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, DenseCell, ListedCell, small_text
from rnnjax import checkpoint, model as model_lib
from rnnjax.config import ConfigError
from rnnjax.data import TimeMachine
from rnnjax.generate import predict
from rnnjax.model import RNN, RNNLM, OneHot, SimpleRNNCell, StackedRNN
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


FOREIGN = {"flax_gru": nn.GRUCell, "flax_mgu": nn.MGUCell, "flax_simple": nn.SimpleCell, "dense": DenseCell,
           "listed": ListedCell}


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


SEEN = []


class Spy(SimpleRNNCell):
    """rnnjax's RNN cell, recording the type of each input it is given (at trace time)."""

    def __call__(self, carry, x):
        SEEN.append(type(x))
        return super().__call__(carry, x)


class UndeclaredSpy(Spy):
    accepts_one_hot = False


@pytest.mark.parametrize("cell", [Spy, UndeclaredSpy])
def test_only_a_cell_that_declares_it_gets_one_hot_ids(cell):
    ids = OneHot(jnp.array([[1, 2], [0, 3]]), 5)
    rnn = RNN(cell(4))
    params = rnn.init(jax.random.key(0), ids)
    SEEN.clear()
    outputs = rnn.apply(params, ids)[0]
    rnn.apply(params, rnn.initialize_carry(2, 5), OneHot(ids.ids[0], 5), method=RNN.step)
    assert SEEN and {t is OneHot for t in SEEN} == {cell is Spy}
    np.testing.assert_allclose(outputs, rnn.apply(params, ids.dense())[0], rtol=1e-6)


@pytest.mark.parametrize("name", ["flax_gru", "dense"])
def test_a_foreign_cell_in_the_model_is_flax_s_nn_rnn_over_one_hot_vectors(name):
    """The reference: flax's own ``nn.RNN`` (batch-major) over float one-hot vectors, the same weights."""
    V, X_BxT = 6, jax.random.randint(jax.random.key(0), (3, 5), 0, 6)
    lm = RNNLM(StackedRNN(FOREIGN[name](4), num_layers=2), V)
    params = jax.jit(lm.init)(jax.random.key(1), X_BxT)["params"]
    x = jax.nn.one_hot(X_BxT, V)
    for k in range(2):
        layer = {"params": {"cell": params["rnn"][f"layers_{k}"]["cell"]}}
        x = jax.jit(nn.RNN(FOREIGN[name](4)).apply)(layer, x)
    out = params["output_layer"]
    np.testing.assert_allclose(jax.jit(lm.apply)({"params": params}, X_BxT), x @ out["kernel"] + out["bias"],
                               rtol=1e-5, atol=1e-6)
    bound = 1 / 4 ** 0.5          # PyTorch's nn.Linear init, its fan-in read from the cells' outputs
    assert out["kernel"].shape == (4, V) and float(jnp.abs(out["kernel"]).max()) <= bound


# flax's MGU is the notebook test's cell, its SimpleCell trains in bfloat16 below.
SLOW_FOREIGN = [pytest.param(name, marks=pytest.mark.slow) for name in ("listed", "flax_gru")]


@pytest.mark.parametrize("name", ["dense", *SLOW_FOREIGN])
def test_a_foreign_cell_trains_resumes_exactly_restores_and_generates(name, tmp_path, monkeypatch):
    monkeypatch.setitem(model_lib.CELLS, name, FOREIGN[name])
    config = TINY.replace(cell=name, epochs=1, num_train=100)
    small_data = TimeMachine(config.batch_size, config.num_steps, config.num_train, config.num_val,
                             text=small_text(5000))
    straight = fit(config.replace(epochs=2), small_data, tmp_path / "straight", devices=1, log=None)
    assert straight.history[-1]["train_ppl"] < straight.history[0]["train_ppl"] < len(small_data.vocab)
    fit(config, small_data, tmp_path / "resumed", devices=1, log=None)
    resumed = fit(config.replace(epochs=2), small_data, tmp_path / "resumed", devices=1, log=None)
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state), strict=True):
        np.testing.assert_array_equal(a, b)                                     # bit for bit

    restored = checkpoint.restore(tmp_path / "resumed")
    assert restored.config.cell == name and restored.step == int(straight.state.step)
    text = restored.predict("the time", 12)
    model = make_model(config, len(small_data.vocab))
    assert text == predict(model, straight.state.params, small_data.vocab, "the time", 12)
    assert len(text) == 20 and set(text) <= set(small_data.vocab.idx_to_token)
    sampled = restored.predict("the", 12, temperature=0.8, key=jax.random.PRNGKey(1))
    assert len(sampled) == 15 and sampled.startswith("the")


@pytest.mark.slow
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


def test_a_flax_cell_trains_in_bfloat16(small_data, tmp_path, monkeypatch):
    """flax's SimpleCell given bfloat16 returns a bfloat16 carry; the scan keeps it float32 and training runs
    (it stopped in a JAX TypeError), through the kernel the CPU picks (the fused loss, remat'ed scan)."""
    monkeypatch.setitem(model_lib.CELLS, "flax_simple", nn.SimpleCell)
    config = TINY.replace(cell="flax_simple", compute_dtype="bfloat16", epochs=1)
    result = fit(config, small_data, tmp_path, devices=1, log=None)
    assert result.state.params["rnn"]["cell"]["i"]["kernel"].dtype == jnp.float32
    assert 1 < result.history[-1]["train_ppl"] < 2 * len(small_data.vocab)


class RankedCell(DenseCell):
    """A cell with a required field beyond its width: built as ``CELLS[name](num_hiddens)`` it cannot be."""
    rank: int


def test_a_cell_that_needs_other_arguments_says_to_register_a_partial(tmp_path, monkeypatch, capsys):
    import functools

    from experiments import timemachine
    monkeypatch.setitem(model_lib.CELLS, "ranked", RankedCell)
    with pytest.raises(ConfigError, match=r"rnnjax makes the cell 'ranked' as rnnjax.CELLS\['ranked'\]\("
                                          r"num_hiddens\), which fails \(.*rank.*\): register a "
                                          r"functools.partial"):
        make_model(TINY.replace(cell="ranked"), 28)
    argv = ["--preset", "tiny", "--cell", "ranked", "--workdir", str(tmp_path / "run"), "--data", "unused"]
    assert timemachine.main(argv) == 1                  # refused before any work: nothing read or written
    err = capsys.readouterr().err
    assert err.startswith("error: rnnjax makes the cell 'ranked'") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    monkeypatch.setitem(model_lib.CELLS, "ranked", functools.partial(RankedCell, rank=2))
    assert make_model(TINY.replace(cell="ranked"), 28).rnn.cell.rank == 2


def test_a_cell_registered_made_rather_than_as_its_class_says_to_register_the_class(monkeypatch):
    """flax's CallCompactUnboundModuleError from inside make_model, before."""
    monkeypatch.setitem(model_lib.CELLS, "made", nn.GRUCell(16))
    message = (r"^rnnjax.CELLS\['made'\] is a GRUCell, made already; register a cell class, or a "
               r"functools.partial of one: rnnjax makes each layer's cell as "
               r"rnnjax.CELLS\['made'\]\(num_hiddens, \.\.\.\)\.$")
    with pytest.raises(ConfigError, match=message):
        make_model(TINY.replace(cell="made"), 28)
    monkeypatch.setitem(model_lib.CELLS, "made", "gru")             # a name: not callable (researcher)
    with pytest.raises(ConfigError, match=r"^rnnjax.CELLS\['made'\] is a str, not a cell class; register"):
        make_model(TINY.replace(cell="made"), 28)
    monkeypatch.setitem(model_lib.CELLS, "made", nn.GRUCell)
    assert isinstance(make_model(TINY.replace(cell="made"), 28).rnn.cell, nn.GRUCell)


class CarryOnlyCell(DenseCell):
    """Called with the input alone: not ``(carry, x)``."""

    def __call__(self, x):
        return x


class ShapeOnlyInitCell(DenseCell):
    """``initialize_carry`` without the key."""

    @nn.nowrap
    def initialize_carry(self, input_shape):
        return jnp.zeros((*input_shape[:-1], self.features))


class NoInitCarryCell(nn.RNNCellBase):
    """Written without ``initialize_carry``: ``nn.RNNCellBase``'s, which raises NotImplementedError."""
    features: int
    __call__, num_feature_axes = DenseCell.__call__, DenseCell.num_feature_axes


class OlderFlaxInitCell(DenseCell):
    """flax's older protocol: a static ``initialize_carry(rng, batch_dims, size)``."""

    @staticmethod
    def initialize_carry(rng, batch_dims, size):
        return jnp.zeros((*batch_dims, size))


@pytest.mark.parametrize("registered, lacking", [
    (nn.Dense, r"__call__\(carry, x\), initialize_carry\(rng, input_shape\), num_feature_axes"),
    (CarryOnlyCell, r"__call__\(carry, x\)"),
    (ShapeOnlyInitCell, r"initialize_carry\(rng, input_shape\)"),
    (NoInitCarryCell, r"initialize_carry\(rng, input_shape\)"),        # not the NotImplementedError of a step
    (OlderFlaxInitCell, r"initialize_carry\(rng, input_shape\)"),
])
def test_a_registered_module_that_is_not_a_cell_is_refused_naming_the_protocol(registered, lacking,
                                                                               small_data, tmp_path,
                                                                               monkeypatch, capsys):
    """Not flax's AttributeError about initialize_carry from deep inside the first init."""
    from experiments import timemachine
    monkeypatch.setitem(model_lib.CELLS, "x", registered)
    message = (rf"^rnnjax.CELLS\['x'\] makes a {registered.__name__}, which is not a recurrent cell \(it "
               rf"lacks {lacking}\): a cell is called as cell\(carry, x\) -> \(carry, y\) and has "
               r"initialize_carry\(rng, input_shape\) and num_feature_axes, as flax's nn.RNNCellBase\.$")
    with pytest.raises(ConfigError, match=message):
        make_model(TINY.replace(cell="x"), 28)
    with pytest.raises(ConfigError, match=message.removesuffix("$")):   # raised under eval_shape: JAX's note
        fit(TINY.replace(cell="x", epochs=1), small_data, tmp_path / "lib", devices=1, log=None)
    assert not (tmp_path / "lib").exists()
    argv = ["--preset", "tiny", "--cell", "x", "--workdir", str(tmp_path / "run"), "--data", "unused"]
    assert timemachine.main(argv) == 1                  # refused before any work: nothing read or written
    err = capsys.readouterr().err
    assert err.startswith("error: rnnjax.CELLS['x'] makes a") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


class WideCarryCell(DenseCell):
    """Returns a carry twice as wide as ``initialize_carry``'s."""

    @nn.compact
    def __call__(self, h, x):
        h = jnp.tanh(nn.Dense(2 * self.features)(x))
        return h, h


class PairOutputCell(DenseCell):
    """Returns its output as a pair, not one array."""

    @nn.compact
    def __call__(self, h, x):
        h = jnp.tanh(nn.Dense(self.features)(x) + h)
        return h, (h, h)


class DropoutCell(DenseCell):
    """Dropout inside the cell: it asks for a "dropout" key, which no cell is given."""

    @nn.compact
    def __call__(self, h, x):
        h = nn.Dropout(0.5, deterministic=False)(jnp.tanh(nn.Dense(self.features)(x) + h))
        return h, h


class NoisyCell(DenseCell):
    """Draws from a stream of its own: no cell is given one."""

    @nn.compact
    def __call__(self, h, x):
        h = jnp.tanh(nn.Dense(self.features)(x) + h + jax.random.normal(self.make_rng("noise"), h.shape))
        return h, h


class BatchlessCell(DenseCell):
    """Its carry forgets the batch: one row, whatever the batch (it broadcasts through the first step)."""

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        return jnp.zeros((1, self.features))


class MeanOutputCell(DenseCell):
    """Its output averages over the batch."""

    @nn.compact
    def __call__(self, h, x):
        h = jnp.tanh(nn.Dense(self.features)(x) + h)
        return h, h.mean(0, keepdims=True)


class IntegerCell(DenseCell):
    """A carry and output of whole numbers: no gradient would reach its weights."""

    @nn.compact
    def __call__(self, h, x):
        h = jnp.round(jnp.tanh(nn.Dense(self.features)(x) + h)).astype(jnp.int32)
        return h, h

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        return jnp.zeros((*input_shape[:-1], self.features), jnp.int32)


class IntegerOutputCell(DenseCell):
    """Its output rounded to whole numbers: no gradient would reach its weights."""

    @nn.compact
    def __call__(self, h, x):
        h = jnp.tanh(nn.Dense(self.features)(x) + h)
        return h, jnp.round(h).astype(jnp.int32)


class CountingCell(DenseCell):
    """Its carry holds a step counter (a scalar) and a per-example reset mask beside its state."""

    @nn.compact
    def __call__(self, carry, x):
        h, t, reset = carry
        h = jnp.tanh(nn.Dense(self.features)(x) + nn.Dense(self.features, use_bias=False)(h))
        return (jnp.where(reset[:, None], 0.0, h), t + 1, reset), h

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        return (jnp.zeros((*input_shape[:-1], self.features)), jnp.zeros((), jnp.int32),
                jnp.zeros(input_shape[:-1], bool))


class ComplexStateCell(DenseCell):
    """A complex diagonal recurrence with a real output, as a linear recurrent unit's."""

    @nn.compact
    def __call__(self, h, x):
        decay = jnp.exp(-0.1 + 1j * self.param("theta", nn.initializers.uniform(6.28), (self.features,)))
        h = decay * h + nn.Dense(self.features)(x)
        return h, jnp.tanh(nn.Dense(self.features)(jnp.concatenate([h.real, h.imag], -1)))

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        return jnp.zeros((*input_shape[:-1], self.features), jnp.complex64)


@pytest.mark.slow
def test_a_carry_with_a_counter_and_a_mask_or_a_complex_state_trains(small_data, tmp_path, monkeypatch):
    """What the step check must not refuse (it did, briefly): only y must be real, and the state batch
    first."""
    for name, cell in (("counting", CountingCell), ("complex", ComplexStateCell)):
        monkeypatch.setitem(model_lib.CELLS, name, cell)
        result = fit(TINY.replace(cell=name, num_hiddens=16, epochs=1), small_data, tmp_path / name,
                     devices=1, log=None)
        assert 1 < result.history[-1]["train_ppl"] < 2 * len(small_data.vocab)


class OneArrayCell(DenseCell):
    """Returns the new state alone, not ``(carry, y)``."""

    @nn.compact
    def __call__(self, h, x):
        return jnp.tanh(nn.Dense(self.features)(x) + h)


class WideInitCell(DenseCell):
    """``initialize_carry`` one wider than the cell adds to it: its step fails in its own code."""

    @nn.compact
    def __call__(self, h, x):
        h = jnp.tanh(nn.Dense(self.features)(x) + h)
        return h, h

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        return jnp.zeros((*input_shape[:-1], self.features + 1))


@pytest.mark.parametrize("registered, problem", [
    (WideCarryCell, r"returns a carry of float32\[2,32\] from initialize_carry's float32\[2,16\]: the new "
                    r"carry must have the shapes of the one it replaces"),
    (PairOutputCell, r"returns y as \(float32\[2,16\], float32\[2,16\]\) for 2 inputs, not one \(batch, "
                     r"features\) array"),
    (BatchlessCell, r"starts from initialize_carry's float32\[1,16\] for a batch of 2 inputs: its state "
                    r"must have the batch first"),
    (MeanOutputCell, r"returns y as float32\[1,16\] for 2 inputs, not one \(batch, features\) array"),
    (IntegerCell, r"starts from initialize_carry's int32\[2,16\]: a cell's state must be floating point "
                  r"\(or complex\); counters and masks may be carried beside it"),
    (IntegerOutputCell, r"returns y as int32\[2,16\]: the output layer takes real floating-point features"),
    (OneArrayCell, r"returns float32\[2,16\], not a pair \(carry, y\)"),
    (WideInitCell, r"fails on a batch of 2 inputs and the carry initialize_carry gives for it \(TypeError: "
                   r"add got incompatible shapes for broadcasting: \(2, 16\), \(2, 17\)\)"),
    (DropoutCell, r"asks for a 'dropout' random key, which a cell is not given: rnnjax's dropout acts "
                  r"between layers \(dropout with num_layers=2 or more\)"),
    (NoisyCell, r"asks for a 'noise' random key, which a cell is not given"),
])
def test_a_cell_whose_step_breaks_the_protocol_is_refused_in_one_sentence_before_any_work(
        registered, problem, tmp_path, monkeypatch, capsys, real_text_path):
    """Not JAX's error about scan's carry types, a tuple's missing shape or flax's about rngs, mid-trace. On
    the command line, once the text is read (a step may follow the vocabulary's size), before any work."""
    from experiments import timemachine
    monkeypatch.setitem(model_lib.CELLS, "x", registered)
    message = rf"^rnnjax.CELLS\['x'\] makes a {registered.__name__} whose step {problem}\.$"
    for layers, dropout in ((1, 0.0), (2, 0.5)):
        with pytest.raises(ConfigError, match=message):
            make_model(TINY.replace(cell="x", num_hiddens=16, num_layers=layers, dropout=dropout), 28)
    argv = ["--preset", "tiny", "--cell", "x", "--num-hiddens", "16", "--workdir", str(tmp_path / "run"),
            "--data", real_text_path]
    assert timemachine.main(argv) == 1                  # refused before any work: nothing written
    err = capsys.readouterr().err
    assert err.startswith(f"error: rnnjax.CELLS['x'] makes a {registered.__name__} whose step") and \
        len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


class ScaledCell(DenseCell):
    """A field beside the width, set by the ``functools.partial`` registered: the same parameters at any
    value, another model."""
    scale: float = 1.0

    @nn.compact
    def __call__(self, h, x):
        h = jnp.tanh(self.scale * nn.Dense(self.features)(x) + nn.Dense(self.features, use_bias=False)(h))
        return h, h


@pytest.mark.slow
def test_a_run_restores_and_resumes_only_with_the_cell_it_was_trained_with_a_partial_s_arguments_too(
        small_data, tmp_path, monkeypatch):
    """The run saves its cell's name; what was registered under it is kept beside, and checked."""
    import functools
    monkeypatch.setitem(model_lib.CELLS, "scaled", functools.partial(ScaledCell, scale=0.5))
    config = TINY.replace(cell="scaled", epochs=1)
    fit(config, small_data, tmp_path, devices=1, log=None)
    text = checkpoint.restore(tmp_path).predict("the", 10)
    for other, said in ((functools.partial(ScaledCell, scale=3.0), "ScaledCell(scale=3.0)"),
                        (ScaledCell, "ScaledCell")):
        monkeypatch.setitem(model_lib.CELLS, "scaled", other)
        mismatch = (rf"was trained with rnnjax.CELLS\['scaled'\] = ScaledCell\(scale=0.5\), which is "
                    rf"{re.escape(said)} here: register the one it was trained with; a new run of the cell "
                    r"registered now needs a workdir of its own\.$")
        with pytest.raises(checkpoint.CellMismatch, match=mismatch):
            checkpoint.restore(tmp_path)
        with pytest.raises(checkpoint.CellMismatch, match=mismatch):
            fit(config.replace(epochs=2), small_data, tmp_path, devices=1, log=None)
    monkeypatch.setitem(model_lib.CELLS, "scaled", functools.partial(ScaledCell, scale=0.5))
    assert checkpoint.restore(tmp_path).predict("the", 10) == text
    assert len(fit(config.replace(epochs=2), small_data, tmp_path, devices=1, log=None).history) == 2


class EmbeddingCell(DenseCell):
    """Declares ``accepts_one_hot``: it gets ``OneHot`` ids, and reads them as a table's rows."""
    accepts_one_hot = True

    @nn.compact
    def __call__(self, h, x):
        E = self.param("E", nn.initializers.normal(0.5), (x.depth, self.features))
        h = jnp.tanh(E[x.ids] + nn.Dense(self.features, use_bias=False)(h))
        return h, h


class BrokenCell(DenseCell):
    """Fails in its own code: one sentence with its error, which it is raised from (its traceback)."""

    @nn.compact
    def __call__(self, h, x):
        raise RuntimeError("my bug")


def test_the_step_check_feeds_a_cell_as_the_model_does_and_says_its_errors_raised_from_them(small_data,
                                                                                            monkeypatch):
    monkeypatch.setitem(model_lib.CELLS, "emb", EmbeddingCell)
    model = make_model(TINY.replace(cell="emb", kernel="plain"), len(small_data.vocab))
    batch = next(small_data.train_batches(0))
    params = model.init(jax.random.key(0), batch.X)
    assert model.apply(params, batch.X).shape == (*batch.X.shape, len(small_data.vocab))
    monkeypatch.setitem(model_lib.CELLS, "broken", BrokenCell)
    said = (r"makes a BrokenCell whose step fails on a batch of 2 inputs and the carry initialize_carry "
            r"gives for it \(RuntimeError: my bug\)\.$")
    with pytest.raises(ConfigError, match=said) as raised:
        make_model(TINY.replace(cell="broken"), len(small_data.vocab))
    assert isinstance(raised.value.__cause__, RuntimeError) and str(raised.value.__cause__) == "my bug"


class PairedCell(DenseCell):
    """Steps on a batch of 2 only: the step check's batch, not the init's of 1."""

    @nn.compact
    def __call__(self, h, x):
        h = jnp.tanh(nn.Dense(self.features)(x.reshape(2, -1)) + nn.Dense(self.features, use_bias=False)(h))
        return h, h


def test_a_cell_whose_init_fails_where_its_step_check_passed_is_one_sentence(
        small_data, tmp_path, monkeypatch):
    """The model's init, on a batch of 1, was not wrapped: JAX's or the cell's error came out raw."""
    monkeypatch.setitem(model_lib.CELLS, "paired", PairedCell)
    said = (r"^rnnjax.CELLS\['paired'\] makes a model whose init \(a batch of 1 sequence, num_layers=1\) "
            r"fails \(\w+: .*\S\)\.$")
    with pytest.raises(ConfigError, match=said):
        fit(TINY.replace(cell="paired"), small_data, tmp_path / "w", devices=1, log=None)
    assert not (tmp_path / "w").exists()
