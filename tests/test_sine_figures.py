import errno
import signal

import numpy as np
import pytest
from matplotlib.figure import Figure

from experiments import sine_figures
from rnnjax.workdir import WorkdirError


def plot_tiny(workdir):
    T, tau, num_train, steps = 40, 4, 24, (1, 4)
    time_T, x_T = np.arange(1, T + 1), np.sin(0.1 * np.arange(T))
    preds = {"onestep": x_T[tau:], "multistep": x_T, "ksteps": np.zeros((T - tau - max(steps) + 1, tau + 4))}
    sine_figures.plot(time_T, x_T, {"linear": preds, "rnn": preds}, workdir, tau, num_train, steps)


def test_the_three_figures_are_written_with_every_model(tmp_path):
    plot_tiny(tmp_path)
    for name in ("onestep", "multistep", "ksteps"):
        assert (tmp_path / f"sine-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_figure_the_full_disk_cuts_off_is_not_left_and_its_error_names_it(tmp_path, monkeypatch):
    def full_disk(self, fname, **kwargs):       # part of the PNG written, then no space left
        with open(fname, "wb") as f:
            f.write(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(WorkdirError) as e:
        plot_tiny(tmp_path)
    assert str(e.value) == (f"{tmp_path / 'sine-onestep.png'} cannot be written (No space left on device); "
                            "free space (or fix the cause) and try again.")   # Python's: not sine's command
    assert list(tmp_path.iterdir()) == []


def test_a_workdir_is_refused_unless_new_or_writable_and_a_failed_runs_files_go(tmp_path, monkeypatch):
    sine_figures.check_workdir(tmp_path / "new")
    sine_figures.check_workdir(tmp_path)
    assert list(tmp_path.iterdir()) == []                    # the probe leaves nothing

    def read_only(**kwargs):        # root writes a folder of mode 0o555: what another user meets there
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(sine_figures.tempfile, "TemporaryFile", read_only)
    with pytest.raises(ValueError, match=r"^--workdir .* is not writable \(Permission denied\)\.$"):
        sine_figures.check_workdir(tmp_path)
    sine_figures.check_workdir(tmp_path / "new")            # made later, as it is written
    monkeypatch.undo()
    for name in (*sine_figures.FIGURES, sine_figures.RESULTS, "notes.txt"):
        (tmp_path / name).write_text("x")
    sine_figures.remove(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_stop_says_what_the_workdir_holds(tmp_path):
    assert sine_figures.stopped_message(signal.SIGINT, tmp_path) == (
        f"Stopped by signal 2 (Ctrl-C): nothing written to {tmp_path} (the figures come when the first seed "
        "is done, results.json at the end).")
    for name in sine_figures.FIGURES:
        (tmp_path / name).write_bytes(b"png")
    assert sine_figures.stopped_message(signal.SIGTERM, tmp_path) == (
        f"Stopped by signal 15: {tmp_path} holds sine-onestep.png, sine-multistep.png, sine-ksteps.png, not "
        "results.json (written at the end); run again in a new --workdir.")       # this one holds figures
