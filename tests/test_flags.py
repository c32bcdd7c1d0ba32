"""Config as flags: every field one, over a preset."""

import argparse
import dataclasses

from rnnjax.config import PRESETS, Config
from rnnjax.flags import add_flags, from_flags


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
    assert from_flags(parse()) == Config()
    assert from_flags(parse("--num-hiddens", "64", "--lr", "2", "--kernel", "plain")) == Config(
        num_hiddens=64, lr=2.0, kernel="plain")
    assert from_flags(parse("--preset", "tiny", "--epochs", "1")) == PRESETS["tiny"].replace(epochs=1)
