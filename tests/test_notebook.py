"""notebooks/timemachine.ipynb runs top to bottom (with a short training run)."""

import ast
import json
import os
from pathlib import Path

import pytest

# The notebook extras ('.[dev]'); a machine without them (the GPU image) skips this test.
nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "timemachine.ipynb"


@pytest.mark.slow
def test_notebook_executes(real_text_path, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNJAX_NOTEBOOK_EPOCHS", "3")
    monkeypatch.delenv("RNNJAX_CHECKPOINT", raising=False)
    monkeypatch.delenv("RNNJAX_RUN", raising=False)
    # The kernel keeps the suite's XLA flags (conftest): it compiles faster, and no figure of its is read.
    # The kernel runs in another folder; a relative path is taken from where the user started it.
    monkeypatch.setenv("RNNJAX_TIMEMACHINE", os.path.relpath(real_text_path))
    monkeypatch.setenv("PWD", os.getcwd())
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "step 30 of" in text and "'it has" in text and "closest to" in text
    assert "temperature 1.5: 'it has" in text and "4 seeds: final validation perplexity mean" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4
    assert (tmp_path / "runs" / "notebook" / "metrics.jsonl").exists()     # trained beside the notebook


def explore(tmp_path, monkeypatch, checkpoint: str, run: str | None = None, first_cell=None) -> str:
    """The notebook's printed text, run on the workdir ``tmp_path / checkpoint`` (``RNNJAX_RUN=run``), given
    relative to where the user started it, its kernel in a folder of its own; ``first_cell`` is added at the
    top."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv("RNNJAX_CHECKPOINT", checkpoint)
    if run is None:
        monkeypatch.delenv("RNNJAX_RUN", raising=False)
    else:
        monkeypatch.setenv("RNNJAX_RUN", run)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells[:0] = [first_cell] if first_cell else []
    (tmp_path / "kernel").mkdir()
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path / "kernel")}}).execute()
    return "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for o in cell.get("outputs", []) if o.output_type == "stream")


@pytest.mark.slow
def test_notebook_explores_a_deep_run_of_a_flax_cell(real_text_path, tmp_path, monkeypatch):
    """A checkpoint given by a relative RNNJAX_CHECKPOINT, of another depth and of flax's cell, registered in
    a cell added at the top as the notebook says: nothing is trained; the weights are found by shape
    (flax's kernels, not rnnjax's names), all gates side by side."""
    import flax.linen as nn

    from rnnjax import CELLS, TimeMachine, fit
    from rnnjax.config import PRESETS
    monkeypatch.setitem(CELLS, "mgu", nn.MGUCell)
    config = PRESETS["tiny"].replace(cell="mgu", num_layers=2, epochs=2)
    fit(config, TimeMachine(config.batch_size, config.num_steps, config.num_train, config.num_val,
                            path=real_text_path), tmp_path / "mgu", devices=1, log=None)
    log = tmp_path / "mgu" / "metrics.jsonl"           # as a run's whose validation overflowed: null
    log.write_text(log.read_text().replace('"val_ppl": ', '"val_ppl": null, "was": '))
    register = nbformat.v4.new_code_cell('import flax.linen, rnnjax\n'
                                         'rnnjax.CELLS["mgu"] = flax.linen.MGUCell')
    text = explore(tmp_path, monkeypatch, "mgu", first_cell=register)
    assert "step 26 of" in text and "cell='mgu'" in text and "num_layers=2" in text
    assert "16 hidden units of the mgu cell" in text and "closest to" in text and ", val not finite" in text
    assert "temperature 0.5" in text and "only explored" in text
    assert not (tmp_path / "kernel" / "runs").exists()                   # nothing trained
    assert "spectral radius of" not in text                 # two recurrent kernels side by side: not square
    assert "W_hh here is 16 x 32, not 16 x 16: no one spectral radius" in text


@pytest.mark.slow
def test_notebook_explores_one_of_runs_of_words_trained_together(real_text_path, tmp_path, monkeypatch):
    """RNNJAX_RUN picks one run of a --seeds workdir (restore refuses to guess): its config, its records. Its
    runs are of words (``--text ... --token word``): prompts, the sentence and the probed tokens are words its
    vocabulary has, not the Time Machine's characters."""
    from rnnjax import corpus
    from rnnjax.config import PRESETS
    from rnnjax.runs import fit_runs
    config = PRESETS["tiny"].replace(token="word", preprocess="raw", min_freq=3, num_steps=4, epochs=2)
    data = corpus.load(config, text=real_text_path)
    fit_runs([config.replace(seed=s) for s in (0, 1)], data, tmp_path / "seeds", devices=1, log=None)
    text = explore(tmp_path, monkeypatch, "seeds", run="1")
    records = [json.loads(line) for line in (tmp_path / "seeds" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["run"] == 1][-1]
    steps = 2 * data.num_batches(True)
    assert f"step {steps} of" in text and ", run 1" in text and "seed=1" in text
    assert f"final: train {last['train_ppl']:.2f}, val {last['val_ppl']:.2f}" in text      # its own records
    assert "16 hidden units of the rnn cell" in text and "spectral radius of W_hh:" in text
    assert "token='word'" in text and "'time' is closest to" in text
    assert "most likely next tokens:" in text
    assert "'it has " in text                      # generated words follow the prompt, spaced


def test_a_setting_that_is_no_whole_number_is_one_sentence(monkeypatch):
    """``RNNJAX_RUN=abc`` was a ValueError's traceback from ``int()`` (researcher, 2026-12-07). The
    notebook's own ``whole_number``, read from its first code cell: no kernel to start."""
    cell = next(c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    source = next(n for n in ast.parse(cell.source).body if getattr(n, "name", "") == "whole_number")
    namespace = {"os": os}
    exec(compile(ast.Module([source], []), "whole_number", "exec"), namespace)
    whole_number = namespace["whole_number"]
    bad = ("RNNJAX_RUN", "abc", 0), ("RNNJAX_RUN", "٣", 0), ("RNNJAX_NOTEBOOK_EPOCHS", "0", 1)
    for name, value, least in bad:
        monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit, match=f"^{name} must be a whole number of at least {least}, got "
                                             f"'{value}'\\.$"):
            whole_number(name, least=least)
    monkeypatch.setenv("RNNJAX_RUN", " 3 ")
    assert whole_number("RNNJAX_RUN") == 3 and whole_number("RNNJAX_UNSET", 30) == 30


def test_the_curve_of_a_run_stopped_in_its_first_epoch_is_said_to_be_none_yet(tmp_path, capsys):
    """A run stopped by Ctrl-C in its first epoch has a checkpoint and no metrics.jsonl: the plot's cell
    raised FileNotFoundError (IndexError where the file was empty), the cells after it unrun (day-2
    researcher). The cell itself, run without a kernel."""
    import types

    import matplotlib
    import matplotlib.pyplot as plt
    import numpy as np

    from rnnjax import metrics
    matplotlib.use("Agg")
    cell = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"][2]
    assert "metrics.MetricsLog" in cell.source
    namespace = {"metrics": metrics, "Path": Path, "plt": plt, "np": np, "workdir": str(tmp_path),
                 "run": None, "restored": types.SimpleNamespace(step=31240)}
    log = tmp_path / metrics.FILENAME
    record = {"epoch": 1, "step": 13, "train_ppl": 20.5, "val_ppl": None}         # a diverged validation
    for content, said in ((None, "No epoch has ended yet (step 31240): no curve to draw."),
                          ("", "No epoch has ended yet (step 31240): no curve to draw."),
                          (json.dumps(record) + "\n", "final: train 20.50, val not finite"),
                          ("not json\n" + json.dumps(record) + "\n", f"{log}, line 1, is not a metrics")):
        log.unlink(missing_ok=True)
        if content is not None:
            log.write_text(content)
        exec(cell.source, dict(namespace))
        assert capsys.readouterr().out.startswith(said)
    plt.close("all")


@pytest.mark.slow
def test_a_run_the_workdir_does_not_hold_is_restore_s_sentence(tmp_path, monkeypatch):
    from rnnjax import TimeMachine, fit
    from rnnjax.config import PRESETS
    config = PRESETS["tiny"].replace(epochs=1)
    fit(config, TimeMachine(config.batch_size, config.num_steps, config.num_train, config.num_val,
                            text="the time machine " * 300), tmp_path / "w", devices=1, log=None)
    monkeypatch.setenv("RNNJAX_CHECKPOINT", str(tmp_path / "w"))
    monkeypatch.setenv("RNNJAX_RUN", "5")
    assert first_error(tmp_path, 4) == ("SystemExit", f"{tmp_path / 'w'} holds a single run; leave out run=5 "
                                                      "(and RNNJAX_RUN).")


def first_error(tmp_path, cells: int) -> tuple[str, str] | None:
    """The first error's name and message of the notebook's first ``cells`` cells, run in ``tmp_path``."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = nb.cells[:cells]
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    return (errors[0].ename, errors[0].evalue) if errors else None
