import warnings

import flax.linen as nn
import jax.numpy as jnp
import pytest

from conftest import TINY as SMALL, DenseCell, small_text
from rnnjax import arguments, memory, model as model_lib
from rnnjax.config import ConfigError
from rnnjax.data import TimeMachine
from rnnjax.start import plan
from rnnjax.train import fit


@pytest.mark.parametrize("config, data, workdir, message", [
    (SMALL, "data", None, r"^workdir must be a path \(str or os.PathLike\), got None\.$"),
    (SMALL, "data", 5, r"^workdir must be a path \(str or os.PathLike\), got an int\.$"),
    (SMALL, "data", b"w", r"^workdir must be a path \(str or os.PathLike\), got a bytes\.$"),
    (SMALL.to_json(), "data", "w",
     r"^config must be an rnnjax.Config \(Config.from_json reads one from JSON\), got a dict\.$"),
    (None, "data", "w", r"^config must be an rnnjax.Config, got None\.$"),
    (SMALL, None, "w",
     r"^data must be an rnnjax.data.WindowedText \(rnnjax.corpus.load\(config\) makes one\), got None\.$"),
    (SMALL, "text", "w", r"^data must be an rnnjax.data.WindowedText .*, got a str\.$"),
])
def test_arguments_of_the_wrong_type_are_one_sentence_before_any_work(config, data, workdir, message,
                                                                      small_data, tmp_path):
    data = small_data if data == "data" else data
    with pytest.raises(TypeError, match=message):
        arguments.check_types(config, data, workdir)
    with pytest.raises(TypeError, match=message):      # rnnjax.plan, and planned, check them too
        plan(config, data, workdir)
    arguments.check_types(SMALL, small_data, tmp_path)
    arguments.check_types(SMALL, small_data, str(tmp_path))


def test_fit_under_disable_jit_is_one_sentence_before_any_work(small_data, tmp_path):
    """JAX's sentence ("Disable jit is not supported in the AOT path") came once the run had begun."""
    import jax
    said = r"^fit compiles its steps ahead of time, which jax\.disable_jit \(\$JAX_DISABLE_JIT\) turns off"
    with jax.disable_jit(), pytest.raises(ValueError, match=said):
        fit(SMALL, small_data, tmp_path / "w", devices=1, log=None)
    assert not (tmp_path / "w").exists()


class HalvesCell(DenseCell):
    """Splits its input in halves: no step on one input feature (a vocabulary of 1), as the checks before
    the text is read gave it."""

    @nn.compact
    def __call__(self, h, x):
        a, b = jnp.split(x, 2, axis=-1)
        h = jnp.tanh(nn.Dense(self.features)(a) * nn.Dense(self.features)(b)
                     + nn.Dense(self.features, use_bias=False)(h))
        return h, h


def test_a_deep_stack_is_warned_of_before_its_model_is_traced(tmp_path, monkeypatch):
    """``--num-layers 100000`` ran silent for minutes, tracing the model, before its plan said so."""
    deep = SMALL.replace(num_layers=memory.LONG_COMPILE_LAYERS + 1)

    def traced(*args):
        raise RuntimeError("traced")
    monkeypatch.setattr(arguments, "abstract_train_state", traced)
    said = rf"^num_layers={deep.num_layers}: every layer is traced and compiled into the training step on its"
    with pytest.warns(UserWarning, match=said):
        with pytest.raises(RuntimeError, match="traced"):
            arguments.check_arguments(deep, tmp_path / "w")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="traced"):
            arguments.check_arguments(deep.replace(num_layers=memory.LONG_COMPILE_LAYERS), tmp_path / "w")


def test_a_cell_that_steps_on_some_input_widths_only_is_checked_on_the_text_s_vocabulary(
        tmp_path, monkeypatch):
    """It was refused before the text was read, whatever its vocabulary (checked on one of 1); now that check
    leaves it to the text's, once read: refused there where the text's is odd."""
    monkeypatch.setitem(model_lib.CELLS, "halves", HalvesCell)
    config = SMALL.replace(cell="halves")
    arguments.check_arguments(config, tmp_path / "w", devices=1)       # before the text is read

    def data(text):
        return TimeMachine(SMALL.batch_size, SMALL.num_steps, SMALL.num_train, SMALL.num_val, text=text)
    even, odd = data(small_text(5000)), data(small_text(5000) + " q")
    assert (len(even.vocab) % 2, len(odd.vocab) % 2) == (0, 1)
    assert plan(config, even, tmp_path / "w", devices=1).step is None
    said = (r"^rnnjax.CELLS\['halves'\] makes a HalvesCell whose step fails on a batch of 2 inputs .*"
            r"\(ValueError: array split does not result in an equal division")
    with pytest.raises(ConfigError, match=said):
        plan(config, odd, tmp_path / "w", devices=1)
    assert not (tmp_path / "w").exists()


