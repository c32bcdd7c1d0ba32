import hashlib
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import data
from rnnjax.data import DataError, TimeMachine, Vocab


# --- d2l's facts on the real text -------------------------------------------------

def test_real_text_matches_d2l(real_text_path):
    tm = TimeMachine(1024, 32, path=real_text_path)
    assert len(tm.vocab) == 28
    assert tm.vocab.idx_to_token[0] == " " and tm.vocab.idx_to_token[1] == "<unk>"
    assert tm.vocab.idx_to_token[2:] == list("abcdefghijklmnopqrstuvwxyz")
    assert tm.vocab[list("it has")] == [10, 21, 0, 9, 2, 20]
    assert len(tm.corpus) == 173428
    assert tm.X.shape == (15000, 32) and tm.Y.shape == (15000, 32)
    assert tm.num_batches(True) == 10 and tm.num_batches(False) == 5
    batches = list(tm.train_batches(0))
    assert [int(b.mask.sum()) for b in batches] == [1024] * 9 + [784]


def test_a_text_given_is_named_by_its_sha1_but_the_time_machine_s_own(real_text_path, tmp_path):
    """A run trained on ``text=`` of one's own resumed on the Time Machine (or another text) without a word:
    its vocabulary named no source, as the Time Machine's does."""
    from conftest import TINY, small_text
    from rnnjax.checkpoint import CheckpointError
    from rnnjax.train import fit
    own = small_text(5000)
    shape = TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val
    sha1 = hashlib.sha1(own.encode()).hexdigest()                  # as Corpus names the file of that text
    assert TimeMachine(*shape, text=own).vocab.source == sha1
    assert TimeMachine(*shape, text=own + "\udcff").vocab.source        # not UTF-8 encodable: named too
    from rnnjax.corpus import Corpus
    (tmp_path / "own.txt").write_text(own, encoding="utf-8")
    assert Corpus.from_config(tmp_path / "own.txt", TINY, cache=False).vocab.source == sha1
    real = Path(real_text_path).read_text(encoding="utf-8")
    for as_given in (real, real.replace("\n", "\r\n"), real.rstrip("\n")):      # d2l's text, however read
        assert TimeMachine(*shape, text=as_given).vocab == TimeMachine(*shape, path=real_text_path).vocab
    fit(TINY.replace(epochs=1), TimeMachine(*shape, text=own), tmp_path, devices=1, log=None)
    said = rf"trained on the text of SHA-1 {sha1} \(the data given is"
    for other in (TimeMachine(*shape, text=small_text(5000, seed=1)), TimeMachine(*shape, text=real)):
        with pytest.raises(CheckpointError, match=said):
            fit(TINY.replace(epochs=2), other, tmp_path, devices=1, log=None)


# --- d2l semantics on small text ---------------------------------------------------

def test_preprocess_and_vocab_follow_d2l(make_text):
    text = make_text()
    tokens = data.tokenize(data.preprocess(text))
    assert set(tokens) <= set("abcdefghijklmnopqrstuvwxyz ")
    vocab = Vocab(tokens)
    assert vocab.idx_to_token == sorted(set(tokens) | {"<unk>"})
    assert vocab["Z"] == vocab.unk == vocab.token_to_idx["<unk>"]
    ids = vocab[tokens[:50]]
    assert vocab.to_tokens(ids) == tokens[:50]
    assert vocab.to_tokens(ids[0]) == tokens[0]
    assert Vocab.from_json(vocab.to_json()) == vocab


def test_vocab_min_freq_and_reserved():
    vocab = Vocab(list("aaabbc"), min_freq=2, reserved_tokens=["<pad>"])
    assert vocab.idx_to_token == ["<pad>", "<unk>", "a", "b"]
    assert vocab["c"] == vocab.unk


def test_encode_names_unknown_characters():
    vocab = Vocab(list("it has"))
    assert vocab.encode("it") == vocab[list("it")]
    with pytest.raises(ValueError, match=r"\['I', '!'\]|\['!', 'I'\]"):
        vocab.encode("It!")


def test_windows_are_stride_one_and_shifted(make_text):
    tm = TimeMachine(16, 5, num_train=100, num_val=30, text=make_text())
    assert tm.X.shape == (130, 5)
    for i in (0, 1, 57, 129):
        np.testing.assert_array_equal(tm.X[i], tm.corpus[i:i + 5])
        np.testing.assert_array_equal(tm.Y[i], tm.corpus[i + 1:i + 6])


def test_train_batches_cover_the_train_windows_once_and_pad(make_text):
    tm = TimeMachine(16, 5, num_train=100, num_val=30, text=make_text())
    batches = list(tm.train_batches(epoch=3))
    assert len(batches) == tm.num_batches(True) == 7
    assert all(b.X.shape == (16, 5) and b.mask.shape == (16,) for b in batches)
    assert [int(b.mask.sum()) for b in batches] == [16] * 6 + [4]
    rows = np.concatenate([b.X[b.mask > 0] for b in batches])
    expected = tm.X[:100]
    assert sorted(map(tuple, rows)) == sorted(map(tuple, expected))
    assert np.all(batches[-1].X[4:] == tm.X[0]) and np.all(batches[-1].Y[4:] == tm.Y[0])   # window 0, masked


