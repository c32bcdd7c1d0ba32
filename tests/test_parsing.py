"""``experiments.parsing.Parser``: argparse, with whole flag names, each flag once, errors in one line; and
``check_names``, which the commands' checks of their output folders call first."""

import argparse
import os
import re
from pathlib import Path

import pytest

from experiments import device_check, device_summary, sine, sine_figures
from experiments.benchmark import outputs
from experiments.parsing import NAME_MAX, Parser, check_names


def parser():
    p = Parser(prog="prog")
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--seed", "--seeds", dest="seed")
    p.add_argument("--flag", action="store_true")
    p.add_argument("--text")
    p.add_argument("--hidden", help=argparse.SUPPRESS)
    return p


@pytest.mark.parametrize("argv, said", [
    (["--step", "3"], "error: unrecognized arguments: --step 3 (did you mean --steps-per-epoch? see prog "),
    (["--sed", "3"], "error: unrecognized arguments: --sed 3 (did you mean --seed? see prog --help)"),
    (["--se", "3"], "error: unrecognized arguments: --se 3 (did you mean --seed? see prog --help)"),  # alias
    (["--hid", "3"], "error: unrecognized arguments: --hid 3 (see prog --help)"),      # a flag --help hides
    (["--zzz", "3"], "error: unrecognized arguments: --zzz 3 (see prog --help)"),        # no flag near it
    (["--seed", "1", "--seed=2"], "error: --seed is given twice; give it once (see prog --help)"),
    (["--seeds", "1", "--seed", "2"], "error: --seeds and --seed set the same setting; give one (see prog"),
    (["--flag", "--flag"], "error: --flag is given twice; give it once"),
    (["--text", "-x"], "error: argument --text: expected one argument; a value that starts with '-' is given "
                       "after '=': --text=-x (see prog --help)"),       # --predict -x: a prompt
    (["--seeds", "-x("], "error: argument --seed/--seeds: expected one argument; a value that starts with "
                         "'-' is given after '=': '--seeds=-x(' (see prog --help)"),     # shell-quoted
    (["--text"], "error: argument --text: expected one argument (see prog --help)"),
    # A value forgotten, not one starting with '-' (it had said "--text=--flag"); argparse's own, unquotable.
    (["--text", "--flag"], "error: argument --text: expected one argument (see prog --help)"),
    (["--text", "--seed=1"], "error: argument --text: expected one argument (see prog --help)"),
    (["--text", "--"], "error: argument --text: expected one argument (see prog --help)"),
    (["--text", "-a\nb"], "error: argument --text: expected one argument (see prog --help)"),
])
def test_a_prefix_or_a_flag_given_twice_is_one_line_and_status_2(argv, said, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(said) and err.count("\n") == 1


def test_values_that_look_like_flags_and_what_follows_a_double_dash_are_values():
    args = parser().parse_args(["--text=--seed", "--seed", "1"])
    assert (args.text, args.seed) == ("--seed", "1")
    p = parser()
    p.add_argument("rest", nargs="*")
    assert p.parse_args(["--seed", "1", "--", "--seed"]).rest == ["--seed"]


@pytest.mark.parametrize("main, argv", [(sine.main, ["--seeds", "0", "--seeds", "1"]),
                                        (device_check.parse_args, ["--out", "o", "--quick", "--quick"])])
def test_the_experiments_use_it(main, argv, capsys):
    """sine took the last --seeds silently."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "is given twice" in capsys.readouterr().err


def test_known_args_are_checked_too_and_allow_abbrev_may_be_set(capsys):
    with pytest.raises(SystemExit):
        parser().parse_known_args(["--seed", "1", "--seed", "2", "--other"])
    assert "--seed is given twice" in capsys.readouterr().err
    assert Parser(prog="p", allow_abbrev=True).allow_abbrev


LONG = "a" * (NAME_MAX + 1)
# Each command's check of where it writes, and the flag it names.
OUTPUT_CHECKS = [
    (lambda path: sine_figures.check_workdir(Path(path)), "--workdir"),
    (lambda path: device_summary.check_out(Path(path)), "--out"),
    (lambda path: outputs.check_outputs(None, path, False), "--out"),
    (lambda path: outputs.check_outputs(path + ".json", None, False), "--json"),
]


@pytest.mark.parametrize("check, flag", OUTPUT_CHECKS)
def test_a_name_longer_than_a_file_system_takes_is_one_sentence_not_python_s_oserror(tmp_path, check, flag):
    check_names(flag, tmp_path / ("é" * (NAME_MAX // 2)) / "run")             # 254 bytes: taken
    said = rf"^{flag} has a name of {NAME_MAX + 1 + 5 * flag.endswith('json')} bytes in its path; the system "
    with pytest.raises(ValueError, match=said + rf"takes at most {NAME_MAX}\.$"):
        check(str(tmp_path / LONG / "sub" if flag == "--workdir" else tmp_path / LONG))


@pytest.mark.parametrize("check, flag", OUTPUT_CHECKS)
def test_a_path_of_bytes_that_are_not_utf8_is_one_sentence_before_a_line_names_it(tmp_path, check, flag):
    """A UTF-8 terminal's stdout cannot print it: the first line naming it was Python's UnicodeEncodeError."""
    path = str(tmp_path / os.fsdecode(b"u\xff"))
    shown = os.fsencode(path).decode(errors="backslashreplace") + (".json" if flag == "--json" else "")
    with pytest.raises(ValueError, match=rf"^{flag} {re.escape(shown)} has bytes that are not UTF-8 in its "
                                         r"path; give one without them\.$"):
        check(path)


@pytest.mark.parametrize("flag, kind", [("--out", "folder"), ("--json", "file")])
def test_a_link_that_leads_nowhere_is_one_sentence_in_the_benchmark_too(tmp_path, flag, kind):
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "loop").symlink_to(tmp_path / "back")
    (tmp_path / "back").symlink_to(tmp_path / "loop")
    for name, what in (("dangling", "a link to nothing"), ("loop", "in a loop of links")):
        path = str(tmp_path / name)
        with pytest.raises(ValueError, match=rf"^{flag} {path} is {what}; give a new {kind}\.$"):
            outputs.check_outputs(*((path, None) if flag == "--json" else (None, path)), False)


def test_no_command_writes_into_a_training_run_s_checkpoints_folder(tmp_path, capsys, monkeypatch):
    """sine, the benchmark and the corpus benchmark wrote there: a restore then called the run damaged,
    and its next resume set their folder aside as a damaged checkpoint."""
    from experiments.benchmark import command, corpus
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / ".lock").write_text("")                 # a run's folder, as rnnjax.lock leaves it
    inside = Path("run/checkpoints/999")
    for main, flag in ((sine.main, "--workdir"), (command.main, "--out"), (command.main, "--json"),
                       (corpus.main, "--out")):
        target = inside / "bench.json" if flag == "--json" else inside
        assert main([flag, str(target)]) == 1
        assert capsys.readouterr().err == (
            f"error: {flag} {target} is inside {tmp_path / 'run' / 'checkpoints'}, the checkpoints of the "
            f"run in {tmp_path / 'run'}, which it reads as its own and deletes as it saves; choose one "
            "outside it.\n")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == []
