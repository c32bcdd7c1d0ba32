"""experiments.predicting: --predict's check of the flags given against the run's own settings."""

import pytest

from experiments import predicting
from rnnjax.config import Config, ConfigError
from rnnjax.spelling import flag_spelling


def test_flags_the_run_was_not_trained_with_are_named_and_a_list_holding_it_is_not():
    run = Config(lr=0.5, num_hiddens=64, seed=1)
    with flag_spelling():
        assert predicting.disagreements(run, {"lr": [0.5], "seed": [0, 1], "num_hiddens": 64}) == []
        assert predicting.disagreements(run, {"lr": [1.0, 2.0], "num_hiddens": 32}) == [
            "--lr 1,2 (it has 0.5)", "--num-hiddens 32 (it has 64)"]
        with pytest.raises(ConfigError, match="lr"):         # a value no run could take: its own error
            predicting.disagreements(run, {"lr": [float("nan")]})


def test_a_closed_stdout_is_one_sentence_before_any_work(tmp_path, monkeypatch, capsys):
    """Started with stdout closed (>&-), --predict exited 0 and its text went nowhere (hostile pass)."""
    import sys

    from experiments import timemachine
    monkeypatch.setattr(sys, "stdout", None)        # as Python starts without fd 1
    assert timemachine.main(["--workdir", str(tmp_path / "none"), "--predict", "it "]) == 1
    assert capsys.readouterr().err == ("error: --predict writes its text to stdout, which is closed: give it "
                                       "a file or a pipe (> text.txt).\n")
