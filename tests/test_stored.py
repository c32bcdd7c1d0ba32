"""What a workdir holds, read back where the run's own cell is not registered: not damage, a clear error."""

import logging
import shutil

import flax.linen as nn
import pytest

from conftest import TINY, DenseCell, small_text
from experiments import timemachine
from rnnjax import checkpoint, corpus, model as model_lib, saved, stored
from rnnjax.config import Config
from rnnjax.data import TimeMachine
from rnnjax.state import abstract_train_state
from rnnjax.train import fit
from rnnjax.vocab import Vocab

# What to register: as the checkpoint's meta says it was (config.json does not say).
UNREGISTERED = (r"trained with cell 'mine', which is not registered here: set rnnjax\.CELLS\['mine'\] = "
                r"(DenseCell|<the cell class>) before restoring")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A run of a cell of one's own (registered as 'mine' while it trains), two checkpoints with a validation
    perplexity; unregistered again for the tests, as in a new interpreter."""
    data = TimeMachine(TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val, text=small_text(5000))
    path = tmp_path_factory.mktemp("mine") / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setitem(model_lib.CELLS, "mine", DenseCell)
        fit(TINY.replace(cell="mine", epochs=2), data, path, devices=1, log=None, checkpoint_every=1)
    assert len(checkpoint.steps(path)) == 2 and "mine" not in model_lib.CELLS
    return path


@pytest.mark.parametrize("kwargs", [{}, {"best": True}, {"fallback": True}, {"step": 13}])
def test_restoring_a_run_of_an_unregistered_cell_says_to_register_it(workdir, kwargs):
    with pytest.raises(stored.UnknownCell, match=UNREGISTERED.replace("(DenseCell|<the cell class>)",
                                                                      "DenseCell")) as e:
        checkpoint.restore(workdir, **kwargs)
    assert not isinstance(e.value, checkpoint.DamagedCheckpoint) and "damaged" not in str(e.value)
    assert not (workdir / checkpoint.DAMAGED).exists()


def test_a_run_of_another_cell_planned_there_is_told_of_another_workdir(workdir):
    """A researcher training a GRU into a workdir mistyped (a run of one's own cell) was told only to register
    that cell; nothing moves."""
    data = TimeMachine(TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val, text=small_text(5000))
    before = sorted(p.name for p in workdir.iterdir())
    said = UNREGISTERED.replace("(DenseCell|<the cell class>)", "DenseCell") + (
        r".* The run asked for is of cell 'gru': a new run trains in another workdir\.$")
    with pytest.raises(stored.UnknownCell, match=said):
        fit(TINY.replace(cell="gru"), data, workdir, devices=1, log=None)
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_its_settings_say_so_from_config_json_or_else_the_checkpoint(workdir, tmp_path):
    with pytest.raises(stored.UnknownCell, match=UNREGISTERED):
        saved.saved_runs(workdir)
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    (copy / "config.json").unlink()
    with pytest.raises(ValueError, match=UNREGISTERED):       # what the command line's checks catch
        saved.saved_runs(copy)


@pytest.mark.parametrize("argv", [["--epochs", "3"], ["--predict", "the"], ["--predict", "the", "--best"],
                                  ["--cell", "gru"], ["--preset", "lstm"]])
def test_the_command_line_says_so_and_moves_nothing(workdir, argv, capsys):
    assert timemachine.main(["--workdir", str(workdir), *argv]) == 1
    err = capsys.readouterr().err
    assert "which is not registered here" in err and "damaged" not in err and "aside" not in err
    assert "in a script that then calls experiments.timemachine.main()" in err
    asked = {"--cell": "gru", "--preset": "lstm"}.get(argv[0])        # a cell typed: a workdir mistyped?
    told = f"The run asked for is of cell {asked!r}: a new run trains in another workdir."
    assert (told in err) == bool(asked)
    assert len(err.strip().splitlines()) == 1
    assert not (workdir / checkpoint.DAMAGED).exists() and len(checkpoint.steps(workdir)) == 2


def test_in_a_script_that_registers_it_the_command_line_resumes_it(workdir, tmp_path, monkeypatch, capsys,
                                                                   caplog):
    """As the README's script does: the cell registered, then ``timemachine.main()`` takes every flag."""
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    monkeypatch.setitem(model_lib.CELLS, "mine", DenseCell)
    monkeypatch.setattr(corpus, "load", lambda config, **kw: TimeMachine(
        TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val, text=small_text(5000)))
    text = tmp_path / "text.txt"
    text.write_text(small_text(5000))              # the run's text, which its vocabulary names by SHA-1
    assert timemachine.main(["--workdir", str(copy), "--epochs", "3", "--text", str(text)]) == 0
    assert checkpoint.latest_step(copy) == 39
    capsys.readouterr()
    assert timemachine.main(["--workdir", str(copy), "--predict", "the", "--num-preds", "4"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1].startswith("the")
    assert "Metadata file does not exist" not in err + caplog.text     # orbax's, reading the cell's shapes


def test_registered_again_it_restores(workdir, monkeypatch):
    monkeypatch.setitem(model_lib.CELLS, "mine", DenseCell)
    restored = checkpoint.restore(workdir, best=True)
    assert restored.config.cell == "mine" and restored.step in checkpoint.steps(workdir)


def test_another_cell_registered_under_the_run_s_name_is_told_from_damage(workdir, monkeypatch):
    """Its parameters are not those the checkpoint saved, by path: what ``check_fits`` says before orbax
    reads an array (orbax itself raises 'Structure mismatch', which a restore calls damage)."""
    step = checkpoint.latest_step(workdir)
    monkeypatch.setitem(model_lib.CELLS, "mine", DenseCell)
    meta = checkpoint.read_meta(workdir, step)
    config, vocab = Config.from_json(meta["config"]), Vocab.from_json(meta["vocab"])
    stored.check_fits(meta, abstract_train_state(config, len(vocab)), workdir, step)          # the same cell
    monkeypatch.setitem(model_lib.CELLS, "mine", nn.SimpleCell)
    says = (r"holds other parameters than the cell registered here as 'mine' \(SimpleCell\) makes \(saved, "
            r"not made here: \.params\['rnn'\]\['cell'\]\['Dense_0'\]\['bias'\], .* and \d+ more; made here, "
            r"not saved: .*\['h'\]")
    with pytest.raises(stored.CellMismatch, match=says):
        stored.check_fits(meta, abstract_train_state(config, len(vocab)), workdir, step)
    with pytest.raises(stored.CellMismatch, match=says):            # as a restore and a resume meet it
        checkpoint.restore(workdir, fallback=True)
    data = TimeMachine(TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val, text=small_text(5000))
    with pytest.raises(stored.CellMismatch, match=says):
        fit(TINY.replace(cell="mine", epochs=3), data, workdir, devices=1, log=None)
    assert not (workdir / checkpoint.DAMAGED).exists() and len(checkpoint.steps(workdir)) == 2


def test_a_step_folder_removed_as_the_steps_are_listed_is_not_called_foreign(workdir, monkeypatch):
    """The run writing a workdir removes old checkpoints: one listed a moment ago is gone, not foreign."""
    from pathlib import Path
    listed = Path.iterdir

    def with_a_removed_one(self):
        yield from listed(self)
        if self.name == checkpoint.SUBDIR:
            yield self / "806"                             # listed, then removed
    monkeypatch.setattr(Path, "iterdir", with_a_removed_one)
    assert sorted(stored.steps(workdir)) == [13, 26]
    (workdir / checkpoint.SUBDIR / "806").write_text("")   # one that is there and is no folder: foreign
    try:
        with pytest.raises(checkpoint.CheckpointError, match="806 is not a checkpoint rnnjax wrote"):
            stored.steps(workdir)
    finally:
        (workdir / checkpoint.SUBDIR / "806").unlink()


class WideCell(DenseCell):
    """DenseCell's parameter names, a first layer twice as wide."""

    @nn.compact
    def __call__(self, h, x):
        import jax.numpy as jnp
        wide = nn.Dense(2 * self.features)(x)[..., :self.features]
        h = jnp.tanh(wide + nn.Dense(self.features, use_bias=False)(h))
        return h, h


def test_another_cell_with_the_same_names_and_other_shapes_is_told_from_damage(workdir, monkeypatch):
    monkeypatch.setitem(model_lib.CELLS, "mine", WideCell)
    says = (r"holds parameters of other shapes or dtypes than the cell registered here as 'mine' "
            r"\(WideCell\) makes \(\['rnn'\]\['cell'\]\['Dense_0'\]\['bias'\]: float32\[16\] saved, "
            r"float32\[32\] made\): set rnnjax.CELLS\['mine'\]")
    with pytest.raises(stored.CellMismatch, match=says):
        checkpoint.restore(workdir, fallback=True)
    data = TimeMachine(TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val, text=small_text(5000))
    with pytest.raises(stored.CellMismatch, match=says):
        fit(TINY.replace(cell="mine", epochs=3), data, workdir, devices=1, log=None)
    assert not (workdir / checkpoint.DAMAGED).exists() and len(checkpoint.steps(workdir)) == 2


class HalfCell(DenseCell):
    """DenseCell's parameter names and shapes, its first layer's parameters in float16."""

    @nn.compact
    def __call__(self, h, x):
        import jax.numpy as jnp
        h = jnp.tanh(nn.Dense(self.features, param_dtype=jnp.float16)(x)
                     + nn.Dense(self.features, use_bias=False)(h))
        return h, h


def test_another_cell_with_the_same_shapes_and_other_dtypes_is_told_from_damage(workdir, monkeypatch):
    monkeypatch.setitem(model_lib.CELLS, "mine", HalfCell)
    with pytest.raises(stored.CellMismatch, match=r"\['Dense_0'\]\['bias'\]: float32\[16\] saved, "
                                                  r"float16\[16\] made"):
        checkpoint.restore(workdir)
    assert not (workdir / checkpoint.DAMAGED).exists()


def test_a_run_of_a_cell_swapped_in_for_one_of_rnnjax_s_is_told_from_damage(tmp_path, monkeypatch, capsys):
    """Trained with flax's GRUCell registered as 'gru', read where 'gru' is rnnjax's own again: its meta
    names parameters rnnjax's GRU does not make, which is no damage (nothing is set aside)."""
    data = TimeMachine(TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val, text=small_text(5000))
    with monkeypatch.context() as m:
        m.setitem(model_lib.CELLS, "gru", nn.GRUCell)
        fit(TINY.replace(cell="gru", epochs=1), data, tmp_path / "run", devices=1, log=None)
    for kwargs in ({}, {"fallback": True}, {"best": True}):
        says = (r"registered here as 'gru' \(rnnjax's own\) makes \(saved, not made here: \.params\['rnn'\]"
                r"\['cell'\].*: set rnnjax.CELLS\['gru'\] to the cell class the run was trained with "
                r"\(GRUCell\); a new run of the cell registered now needs a workdir of its own\.$")
        with pytest.raises(stored.CellMismatch, match=says):
            checkpoint.restore(tmp_path / "run", **kwargs)
    monkeypatch.setattr(corpus, "load", lambda config, **kw: data)
    (tmp_path / "text.txt").write_text(small_text(5000))
    for argv in (["--predict", "the"], ["--epochs", "2", "--text", str(tmp_path / "text.txt")]):
        assert timemachine.main(["--workdir", str(tmp_path / "run"), *argv]) == 1
        err = capsys.readouterr().err
        assert "rnnjax's own" in err and "damaged" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / checkpoint.DAMAGED).exists()
    assert len(checkpoint.steps(tmp_path / "run")) == 1


def test_a_step_metadata_nested_thousands_deep_or_with_a_key_orbax_does_not_know_is_passed_over(tmp_path,
                                                                                                caplog):
    """The first was a RecursionError traceback at every read; the second an absl warning at every read."""
    (tmp_path / "_CHECKPOINT_METADATA").write_text("[" * 100000 + "]" * 100000)
    assert stored._step_metadata(tmp_path) is None
    (tmp_path / "_CHECKPOINT_METADATA").write_text('{"future_field": {}}')
    with caplog.at_level(logging.INFO):
        assert stored._step_metadata(tmp_path) is None
    assert "future_field" not in caplog.text
    (tmp_path / "_CHECKPOINT_METADATA").write_text("[]")
    assert stored._step_metadata(tmp_path).startswith("has a _CHECKPOINT_METADATA that orbax cannot take")


def test_a_checkpoints_folder_that_cannot_be_listed_is_one_sentence_where_read(tmp_path, monkeypatch):
    """A resume met Python's PermissionError; restore had a check of its own."""
    from pathlib import Path
    data = TimeMachine(TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val, text=small_text(5000))
    fit(TINY.replace(epochs=1), data, tmp_path, devices=1, log=None)
    listed = Path.iterdir

    def denied(self):
        if self.name == checkpoint.SUBDIR:
            raise PermissionError(13, "Permission denied", str(self))
        return listed(self)
    monkeypatch.setattr(Path, "iterdir", denied)
    said = rf"^The workdir {tmp_path} cannot be read \({tmp_path / checkpoint.SUBDIR}: Permission denied\)\.$"
    for read in (stored.steps, checkpoint.restore,
                 lambda w: fit(TINY.replace(epochs=2), data, w, devices=1, log=None)):
        with pytest.raises(stored.CheckpointError, match=said):
            read(tmp_path)


def test_an_error_of_orbax_s_is_said_in_its_type_and_first_line_cut_between_words():
    """orbax's errors run to dozens of lines; cut mid-word, "Requested byte ra..." (PyTorch user)."""
    from rnnjax.stored import reason
    long = ("OUT_OF_RANGE: Error reading \"params.output_layer.kernel/0.0\" in OCDBT database at local "
            "file \"/w/checkpoints/26/state/\": Requested byte range [0, 4096) is not valid for value of "
            "size 12\nsecond line")
    said = reason(ValueError(long))
    assert said.startswith("ValueError: OUT_OF_RANGE: Error reading") and said.endswith(" is not...")
    assert reason(KeyError("x")) == "KeyError: 'x'"
    assert reason(ValueError("a" * 200)) == f"ValueError: {'a' * 160}..."        # no space to cut at
