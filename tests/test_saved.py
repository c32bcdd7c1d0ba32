"""A workdir's settings: config.json's, else its newest checkpoint's (the command line's cases are in
test_settings.py; of cells not registered here, in test_stored.py)."""

import os

import pytest

from conftest import TINY, other_alphabet
from rnnjax import checkpoint, corpus, fit, saved


def test_a_config_json_nested_thousands_deep_is_not_a_run_s(tmp_path):
    """It raised a RecursionError from json.loads, a traceback."""
    (tmp_path / checkpoint.CONFIG).write_text("[" * 200000)
    assert saved.config_settings(tmp_path) is None


def test_a_config_json_that_is_not_a_file_is_not_read(tmp_path):
    """A FIFO (``mkfifo``) would hang its reader: the settings, the text's path and the start recorded."""
    os.mkfifo(tmp_path / checkpoint.CONFIG)
    assert saved.config_json(tmp_path) is None and saved.config_settings(tmp_path) is None
    assert saved.text_path(tmp_path) is None and saved.init_from(tmp_path, strict=True) is None


def test_a_run_on_another_text_is_refused_naming_the_file_it_was_trained_on(tmp_path):
    """It named two SHA-1s only (hostile pass 3)."""
    config = TINY.replace(epochs=1, **corpus.TEXT_DEFAULTS)
    for name, seed in (("a.txt", 0), ("b.txt", 1)):
        (tmp_path / name).write_text(other_alphabet(seed=seed))
    fit(config, corpus.load(config, text=tmp_path / "a.txt"), tmp_path / "run", devices=1, log=None)
    said = rf"trained on the text of SHA-1 .* \(the data given is .*\), read from '{tmp_path}/a.txt'\. Use"
    with pytest.raises(checkpoint.CheckpointError, match=said):
        fit(config.replace(epochs=2), corpus.load(config, text=tmp_path / "b.txt"), tmp_path / "run",
            devices=1, log=None)