class DropFirstCell(DenseCell):
    """A weight of as many rows as the vocabulary less one: none on a vocabulary of 1."""

    @nn.compact
    def __call__(self, h, x):
        W = self.param("W", nn.initializers.normal(0.1), (x.shape[-1] - 1, self.features))
        h = jnp.tanh(x[..., 1:] @ W + nn.Dense(self.features, use_bias=False)(h))
        return h, h


def test_a_parameter_sized_by_the_vocabulary_is_not_refused_before_the_text_is_read(tmp_path, monkeypatch):
    """Made on a vocabulary of 1, its weight had no elements, which a checkpoint cannot save: refused, though
    it has rows on any text."""
    monkeypatch.setitem(model_lib.CELLS, "dropfirst", DropFirstCell)
    config = SMALL.replace(cell="dropfirst")
    arguments.check_arguments(config, tmp_path / "w", devices=1)
    data = TimeMachine(SMALL.batch_size, SMALL.num_steps, SMALL.num_train, SMALL.num_val,
                       text=small_text(5000))
    assert plan(config, data, tmp_path / "w", devices=1).step is None


def test_a_cell_checked_on_the_text_on_the_command_line_says_what_is_too_large(tmp_path, monkeypatch, capsys):
    """Its memory estimate on a vocabulary of 1, to tell the vocabulary's share from the rest, raised the
    cell's error on that width in place of the estimate's sentence."""
    from experiments import timemachine
    from rnnjax import corpus, source
    monkeypatch.setitem(model_lib.CELLS, "halves", HalvesCell)
    monkeypatch.setenv(source.ENV_CACHE, str(tmp_path / "cache"))
    text = tmp_path / "book.txt"
    text.write_text(small_text(5000))
    config = SMALL.replace(**corpus.TEXT_DEFAULTS)
    if len(corpus.Corpus.from_config(text, config, cache=False).vocab) % 2:     # a width the cell steps on
        text.write_text(small_text(5000) + "\u00e9")
    argv = ["--preset", "tiny", "--cell", "halves", "--text", str(text), "--num-hiddens", "300000",
            "--workdir", str(tmp_path / "w")]
    assert timemachine.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --num-hiddens 300000 x --num-layers 1 at --batch-size 16 x --num-steps 8 "
                          "needs about ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_a_resumed_run_of_a_cell_checked_on_the_text_names_its_saved_settings(tmp_path, monkeypatch,
                                                                              capsys):
    """Checks left to the text's vocabulary ran inside fit, without the command's words on where a setting
    read from the workdir comes from."""
    import optax

    from experiments import timemachine
    from rnnjax import OPTIMIZERS, optimizers, source
    monkeypatch.setitem(model_lib.CELLS, "halves", HalvesCell)
    monkeypatch.setitem(OPTIMIZERS, "mine", optimizers.clipped(optax.sgd))
    monkeypatch.setenv(source.ENV_CACHE, str(tmp_path / "cache"))
    text = tmp_path / "book.txt"
    odd = len(set(small_text(5000))) % 2 == 0               # with <unk>: one more
    text.write_text(small_text(5000) + "\u00e9" * odd)      # a vocabulary the cell halves
    workdir, given = str(tmp_path / "w"), ["--text", str(text), "--no-progress"]
    argv = ["--preset", "tiny", "--cell", "halves", "--optimizer", "mine", "--epochs", "1"]
    assert timemachine.main([*argv, *given, "--workdir", workdir]) == 0
    monkeypatch.setitem(OPTIMIZERS, "mine", lambda config, per_run=False: optax.chain(
        optax.add_noise(0.01, 0.55, 0), optimizers.clipped(optax.sgd)(config, per_run)))
    capsys.readouterr()
    assert timemachine.main([*given, "--workdir", workdir, "--epochs", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: resuming the run in {workdir} (its saved settings, the flags given "
                          "applied): The state of --optimizer mine holds a random key")

    class NarrowCell(HalvesCell):
        def __call__(self, h, x):
            if x.shape[-1] > 1:
                raise ValueError("takes one input feature only")
            return super().__call__(h, x)
    monkeypatch.setitem(model_lib.CELLS, "halves", NarrowCell)     # fails on the text's width, as it is read
    assert timemachine.main([*given, "--workdir", workdir, "--epochs", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: resuming the run in {workdir} (its saved settings, the flags given "
                          "applied): rnnjax.CELLS['halves'] makes a NarrowCell")


def test_a_resumed_run_refused_on_its_data_names_its_saved_settings(tmp_path, capsys):
    """The checks made once the text is read (here its steps per epoch, of the saved settings) say where the
    settings come from, as the checks before it do."""
    from experiments import timemachine
    text = tmp_path / "book.txt"
    text.write_text(small_text(5000))
    workdir, given = str(tmp_path / "w"), ["--text", str(text), "--no-progress"]
    assert timemachine.main(["--preset", "tiny", "--epochs", "1", *given, "--workdir", workdir]) == 0
    capsys.readouterr()
    assert timemachine.main([*given, "--workdir", workdir, "--epochs", str(2 ** 31)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: resuming the run in {workdir} (its saved settings, the flags given "
                          f"applied): --epochs {2 ** 31} of ") and len(err.strip().splitlines()) == 1, err
