"""The command line (``experiments.cli``): its flags, checked before any work, and what it shows."""

import dataclasses

import jax
import pytest

from experiments import cli
from rnnjax.config import Config


def test_help_lists_every_config_field(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in text
    flat = " ".join(text.split())
    assert "(default d2l)" in flat and "(d2l: 32)" in flat
    assert "--temperature T with --predict: sample, from" in flat
    assert "--top-k K with --predict: sample among" in flat
    assert flat.count("; implies --sample") == 2        # each turns sampling on alone


def test_shapes_cannot_be_listed(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--num-hiddens", "8,16"])
    assert "train the others in separate workdirs" in capsys.readouterr().err


@pytest.mark.parametrize("argv, said", [
    (["--step", "3"], "unrecognized arguments: --step 3"),                   # was --steps-per-epoch 3
    (["--val", "0.5"], "unrecognized arguments: --val 0.5"),                 # was --val-fraction 0.5
    (["--seeds", "0,1", "--seed", "2"], "--seeds and --seed set the same setting; give one"),   # was seed 2
    (["--lr", "1", "--lr=2"], "--lr is given twice; give it once"),
    (["--bidirectional", "--no-bidirectional"], "--bidirectional and --no-bidirectional set the same"),
])
def test_a_flag_s_prefix_or_a_flag_given_twice_is_an_error_not_a_guess(argv, said, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(argv)
    assert e.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--temperature", "--join-timeout"])
def test_a_float_flag_that_rounds_to_0_or_inf_names_what_was_typed(flag, capsys):
    """``--temperature 1e-400`` was refused as "got 0", a value no one typed."""
    for typed, rounded in (("1e-400", "0"), ("1e400", "inf")):
        with pytest.raises(SystemExit):
            cli.parse_args([flag, typed])
        assert f"argument {flag}: '{typed}' rounds to {rounded} as a float" in capsys.readouterr().err


def test_multi_host_processes_compare_what_the_flags_resolve_to(tmp_path, monkeypatch):
    """As typed, --seed 0 and no --seed, or W and ../here/W, differ; as trained, they do not."""
    from experiments import settings
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()

    def shared(*argv):
        args = cli.parse_args(["--preset", "tiny", *argv])
        return cli.shared_settings(args, *settings.settings(args))
    devices = str(len(jax.local_devices()))
    assert shared("--workdir", "W") == shared("--workdir", "here/../W", "--seed", "0", "--devices", devices)
    assert shared("--workdir", "W")["seed"] == 0 and shared("--workdir", "W", "--seed", "1")["seed"] == 1
    assert shared("--workdir", "W")["workdir"] == str(tmp_path / "W")
    predict = cli.shared_settings(cli.parse_args(["--workdir", "W", "--predict", "it", "--num-preds", "5"]),
                                  None, None, False)
    assert predict == {"command": "--predict", "workdir": str(tmp_path / "W"), "run": None, "best": False}


def test_the_last_line_says_the_share_of_unk_where_a_text_has_any():
    """A word model's perplexity, a fifth of its words one <unk> class, looked better than it was, unsaid."""
    from types import SimpleNamespace

    import numpy as np
    from rnnjax.data import Batch
    from rnnjax.vocab import Vocab
    vocab = Vocab.from_json({"idx_to_token": ["<unk>", "a", "b"], "token": "word"})

    def val(Y, mask):          # of the validation's real rows only: a padded row is no token
        batches = [Batch(np.zeros_like(Y), np.array(Y), np.array(mask, np.float32))]
        return SimpleNamespace(val_batches=lambda: iter(batches), vocab=vocab)
    said = [cli._unknown(val(Y, mask)) for Y, mask in (([[1, 2, 0, 1, 2], [0, 0, 0, 0, 0]], [1, 0]),
                                                       ([[1, 2], [1, 1]], [1, 1]))]
    assert said == [" (<unk> is 20% of the validation's tokens, one class for them all)", ""]
