"""rnnjax.token_cache: a text's tokens cached whole or not at all, keyed by the text and its options; a
damaged entry made again, a cache that cannot be searched none."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rnnjax import corpus, source
from rnnjax.corpus import Corpus
from conftest import TEXT, cache_entries, other_alphabet


def test_cache_hit_skips_tokenizing_and_is_keyed_by_text_and_options(text_file, monkeypatch, tmp_path):
    monkeypatch.setenv(source.ENV_CACHE, str(tmp_path / "cache"))    # not the session's: others fill that
    first = Corpus.from_config(text_file, TEXT)
    assert not first.cache_hit and len(cache_entries()) == 1
    entry = source.cache_dir() / "corpus" / cache_entries()[0]
    assert sorted(p.name for p in entry.iterdir()) == ["tokens.npy", "vocab.json"]

    def no_tokenizing(*args):
        raise AssertionError("tokenized again")
    with monkeypatch.context() as m:
        m.setattr(corpus, "tokenize", no_tokenizing)
        again = Corpus.from_config(text_file, TEXT.replace(num_steps=4, num_train=20, batch_size=4))
    assert again.cache_hit and again.vocab == first.vocab
    np.testing.assert_array_equal(again.stream, first.stream)
    assert not Corpus.from_config(text_file, TEXT.replace(token="word")).cache_hit
    text_file.write_text(other_alphabet(seed=1))
    changed = Corpus.from_config(text_file, TEXT)
    assert not changed.cache_hit and changed.vocab.source != first.vocab.source


def test_a_damaged_cache_entry_is_made_again_not_trained_on(text_file, monkeypatch, tmp_path):
    """Its tokens were trusted: a shifted stream resumed a run on other data, ids past the vocabulary
    failed in ``Vocab.decode``."""
    monkeypatch.setenv(source.ENV_CACHE, str(tmp_path / "cache"))
    first = Corpus.from_config(text_file, TEXT)
    entry = source.cache_dir() / "corpus" / cache_entries()[0]
    tokens, vocab = entry / "tokens.npy", entry / "vocab.json"

    def swap_two_tokens(path):
        meta = json.loads(path.read_text())
        order = meta["vocab"]["idx_to_token"]
        order[2], order[3] = order[3], order[2]
        path.write_text(json.dumps(meta))

    def header_byte(path):      # numpy's header parser raised tokenize.TokenError, through every later run
        data = bytearray(path.read_bytes())
        data[data.index(b"'shape': ") + 9] = 7
        path.write_bytes(bytes(data))
    for damage in (lambda: np.save(tokens, np.roll(np.load(tokens), 1), allow_pickle=False),
                   lambda: np.save(tokens, np.full_like(np.load(tokens), 999), allow_pickle=False),
                   lambda: swap_two_tokens(vocab), lambda: header_byte(tokens),
                   lambda: tokens.write_bytes(tokens.read_bytes()[:100]), lambda: vocab.write_text("{"),
                   lambda: tokens.unlink(),                 # half an entry: it was never written again
                   lambda: np.save(tokens, np.load(tokens).astype(np.uint32), allow_pickle=False)):
        damage()
        again = Corpus.from_config(text_file, TEXT)
        assert not again.cache_hit and again.vocab == first.vocab
        np.testing.assert_array_equal(again.stream, first.stream)
        assert Corpus.from_config(text_file, TEXT).cache_hit          # written again, whole


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="drops root's file capabilities")
def test_a_cache_this_process_may_not_search_is_no_cache(text_file, tmp_path):
    """Path.exists raised PermissionError there, out of Corpus (an unwritable cache was already none)."""
    (tmp_path / "cache" / "corpus").mkdir(parents=True)
    os.chown(tmp_path / "cache" / "corpus", 65534, 65534)
    (tmp_path / "cache" / "corpus").chmod(0o700)
    code = (f"from rnnjax.corpus import Corpus\nc = Corpus({str(text_file)!r}, 16, 8, num_val=100)\n"
            "print(len(c.vocab), c.cache_hit)")
    out = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c",
                          code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, source.ENV_CACHE: str(tmp_path / "cache")})
    assert out.returncode == 0 and out.stdout.split()[1] == "False", out.stderr
