"""Config as flags: every field one, over a preset."""

import argparse
import dataclasses

import pytest

from rnnjax.config import PRESETS, Config, ConfigError
from experiments.flags import add_flags, sweep_from_flags


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(argv)


def test_every_field_is_a_flag_with_its_help():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    text = parser.format_help()
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in text
        assert f.metadata["help"].split()[0] in text


def test_flags_change_the_preset():
    assert sweep_from_flags(parse()) == [Config()]
    assert sweep_from_flags(parse("--num-hiddens", "64", "--lr", "2", "--kernel", "plain")) == [Config(
        num_hiddens=64, lr=2.0, kernel="plain")]
    assert sweep_from_flags(parse("--preset", "tiny", "--epochs", "1")) == [PRESETS["tiny"].replace(epochs=1)]


def test_lists_of_too_many_runs_are_refused_before_any_is_made(monkeypatch):
    import itertools
    from experiments import flags
    monkeypatch.setattr(itertools, "product", None)          # not reached: the count is checked first
    values = ",".join(str(v) for v in range(1, 101))
    args = parse("--seeds", ",".join(map(str, range(100))), "--lr", values, "--clip", values)
    with pytest.raises(ConfigError, match=r"^The flags list 1000000 runs \(100 x 100 x 100\); one program "
                                          rf"trains at most {flags.MAX_RUNS}: split"):
        flags.sweep_from_flags(args)


@pytest.mark.parametrize("argv, typed, rounded", [
    (["--lr", "1e-400"], "1e-400", "0"), (["--lr", "0.5,1e-400"], "1e-400", "0"),
    (["--lr", "1e400"], "1e400", "inf"),
    (["--clip", "2.5E-999"], "2.5E-999", "0"), (["--dropout", "1e-400"], "1e-400", "0"),
])
def test_a_number_a_float_cannot_hold_is_named_as_typed_not_as_rounded(argv, typed, rounded, capsys):
    """``float('1e-400')`` is 0.0: the range check after it would say "got 0"."""
    with pytest.raises(SystemExit):
        parse(*argv)
    assert (f"argument {argv[0]}: '{typed}' rounds to {rounded} as a float (floats hold magnitudes from "
            "5e-324 to 1.8e308)") in capsys.readouterr().err
    assert parse("--lr", "0e5,1e-300").lr == (0.0, 1e-300)        # zero as typed, and tiny numbers: parsed
    assert parse("--clip", "inf").clip == (float("inf"),)          # refused by Config, as typed
