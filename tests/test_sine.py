"""d2l's sine exercise (``python -m experiments.sine``): both models, d2l's three predictions."""

import errno
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import sine, sine_figures, sine_models
from rnnjax.lock import LOCKFILE, lock


@pytest.fixture(scope="module")
def data():
    time_T, x_T = sine.make_data(0)
    return x_T, *sine.windows(x_T)


def test_data_and_windows_are_d2ls(data):
    x_T, features, labels = data
    assert x_T.shape == (sine.T,) and features.shape == (sine.T - sine.TAU, sine.TAU)
    np.testing.assert_array_equal(features[10], x_T[10:14])
    assert labels[10] == x_T[14]
    noise = x_T - np.sin(0.01 * np.arange(1, sine.T + 1))
    assert abs(noise.std() - 0.2) < 0.02 and abs(noise.mean()) < 0.03


@pytest.mark.slow
def test_one_step_ahead_of_the_k_step_predictions_is_the_one_step_prediction(data):
    """For both models: column tau of the k-step table is what the one-step predictions say."""
    x_T, features, labels = data
    linear = sine_models.Linear()
    params = sine.train_linear(linear, features, labels)
    lin = sine.predictions(lambda f: np.asarray(linear.apply(params, f)), x_T, features)
    rnn = sine_models.RNNForecaster(8)
    rnn_preds = sine.rnn_predictions(rnn, sine.train_rnn(rnn, x_T, 1, warmup=20, horizon=8), x_T)
    for preds in (lin, rnn_preds):
        rows = preds["ksteps"].shape[0]
        np.testing.assert_allclose(preds["ksteps"][:, sine.TAU], preds["onestep"][:rows], rtol=1e-5,
                                   atol=1e-6)
        known = sine.NUM_TRAIN + sine.TAU
        np.testing.assert_array_equal(preds["multistep"][:known], x_T[:known])
    # d2l's linear model learns: one step ahead it is near the noise's variance (0.04), not the signal's.
    assert sine.errors(lin, x_T)["onestep_test"] < 0.06


@pytest.mark.slow
def test_the_experiment_writes_figures_and_the_error_table_over_seeds(tmp_path, capsys):
    assert sine.main(["--workdir", str(tmp_path), "--rnn-epochs", "1", "--seeds", "0,1"]) == 0
    for name in ("onestep", "multistep", "ksteps"):
        assert (tmp_path / f"sine-{name}.png").read_bytes()[:4] == b"\x89PNG"
    tables = json.loads((tmp_path / "results.json").read_text())
    assert list(tables) == ["seed 0", "seed 1", "min", "max"]
    for table in tables.values():
        assert set(table) == {"linear", "rnn"}
        for row in table.values():
            assert set(row) == {"onestep_test", "multistep_test", "1-step", "4-step", "16-step", "64-step"}
            assert all(np.isfinite(v) and v > 0 for v in row.values())
    for model, row in tables["min"].items():
        for column, low in row.items():
            seeds = [tables[f"seed {s}"][model][column] for s in (0, 1)]
            assert low == min(seeds) < max(seeds) == tables["max"][model][column]
    out = capsys.readouterr().out
    assert "mean squared error" in out and "rnn    seed 1" in out and "linear max" in out
    assert re.search(r"\nseed 0: done in \d+\.\d s \(compiling and the figures included\)\n"
                     r"seed 1: done in \d+\.\d s\nmean squared", out)


@pytest.mark.parametrize("bad,says", [
    (["--rnn-epochs", "0"], "--rnn-epochs must be from 1 to 100,000, got 0."),
    (["--rnn-epochs", str(2 ** 31)], f"--rnn-epochs must be from 1 to 100,000, got {2 ** 31}."),
    (["--seeds", "0,x"], "--seeds takes whole numbers separated by commas, got '0,x'."),
    (["--seeds", ""], "--seeds needs at least one seed, got ''."),
    (["--seeds", "-1"], "--seeds must be in [0, 2**32), got -1."),
    (["--seeds", "3,1,3"], "--seeds names seed 3 twice; give each seed once.")])
def test_bad_arguments_are_one_line_each_naming_its_flag_and_value(tmp_path, capsys, bad, says):
    assert sine.main(["--workdir", str(tmp_path / "w"), *bad]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {says}\n" and not (tmp_path / "w").exists()


def test_an_earlier_run_s_files_are_not_overwritten(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sine, "run_seeds", lambda *a, **k: pytest.fail("ran"))
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / sine.RESULTS).write_text("keep")
    assert sine.main(["--workdir", str(tmp_path / "w")]) == 1
    assert capsys.readouterr().err == (f"error: --workdir {tmp_path / 'w'} holds results.json of an earlier "
                                       "run, which this one would overwrite; use a new --workdir.\n")
    assert (tmp_path / "w" / sine.RESULTS).read_text() == "keep"
    monkeypatch.chdir(tmp_path)
    assert sine.main(["--workdir", ""]) == 1
    assert "--workdir is empty or the current folder" in capsys.readouterr().err


