"""d2l's exercise 1 (``python -m experiments.overfit``): the RNN overfits the text."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import overfit
from rnnjax import metrics


@pytest.mark.slow
def test_train_perplexity_falls_while_validation_turns_and_rises(real_text_path, tmp_path, capsys):
    """The preset's first 20 epochs: enough for the turn (the full 60 are in the docstring)."""
    assert overfit.main(["--data", real_text_path, "--workdir", str(tmp_path), "--epochs", "20",
                         "--no-compilation-cache"]) == 0
    records = metrics.MetricsLog(tmp_path / metrics.FILENAME).read()
    train = [r["train_ppl"] for r in records]
    val = [r["val_ppl"] for r in records]
    best = val.index(min(val))
    assert train[-1] < 2.0 and train == sorted(train, reverse=True)
    assert 0 < best < 10 and val[-1] > 2 * min(val)
    assert (tmp_path / metrics.PLOT).exists()
    assert f"lowest at epoch {best + 1}" in capsys.readouterr().out


def test_help_is_the_exercise_s_own(capsys):
    with pytest.raises(SystemExit):
        overfit.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m experiments.overfit ") and "d2l's exercise 1" in text
    assert "(default overfit)" in text and "hidden units of the recurrent cell (overfit: 128)" in text


@pytest.mark.slow
def test_runs_trained_together_are_summed_up_each_on_its_own(make_text, tmp_path, capsys):
    text = tmp_path / "mine.txt"
    text.write_text(make_text(3000))
    assert overfit.main(["--text", str(text), "--preset", "tiny", "--seeds", "0,1", "--lr", "1,1e6",
                         "--epochs", "2", "--workdir", str(tmp_path / "w"), "--devices", "1",
                         "--no-compilation-cache", "--no-progress"]) == 0
    records = metrics.MetricsLog(tmp_path / "w" / metrics.FILENAME).read()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("overfit:")]
    assert [line.split(":")[1] for line in lines] == [" run 0", " run 1", " run 2", " run 3"]   # in order
    for run in (1, 3):          # lr 1e6 diverges: the first of its records to stop says why (logged first)
        assert lines[run].startswith(f"overfit: run {run}: stopped: its train perplexity is ")
    for run in (0, 2):
        mine = [r for r in records if r["run"] == run]
        assert f"({min(r['val_ppl'] for r in mine):.2f})" in lines[run]
        assert f"{mine[-1]['train_ppl']:.2f}" in lines[run]


@pytest.mark.slow
@pytest.mark.parametrize("after", [0.3, 0.8])
def test_a_signal_while_jax_loads_is_one_line(real_text_path, tmp_path, fresh_env, after):
    """It imports the CLI's module (and JAX) rather than running it: the handlers are its own."""
    proc = subprocess.Popen([sys.executable, "-m", "experiments.overfit", "--data", real_text_path,
                             "--workdir", str(tmp_path / "w"), "--no-progress"], env=fresh_env(),
                            cwd=Path(overfit.__file__).parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "Stopped by signal 2" in err


@pytest.mark.parametrize("seeds", [[], ["--seeds", "0,1"]])
def test_a_validation_perplexity_past_float_range_is_said_as_inf(tmp_path, capsys, seeds):
    """A text of 'a's validated on 'b's, at a huge rate: the validation loss overflows exp (metrics.jsonl
    holds null), and the run, trained to its end, says 'inf' where it used to raise a TypeError."""
    text = tmp_path / "ab.txt"
    text.write_text("a" * 1800 + "b" * 200)
    assert overfit.main(["--text", str(text), "--preset", "tiny", "--epochs", "2", "--lr", "1e5", *seeds,
                         "--workdir", str(tmp_path / "w"), "--devices", "1", "--no-compilation-cache",
                         "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "val perplexity inf" in out and "lowest at epoch 1 (inf), then inf at epoch 2" in out
    assert '"val_ppl": null' in (tmp_path / "w" / metrics.FILENAME).read_text()


def test_a_run_whose_last_epoch_is_its_best_says_it_has_not_turned_up_yet(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the time machine " * 200)
    assert overfit.main(["--text", str(text), "--preset", "tiny", "--epochs", "1", "--workdir",
                         str(tmp_path / "w"), "--devices", "1", "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("overfit: validation perplexity lowest at the last epoch, 1 (") and \
        "), not turned up yet, while train perplexity ends at " in last