def test_windows_cut_the_same_batches_on_a_device(make_text):
    tm = TimeMachine(16, 5, num_train=100, num_val=30, text=make_text())
    windows = list(tm.train_windows(epoch=2))
    stacked = jax.tree.map(lambda *x: np.stack(x), *windows)
    on_device = jax.jit(lambda tokens, w: w.batch(tokens))(jnp.asarray(tm.tokens), stacked)
    for i, batch in enumerate(tm.train_batches(epoch=2)):
        for got, want in zip(on_device, batch, strict=True):
            np.testing.assert_array_equal(got[i], want)
    assert windows[0].starts.nbytes + windows[0].mask.nbytes < (batch.X.nbytes + batch.Y.nbytes) / 4


def test_shuffle_is_a_pure_function_of_seed_and_epoch(make_text):
    text = make_text()
    a = TimeMachine(16, 5, num_train=100, num_val=30, text=text, seed=1)
    b = TimeMachine(16, 5, num_train=100, num_val=30, text=text, seed=1)
    c = TimeMachine(16, 5, num_train=100, num_val=30, text=text, seed=2)
    first = [x.X for x in a.train_batches(0)]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate([x.X for x in b.train_batches(0)]))
    assert not np.array_equal(first[0], next(a.train_batches(1)).X)
    assert not np.array_equal(first[0], next(c.train_batches(0)).X)
    resumed = [x.X for x in a.train_batches(0, start=4)]
    np.testing.assert_array_equal(np.concatenate(first[4:]), np.concatenate(resumed))


def test_val_batches_in_order(make_text):
    tm = TimeMachine(16, 5, num_train=100, num_val=30, text=make_text())
    batches = list(tm.val_batches())
    rows = np.concatenate([b.X[b.mask > 0] for b in batches])
    np.testing.assert_array_equal(rows, tm.X[100:130])


@pytest.mark.parametrize("text", ["", "!!! 123", "a few words"])
def test_empty_or_tiny_corpus_is_a_clear_error(text):
    with pytest.raises(DataError, match="windows"):
        TimeMachine(4, 32, num_train=10, num_val=5, text=text)


def test_bad_sizes_are_a_clear_error(make_text):
    with pytest.raises(DataError, match="positive"):
        TimeMachine(0, 5, text=make_text())


def test_sizes_of_numpy_are_ints_and_of_other_types_one_sentence(make_text, tmp_path):
    """A NumPy batch size trained an epoch, then failed writing its record as JSON, its checkpoint lost; a
    float failed inside, a str or None on a comparison, a path of bytes in pathlib."""
    from rnnjax.config import ConfigError
    tm = TimeMachine(np.int64(16), np.int32(5), num_train=np.int64(100), num_val=np.uint8(30),
                     text=make_text(), seed=np.int64(1), steps_per_epoch=np.int64(4))
    sizes = (tm.batch_size, tm.num_steps, tm.num_train, tm.num_val, tm.seed, tm.steps_per_epoch)
    assert sizes == (16, 5, 100, 30, 1, 4) and all(type(x) is int for x in sizes)
    for bad, said in [(dict(batch_size=16.0), "batch_size must be a whole number, got 16.0."),
                      (dict(num_train="100"), "num_train must be a whole number, got '100'."),
                      (dict(batch_size=None), "batch_size must be a whole number, got None."),
                      (dict(seed=True), "seed must be a whole number, got True.")]:
        args = {"batch_size": 16, "num_steps": 5, "num_train": 100, **bad}
        with pytest.raises(ConfigError, match=f"^{re.escape(said)}$"):
            TimeMachine(**args, text=make_text())
    with pytest.raises(TypeError, match=r"^path is a file's path \(str or os\.PathLike\), got a bytes\.$"):
        TimeMachine(16, 5, path=b"timemachine.txt")
    with pytest.raises(TypeError, match=r"^text is the text itself, a str, got a list\.$"):
        TimeMachine(16, 5, text=["the time machine"])


# --- an epoch of a chosen number of steps --------------------------------------------

def test_steps_per_epoch_draws_full_batches_reproducibly(make_text):
    tm = TimeMachine(16, 5, num_train=100, num_val=30, text=make_text(), seed=3, steps_per_epoch=4)
    assert tm.num_batches(True) == 4 and tm.num_batches(False) == 2
    windows = list(tm.train_windows(epoch=2))
    assert len(windows) == 4 and all(w.mask.sum() == 16 for w in windows)
    starts = np.concatenate([w.starts for w in windows])
    assert starts.min() >= 0 and starts.max() < 100 and len(set(starts)) > 40      # drawn, not a pass
    again = [w.starts for w in tm.train_windows(epoch=2, start=1)]                  # resumed mid-epoch
    np.testing.assert_array_equal(np.concatenate(again), starts[16:])
    assert not np.array_equal(next(tm.train_windows(epoch=3)).starts, windows[0].starts)


def test_data_made_for_another_config_is_refused_saying_how_to_make_it(small_data, tmp_path):
    """A resume remakes the data from config.json: data of other batches would train on other windows."""
    from conftest import TINY
    from rnnjax.train import fit
    said = (r"^The data's batches are 16 x 8, the config's 8 x 8: train with the data loaded for the config "
            r"\(rnnjax.corpus.load\(config, ...\)\)\.$")
    with pytest.raises(ValueError, match=said):
        fit(TINY.replace(batch_size=8), small_data, tmp_path / "w", devices=1, log=None)
    with pytest.raises(ValueError, match=r"^The data has 0 steps an epoch and char tokens, the config 5 and "
                                         r"char: train with the config it was loaded with"):
        fit(TINY.replace(steps_per_epoch=5), small_data, tmp_path / "w", devices=1, log=None)
    assert not (tmp_path / "w").exists()