def test_one_run_writes_a_workdir_at_a_time_and_one_done_meanwhile_stays(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sine, "run_seeds", lambda *a, **k: pytest.fail("ran"))
    w = tmp_path / "w"
    w.mkdir()
    with lock(w):                       # another run writing there
        assert sine.main(["--workdir", str(w)]) == 1
        assert capsys.readouterr().err.startswith(f"error: --workdir {w} is in use by ")   # its flag

    def finishes_first(workdir, **kwargs):  # the other run wrote its results after this one's first check
        (workdir / sine.RESULTS).write_text("theirs")
        return real(workdir, **kwargs)
    real = lock
    monkeypatch.setattr(sine_figures, "lock", finishes_first)
    assert sine.main(["--workdir", str(w)]) == 1
    assert "holds results.json of an earlier run" in capsys.readouterr().err
    assert (w / sine.RESULTS).read_text() == "theirs"


def test_a_closed_pipe_says_what_the_workdir_keeps_not_that_it_failed(tmp_path, monkeypatch, capsys):
    def reader_gone(workdir, *args, **kwargs):
        (workdir / sine_figures.FIGURES[0]).write_text("a figure of a run cut short")
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")
    monkeypatch.setattr(sine, "run_seeds", reader_gone)
    monkeypatch.setattr(sine.stopping, "drop_output", lambda: None)     # pytest's captured stdout stays
    assert sine.main(["--workdir", str(tmp_path / "w")]) == 128 + signal.SIGPIPE
    assert capsys.readouterr().err == ("Stopped: the output was closed (the reader of a pipe exited); "
                                       "nothing was kept: run the same command again.\n")
    assert not (tmp_path / "w" / sine_figures.FIGURES[0]).exists()


def test_a_workdir_that_is_a_file_is_named_a_file_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sine, "run_seeds", lambda *a, **k: pytest.fail("ran"))
    (tmp_path / "n6").write_text("mine")
    assert sine.main(["--workdir", str(tmp_path / "n6")]) == 1
    assert capsys.readouterr().err == f"error: --workdir {tmp_path / 'n6'} is a file, not a folder.\n"
    assert (tmp_path / "n6").read_text() == "mine"
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "loop").symlink_to(tmp_path / "back")
    (tmp_path / "back").symlink_to(tmp_path / "loop")
    for name, what in (("dangling", "a link to nothing"), ("loop", "in a loop of links")):
        assert sine.main(["--workdir", str(tmp_path / name)]) == 1
        said = capsys.readouterr().err
        assert said == f"error: --workdir {tmp_path / name} is {what}; give a new folder.\n"


def test_an_unwritable_workdir_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sine, "run_seeds", lambda *a, **k: pytest.fail("ran"))
    (tmp_path / "w").mkdir()

    def read_only(**kwargs):        # root writes a folder of mode 0o555: what another user meets there
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(sine_figures.tempfile, "TemporaryFile", read_only)
    assert sine.main(["--workdir", str(tmp_path / "w")]) == 1
    says = f"error: --workdir {tmp_path / 'w'} is not writable (Permission denied).\n"
    assert capsys.readouterr().err == says


@pytest.mark.parametrize("fails_at, said", [
    ("linear and RNN models", "nothing was kept: run the same command again."),     # its first line
    ("wrote ", "{workdir} holds the whole run."),                                     # its last
])
def test_its_output_on_a_full_disk_is_not_blamed_on_the_workdir(tmp_path, capsys, monkeypatch, fails_at, said
                                                                ):
    workdir = tmp_path / "w"
    monkeypatch.setattr(sine, "run", lambda workdir, seed, rnn_epochs, figures: {"rnn": {"1-step": 0.25}})

    def full(text):
        if text.startswith(fails_at):
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(text)
    monkeypatch.setattr(sys.stdout, "write", full)
    assert sine.main(["--workdir", str(workdir), "--seeds", "0"]) == 1
    monkeypatch.undo()
    assert capsys.readouterr().err == ("Stopped: No space left on device (writing the output); "
                                       + said.format(workdir=workdir) + "\n")
    assert (workdir / sine.RESULTS).exists() == (fails_at == "wrote ")


