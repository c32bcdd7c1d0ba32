"""``experiments.training``, the command line's training run: what it says, in its order, for one run and
for runs trained together (the whole command's other behaviour: test_timemachine.py, test_faults.py)."""

import pytest

from experiments import timemachine, training

FLAGS = ["--preset", "tiny", "--epochs", "1", "--devices", "1", "--no-progress"]


def test_then_says_its_line_after_the_first_and_once():
    said = []
    say = training._then(said.append, "data: ...")
    for line in ("plan", "run 1 stopped", "run 2 stopped"):
        say(line)
    assert said == ["plan", "data: ...", "run 1 stopped", "run 2 stopped"]


@pytest.mark.slow
def test_a_run_and_runs_together_say_their_plan_then_their_data(make_text, tmp_path, capsys):
    """The data's line (d2l's split reads a part of the text) follows the plan's line, which is first."""
    (tmp_path / "a.txt").write_text(make_text(3000))
    cases = [([], "new run of 1 epoch"), (["--seeds", "0,1"], "2 new runs of 1 epoch in one program")]
    for k, (extra, first) in enumerate(cases):
        argv = ["--text", str(tmp_path / "a.txt"), "--workdir", str(tmp_path / str(k)), *FLAGS, *extra]
        assert timemachine.main(argv) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(first) and lines[1].startswith("data: ") and " characters in the " \
            "vocabulary; " in lines[1] and " validation windows across its last " in lines[1]
        assert sum(line.startswith("data: ") for line in lines) == 1
