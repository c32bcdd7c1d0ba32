"""A workdir's settings: config.json's, else its newest checkpoint's (the command line's cases are in
test_settings.py; of cells not registered here, in test_stored.py)."""

from rnnjax import checkpoint, saved


def test_a_config_json_nested_thousands_deep_is_not_a_run_s(tmp_path):
    """It raised a RecursionError from json.loads, a traceback."""
    (tmp_path / checkpoint.CONFIG).write_text("[" * 200000)
    assert saved.config_settings(tmp_path) is None