def test_a_full_disk_names_the_figure_and_the_same_command_runs_again(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure
    workdir, full, savefig = tmp_path / "w", [True], Figure.savefig

    def second_figure_fills_the_disk(self, fname, **kwargs):
        if full[0] and "multistep" in str(fname):
            with open(fname, "wb") as f:
                f.write(b"\x89PNG")
            raise OSError(errno.ENOSPC, "No space left on device")
        return savefig(self, fname, **kwargs)

    def tiny_run(workdir, seed, rnn_epochs, figures):    # the figures as run writes them, not its training
        if figures:
            time_T, x_T = sine.make_data(seed)
            preds = {"onestep": x_T[sine.TAU:], "multistep": x_T,
                     "ksteps": np.zeros((sine.T - sine.TAU - sine.MAX_STEPS + 1, sine.TAU + sine.MAX_STEPS))}
            sine_figures.plot(time_T, x_T, {"linear": preds}, workdir, sine.TAU, sine.NUM_TRAIN, sine.STEPS)
        return {"linear": {"1-step": 0.5}, "rnn": {"1-step": 0.25}}
    monkeypatch.setattr(Figure, "savefig", second_figure_fills_the_disk)
    monkeypatch.setattr(sine, "run", tiny_run)
    assert sine.main(["--workdir", str(workdir), "--seeds", "0,1"]) == 1
    assert capsys.readouterr().err == (f"error: {workdir / 'sine-multistep.png'} cannot be written (No space "
                                       "left on device); free space (or fix the cause) and run the same "
                                       "command again.\n")
    assert not workdir.exists()             # the half-written figure removed, the folder it made with it
    full[0] = False
    assert sine.main(["--workdir", str(workdir), "--seeds", "0,1"]) == 0
    assert sorted(p.name for p in workdir.iterdir()) == sorted((*sine.FIGURES, sine.RESULTS, LOCKFILE))
    assert json.loads((workdir / sine.RESULTS).read_text())["max"]["rnn"] == {"1-step": 0.25}


def test_the_docstring_says_the_default_workdir_that_is_used():
    assert re.fullmatch(r"runs/sine-\d{8}-\d{6}", sine.default_workdir().as_posix())
    doc = " ".join(sine.__doc__.split())
    assert "``runs/sine-<date>-<time>``" in doc and re.search(r"``runs/sine-\d{8}-\d{6}``", doc)
    assert "runs/sine]" not in doc


def test_it_says_first_where_it_writes_and_on_which_device_with_its_stop_handlers(tmp_path, capsys,
                                                                                  monkeypatch):
    seen = {}

    def fake_run_seeds(workdir, seeds, rnn_epochs, done):
        seen["start"] = capsys.readouterr().out
        seen["handlers"] = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
        row = dict.fromkeys(("onestep_test", "1-step"), 0.5)
        return {f"seed {s}": {"linear": row, "rnn": row} for s in seeds}
    monkeypatch.setattr(sine, "run_seeds", fake_run_seeds)
    hup = signal.signal(signal.SIGHUP, signal.SIG_DFL)   # as in a terminal, even under nohup
    try:
        before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
        assert sine.main(["--workdir", str(tmp_path / "w"), "--seeds", "4,2", "--rnn-epochs", "3"]) == 0
        after = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
    finally:
        signal.signal(signal.SIGHUP, hup)
    device, count = jax.devices()[0], jax.device_count()
    of = f", one of {count} devices" if count > 1 else ""
    assert seen["start"] == (f"linear and RNN models (the RNN 3 epochs) at seeds 4,2 on {device} "
                             f"({device.device_kind}{of}); writing to {tmp_path / 'w'}\n")
    exits = []
    monkeypatch.setattr(sine.stopping, "exit_now", lambda message, status: exits.append((message, status)))
    for handler in seen["handlers"]:
        handler(signal.SIGTERM, None)
    assert exits == [(sine_figures.stopped_message(signal.SIGTERM, tmp_path / "w"), 143)] * 3
    assert after == before
    assert capsys.readouterr().out.endswith(f"wrote {tmp_path / 'w'}\n")


@pytest.mark.slow
@pytest.mark.parametrize("signum,when", [(signal.SIGHUP, "loading"), (signal.SIGINT, "running"),
                                         (signal.SIGHUP, "running")])      # SIGTERM takes SIGHUP's handler
def test_a_signal_stops_it_with_one_line_and_128_plus_the_signal(tmp_path, fresh_env, signum, when):
    """While JAX loads (0.5 s in) or while it trains (after its first line): no traceback. A hang-up (a
    closed terminal) killed it with no line."""
    workdir = tmp_path / "w"
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)   # as in a terminal, even under nohup (inherited)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "experiments.sine", "--workdir", str(workdir),
                                 "--seeds", "0,1"], cwd=Path(sine.__file__).parents[1], env=fresh_env(),
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        signal.signal(signal.SIGHUP, before)
    if when == "loading":
        time.sleep(0.5)
    else:
        assert proc.stdout.readline().endswith(f"writing to {workdir}\n")
        time.sleep(1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum and "Traceback" not in err and err.count("\n") == 1, err
    if when == "loading":
        assert err == f"Stopped by signal {signum} while starting, before anything was written.\n"
        assert not workdir.exists()
    else:
        assert err == sine_figures.stopped_message(signum, workdir) + "\n"
        assert not (workdir / sine.RESULTS).exists()
