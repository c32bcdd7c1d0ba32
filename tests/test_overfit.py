"""d2l's exercise 1 (``python -m experiments.overfit``): the RNN overfits the text."""

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
