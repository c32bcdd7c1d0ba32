"""``experiments.parsing.Parser``: argparse, with whole flag names, each flag once, errors in one line."""

import pytest

from experiments import device_check, sine
from experiments.parsing import Parser


def parser():
    p = Parser(prog="prog")
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--seed", "--seeds", dest="seed")
    p.add_argument("--flag", action="store_true")
    p.add_argument("--text")
    return p


@pytest.mark.parametrize("argv, said", [
    (["--step", "3"], "error: unrecognized arguments: --step 3 (see prog --help)"),
    (["--seed", "1", "--seed=2"], "error: --seed is given twice; give it once (see prog --help)"),
    (["--seeds", "1", "--seed", "2"], "error: --seeds and --seed set the same setting; give one (see prog"),
    (["--flag", "--flag"], "error: --flag is given twice; give it once"),
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
