"""``steps.jsonl`` (``rnnjax.step_lines``): a line per step as ``train_step`` gives it, kept in step with the
checkpoints as ``metrics.jsonl`` is."""

import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY
from rnnjax import checkpoint, metrics, runs
from rnnjax.state import create_train_state
from rnnjax.step_lines import FILENAME, StepsLog, step_records
from rnnjax.train import NonFiniteLoss, fit, train_step


def lines(workdir):
    return StepsLog(workdir / FILENAME).read()


def test_each_step_is_a_line_of_what_train_step_gives_and_their_mean_is_the_epoch_s(small_data, tmp_path):
    E = small_data.num_batches(True)
    [record] = fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1, log=None).history
    state, step = create_train_state(TINY, len(small_data.vocab)), jax.jit(train_step)
    wanted = []
    for batch in small_data.train_batches(0):
        state, m = step(state, batch)
        wanted.append((float(m["loss_sum"] / m["count"]), float(m["grad_norm"])))
    got = lines(tmp_path)
    assert [(r["epoch"], r["step"]) for r in got] == [(1, s) for s in range(1, E + 1)]
    np.testing.assert_allclose([(r["train_loss"], r["grad_norm"]) for r in got], wanted, rtol=1e-4)
    assert math.isclose(np.mean([r["grad_norm"] for r in got]), record["grad_norm"], rel_tol=1e-6)
    counts = [r["count"] for r in got]                  # the last batch ragged: the epoch's loss weighs them
    assert counts[-1] < counts[0] and set(got[0]) == {"epoch", "step", "train_loss", "grad_norm", "count"}
    assert math.isclose(np.average([r["train_loss"] for r in got], weights=counts), record["train_loss"],
                        rel_tol=1e-6)


def test_a_resume_drops_the_lines_past_its_checkpoint_and_redoes_them_alike(small_data, tmp_path):
    """A crash after an epoch's lines and before its checkpoint (a torn line too) leaves them past it."""
    E, config = small_data.num_batches(True), TINY.replace(epochs=2)
    fit(config, small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    unbroken = lines(tmp_path)
    shutil.rmtree(tmp_path / checkpoint.SUBDIR / str(2 * E))
    with open(tmp_path / FILENAME, "a") as f:
        f.write('{"epoch": 3, "st')
    fit(config, small_data, tmp_path, devices=1, log=None)
    assert lines(tmp_path) == unbroken and [r["step"] for r in unbroken] == list(range(1, 2 * E + 1))


def test_a_new_run_moves_an_earlier_run_s_lines_aside_with_its_records(small_data, tmp_path):
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    earlier = (tmp_path / FILENAME).read_text()
    shutil.rmtree(tmp_path / checkpoint.SUBDIR)
    fit(TINY.replace(epochs=1, seed=1), small_data, tmp_path, devices=1, log=None)
    assert (tmp_path / "steps.1.jsonl").read_text() == earlier and (tmp_path / "metrics.1.jsonl").exists()
    assert (tmp_path / FILENAME).read_text() != earlier


def test_a_damaged_line_is_refused_before_any_step_and_a_torn_last_one_dropped(small_data, tmp_path):
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    text = (tmp_path / FILENAME).read_text().split("\n")
    (tmp_path / FILENAME).write_text("\n".join([text[0], "not json", *text[1:]]))
    with pytest.raises(metrics.MetricsError, match=r"steps.jsonl, line 2, is not a step's record \(a step, "
                                                   r"an epoch, train_loss\): 'not json'. Move the file"):
        fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, log=None)
    assert checkpoint.steps(tmp_path) == [small_data.num_batches(True)]      # nothing trained
    said = []
    (tmp_path / FILENAME).write_text("\n".join(text[:2]) + '\n{"epoch": 1, "step": 3, "train_l')
    assert len(StepsLog(tmp_path / FILENAME, warn=said.append).read()) == 2 and "torn" in said[0]


def test_a_step_that_is_not_finite_is_logged_before_the_run_stops(small_data, tmp_path):
    params = create_train_state(TINY, len(small_data.vocab)).params
    params["output_layer"]["bias"] = params["output_layer"]["bias"].at[3].set(jnp.nan)
    with pytest.raises(NonFiniteLoss, match="step 1 of"):
        fit(TINY, small_data, tmp_path, devices=1, params=params, log=None)
    assert math.isnan(lines(tmp_path)[0]["train_loss"]) and lines(tmp_path)[0]["step"] == 1


@pytest.mark.cpu_devices(2)
def test_runs_trained_together_each_have_their_lines_in_step_order(small_data, tmp_path):
    configs = [TINY.replace(epochs=1, seed=s) for s in (0, 1)]
    result = runs.fit_runs(configs, small_data, tmp_path, devices=2, log=None)
    got = lines(tmp_path)
    assert [(r["step"], r["run"]) for r in got] == [(s, k) for s in range(1, small_data.num_batches(True) + 1)
                                                    for k in (0, 1)]
    for k, record in enumerate(result.history):
        assert math.isclose(np.mean([r["grad_norm"] for r in got if r["run"] == k]), record["grad_norm"],
                            rel_tol=1e-6)


def test_a_step_s_sums_are_per_token_and_other_metrics_as_given():
    m = {"loss_sum": np.float32(6.0), "count": 3.0, "z_sum": 1.5, "scale": 2}
    [line] = step_records(2, 7, [m], run=1)
    assert line == {"run": 1, "epoch": 2, "step": 7, "train_loss": 2.0, "train_z": 0.5, "count": 3.0,
                    "scale": 2.0}


def test_a_line_that_cannot_be_written_is_said_once_and_training_goes_on(small_data, tmp_path, capsys):
    """A full disk under steps.jsonl as a run stopped mid-epoch had cost its checkpoint (hostile pass)."""
    def replaced(done, total, record):          # steps.jsonl turned into a folder after epoch 1
        if record and record["epoch"] == 1:
            (tmp_path / FILENAME).unlink()
            (tmp_path / FILENAME).mkdir()
    E = small_data.num_batches(True)
    result = fit(TINY.replace(epochs=3), small_data, tmp_path, devices=1, log=None, progress=replaced)
    assert [r["epoch"] for r in result.history] == [1, 2, 3] and max(checkpoint.steps(tmp_path)) == 3 * E
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"steps.jsonl cannot be written (Is a directory): the steps from " \
        f"{E + 1} on may be missing from it, and stay so (training goes on)" in err


def test_a_new_run_moves_an_earlier_run_s_lines_aside_without_its_records_too(small_data, tmp_path):
    """Killed in its first validation (its lines written, no record, no checkpoint): they were emptied."""
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    earlier = (tmp_path / FILENAME).read_text()
    shutil.rmtree(tmp_path / checkpoint.SUBDIR)
    (tmp_path / "metrics.jsonl").unlink()
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    assert (tmp_path / "steps.1.jsonl").read_text() == earlier


def test_its_messages_name_it_and_a_run_it_does_not_hold_is_refused(small_data, tmp_path):
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    with pytest.raises(metrics.MetricsError, match=r"is a folder, a workdir: read its log, .*steps.jsonl\.$"):
        StepsLog(tmp_path).read()
    with pytest.raises(metrics.MetricsError, match=r"line 1, is not a metrics record .*\. A log of steps is "
                                                   r"read by rnnjax.step_lines.StepsLog\.$"):     # new user
        metrics.MetricsLog(tmp_path / FILENAME).read()
    text = (tmp_path / FILENAME).read_bytes()
    (tmp_path / FILENAME).write_bytes(text + b"\xff\n")
    with pytest.raises(metrics.MetricsError, match=r"steps.jsonl is not a log of steps \(byte 0xff"):
        lines(tmp_path)
    (tmp_path / FILENAME).write_bytes(text + b'{"run": 5, "epoch": 1, "step": 14, "train_loss": 1.0}\n')
    with pytest.raises(metrics.MetricsError, match=r"steps.jsonl, record 14, is of run 5, and the workdir "
                                                   r"holds a single run"):
        fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, log=None)


def test_a_resume_says_which_steps_a_failed_write_left_out(small_data, tmp_path):
    E = small_data.num_batches(True)
    fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, log=None)
    text = (tmp_path / FILENAME).read_text().splitlines(keepends=True)
    (tmp_path / FILENAME).write_text("".join(text[:E + 3]))             # as if its writes failed from there
    said = []
    fit(TINY.replace(epochs=3), small_data, tmp_path, devices=1, log=said.append)
    assert f"steps.jsonl lacks steps {E + 4}-{2 * E} (a write failed)" in said[0]
    assert [r["step"] for r in lines(tmp_path)] == [*range(1, E + 4), *range(2 * E + 1, 3 * E + 1)]
    said.clear()
    fit(TINY.replace(epochs=4), small_data, tmp_path, devices=1, log=said.append)
    assert "steps.jsonl" not in said[0]                 # said once: its lines go on past the gap
