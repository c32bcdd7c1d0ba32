import os
import pathlib
import re

import numpy as np
import pytest

from conftest import TEXT, TINY, WORDS, cache_entries, other_alphabet

from rnnjax import checkpoint, corpus, data, saved, source
from rnnjax.checkpoint import CheckpointError
from rnnjax.corpus import Corpus
from rnnjax.data import DataError, TimeMachine
from rnnjax.train import fit
from rnnjax.vocab import Vocab


def test_characters_of_another_alphabet_with_d2ls_vocabulary_of_the_training_part():
    text = other_alphabet() + "§"                     # '§' only in the validation tail
    c = Corpus(None, 16, 8, text=text)
    train = text[:c.train_end]
    assert c.train_end == int(len(text) * 0.9) and len(c.stream) == len(text)
    assert c.vocab.idx_to_token == Vocab(list(train)).idx_to_token
    assert {"Ω", "Æ", "4", "X", "-", "ü", ".", "日", "\n"} <= set(c.vocab.idx_to_token)
    assert c.vocab.decode(c.stream[:c.train_end]) == train
    assert c.stream[-1] == c.vocab.unk and "§" not in c.vocab.token_to_idx
    assert c.vocab.source == Vocab.from_json(c.vocab.to_json()).source is not None


def test_words_with_min_freq_are_d2ls_vocab():
    text = other_alphabet() + " rare rare"
    c = Corpus(None, 16, 4, text=text, token="word", min_freq=100)
    train = text.split()[:c.train_end]
    assert c.vocab.idx_to_token == Vocab(train, min_freq=100).idx_to_token and c.vocab.kind == "word"
    words = len(text.split())
    assert c.describe() == (f"data: {len(c.vocab)} words in the vocabulary; {c.num_train:,} training windows "
                            f"of 4 in the first {c.num_train + 4:,} of the text's {words:,} words, "
                            f"{c.num_val} validation windows across its last {words - c.train_end:,}")
    expected = [c.vocab[w] for w in text.split()]
    np.testing.assert_array_equal(c.stream, expected)
    assert c.stream[-1] == c.vocab.unk and c.vocab.decode(c.stream[:3]) == " ".join(text.split()[:3])


# --- splits -----------------------------------------------------------------------


def test_a_cap_of_training_windows_above_what_the_text_gives_is_said():
    """--num-train 100000 on a short text trained on its 117 windows, unsaid."""
    with pytest.warns(UserWarning, match=r"^num_train=1000000 is more than the [\d,]+ training windows the "
                                         r"text gives: it trains on those\.$"):
        c = Corpus(None, 16, 8, text=other_alphabet(), num_train=10 ** 6)
    assert c.num_train == c.train_end - 8


def test_a_split_of_one_window_each_is_said_in_the_singular():
    c = Corpus(None, 1, 4, text="the quick brown fox jumps over the lazy dog. " * 3, num_train=1, num_val=1)
    assert c.describe() == ("data: 29 characters in the vocabulary; 1 training window of 4 in the first 5 of "
                            "the text's 135 characters, 1 validation window across its last 14")


@pytest.mark.parametrize("caps", [(0, 5000), (300, 40)])
def test_no_window_lies_in_both_parts_and_caps_hold(caps):
    num_train, num_val = caps
    c = Corpus(None, 16, 8, text=other_alphabet(), num_train=num_train, num_val=num_val)
    # What a run says of them: capped, the training windows read a head of the head (it said "all the text").
    assert f"training windows of 8 in the first {c.num_train + 8:,} of the text's {len(c.stream):,} " \
           f"characters, {c.num_val:,} validation windows across its last {len(c.stream) - c.train_end:,}" \
           in c.describe()
    rows = np.concatenate([w.starts[w.mask > 0] for w in c.train_windows(epoch=1)])
    assert sorted(rows) == list(range(c.num_train))                    # each train window once
    assert rows.max() + c.num_steps + 1 <= c.train_end                  # inside the head
    val = c.val_starts()
    assert len(val) == len(set(val)) == c.num_val
    assert val.min() == c.train_end and val.max() + c.num_steps + 1 <= len(c.tokens)
    if num_train:
        assert (c.num_train, c.num_val) == caps
        assert val.max() > c.train_end + 0.9 * (len(c.tokens) - c.train_end - c.num_steps - 1) - 1   # spread
    else:
        assert c.num_train == c.train_end - c.num_steps
    batch = next(c.val_batches())
    np.testing.assert_array_equal(batch.X[0], c.tokens[val[0]:val[0] + c.num_steps])


@pytest.mark.filterwarnings("ignore:batch_size=1024 is more than the 100")    # splits compared, not trained
def test_d2ls_split_of_the_time_machine_is_the_time_machine(real_text_path):
    config = TINY.replace(batch_size=1024, num_steps=32, num_train=10000, num_val=5000)
    assert type(corpus.load(config, data=real_text_path)) is TimeMachine
    tm = TimeMachine(1024, 32, path=real_text_path)
    c = Corpus(real_text_path, 1024, 32, preprocess="d2l", val_fraction=0.0, num_train=10000, num_val=5000,
               cache=False)
    assert c.vocab.idx_to_token == tm.vocab.idx_to_token and c.vocab.differs(tm.vocab).startswith("the text")
    np.testing.assert_array_equal(c.tokens, tm.tokens)
    np.testing.assert_array_equal(np.concatenate([b.X for b in c.val_batches()]),
                                  np.concatenate([b.X for b in tm.val_batches()]))
    # What a run says of its data: d2l's split reads the book's first 15,032 characters (docs/results.md).
    said = ("data: 28 characters in the vocabulary; 10,000 training and 5,000 validation windows of 32, in "
            "the cleaned text's first 15,032 of 173,428 characters")     # 178,979 before d2l's cleaning
    assert tm.describe() == c.describe() == said
    words = corpus.load(config.replace(token="word", num_train=100, num_val=50), data=real_text_path)
    assert words.vocab.idx_to_token == Vocab(data.preprocess(tm_text(real_text_path)).split()).idx_to_token
    assert words.prompt == "it has"         # the command line's samples continue d2l's prompt
    # --min-freq 50 drops "has" (22 times): the prompt is the text's first words (it stopped the run before)
    rare = corpus.load(config.replace(token="word", min_freq=50, num_train=100, num_val=50),
                       data=real_text_path)
    assert "has" not in rare.vocab.token_to_idx and rare.prompt == "the time"
    chars = corpus.load(config.replace(min_freq=9000, num_train=100, num_val=50), data=real_text_path)
    assert "h" not in chars.vocab.token_to_idx and chars.prompt == "t"
    # In the vocabulary of a run of d2l's (a restored one's): that run's data, it resumes on (it was refused
    # as "the text of SHA-1 090b5e7e...", the Time Machine's own).
    d2l = corpus.load(config.replace(preprocess="d2l"), data=real_text_path, vocab=tm.vocab)
    assert d2l.vocab == tm.vocab and d2l.vocab.differs(tm.vocab) is None
    np.testing.assert_array_equal(d2l.tokens, tm.tokens)


def tm_text(path):
    return open(path, encoding="utf-8").read()


# --- bad text: one sentence, nothing written --------------------------------------

@pytest.mark.parametrize("content, match", [
    (b"", "is empty"),
    (b"PK\x03\x04\x00\x00binary", "looks binary"),
    ("café crème".encode("latin-1"), "not UTF-8 text .byte 0xe9 at offset 3"),
    (b"too short", "makes 9 tokens .* too few for a training window and a validation window"),
    (b"a", "makes 1 token .* too few"),
    (b"the time machine " * 3, r"makes 51 tokens .* too few for a training window and a validation window "
                               r"of num_steps \+ 1 = 9 tokens each: split by val_fraction=0.1, the last "
                               r"0.1, which validates, is 6 tokens\.$"),
])
def test_bad_text_is_one_sentence_and_nothing_is_cached(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    before = cache_entries()
    with pytest.raises(DataError, match=match) as e:
        Corpus.from_config(path, TEXT)
    assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")
    assert cache_entries() == before


@pytest.mark.parametrize("val_fraction, short", [
    (0.9, "the first 0.1 of the tokens, which trains, is 15 tokens"),
    (0.5, "the first 0.5 of the tokens, which trains, is 76 tokens and the last 0.5, which validates, is 77 "
          "tokens")])
def test_the_part_of_a_split_too_short_for_a_window_is_the_one_named(tmp_path, val_fraction, short):
    """The validating tail was named where the training head was short."""
    path = tmp_path / "short.txt"
    path.write_text("the time machine " * 9)        # 153 tokens
    num_steps = 15 if val_fraction == 0.9 else 80
    with pytest.raises(DataError, match=re.escape(f"split by val_fraction={val_fraction}, {short}.")):
        Corpus.from_config(path, TEXT.replace(val_fraction=val_fraction, num_steps=num_steps))


def test_missing_file_or_a_folder(tmp_path):
    with pytest.raises(DataError, match="No such file"):
        Corpus.from_config(tmp_path / "nope.txt", TEXT)
    with pytest.raises(DataError, match="is a directory"):
        Corpus.from_config(tmp_path, TEXT)


def test_a_fifo_an_unreadable_file_and_a_vocabulary_of_unk_alone_are_one_sentence(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is not a regular file"):
        corpus.load(TEXT, text=fifo)
    text = tmp_path / "ok.txt"
    text.write_text("abc def " * 200)
    with pytest.raises(DataError, match="^min_freq=1000000 leaves no char but <unk>"):
        corpus.load(TEXT.replace(min_freq=1000000), text=text)

    def unreadable(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(pathlib.Path, "read_bytes", unreadable)
    monkeypatch.setattr(corpus, "sha1_of", lambda path: unreadable(path))
    with pytest.raises(DataError, match=r"Cannot read .*ok.txt \(Permission denied\)\."):
        corpus.load(TEXT, text=text)


def test_cheap_checks_come_before_the_file_is_hashed_or_read(tmp_path, monkeypatch):
    def hashed(*args):
        raise AssertionError("the whole file was hashed or read")
    monkeypatch.setattr(corpus, "sha1_of", hashed)
    monkeypatch.setattr(pathlib.Path, "read_bytes", hashed)
    path = tmp_path / "big.txt"
    path.write_bytes(b"\0" * 10 + b"text" * 20000)
    with pytest.raises(DataError, match="looks binary, not text .a NUL byte at offset 0."):
        Corpus.from_config(path, TEXT)
    path.write_bytes(b"ok \xe9t\xe9" + b"text" * 20000)
    with pytest.raises(DataError, match="not UTF-8 text .byte 0xe9 at offset 3."):
        Corpus.from_config(path, TEXT)
    path.write_bytes("ab€".encode() * 30000)           # the first bytes end inside a character: text
    sysconf = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_PAGE_SIZE" else
                        100000 if name == "SC_PHYS_PAGES" else sysconf(name))
    with pytest.raises(DataError, match=r"big.txt \(0.0 GiB\) is too large for this machine's memory"):
        Corpus.from_config(path, TEXT)


@pytest.mark.parametrize("where", ["read", "tokenize"])
def test_running_out_of_memory_is_one_sentence_and_nothing_is_cached(text_file, monkeypatch, tmp_path, where):
    monkeypatch.setenv(source.ENV_CACHE, str(tmp_path / "cache"))

    def out_of_memory(*args):
        raise MemoryError
    monkeypatch.setattr(*((pathlib.Path, "read_bytes") if where == "read" else (corpus, "tokenize")),
                        out_of_memory)
    with pytest.raises(DataError, match=r"other.txt \(0.0 GiB\) is too large for this machine's memory to "
                       r"tokenize: train on a part of it\.$"):
        corpus.load(TEXT, text=text_file)
    assert cache_entries() == []


def test_a_vocabulary_too_large_for_memory_is_named(text_file, monkeypatch):
    words = " ".join(f"w{i}" for i in range(4000))
    text_file.write_text(words)
    sysconf = os.sysconf
    memory = 16 * 8 * (64 * 16 + 2000 * 16)           # the batch fits; 4000 words' logits do not
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_PAGE_SIZE" else
                        memory if name == "SC_PHYS_PAGES" else sysconf(name))
    before = cache_entries()
    with pytest.raises(DataError, match=r"vocabulary of 3,601 words .* raise min_freq, train on characters "
                                        r"\(token='char'\)"):
        Corpus.from_config(text_file, TEXT.replace(token="word"))
    assert cache_entries() == before
    Corpus.from_config(text_file, TEXT)                # 12 characters fit


# --- training on it ---------------------------------------------------------------

@pytest.mark.slow
def test_train_resume_restore_without_the_file_and_generate(text_file, tmp_path):
    c = Corpus.from_config(text_file, TEXT)
    straight = fit(TEXT, c, tmp_path / "straight", devices=1, log=None)
    fit(TEXT.replace(epochs=1), c, tmp_path / "run", devices=1, log=None)
    resumed = fit(TEXT, Corpus.from_config(text_file, TEXT), tmp_path / "run", devices=1, log=None)
    assert [r["val_ppl"] for r in resumed.history] == [r["val_ppl"] for r in straight.history]
    text_file.write_text(other_alphabet(seed=2))
    other = Corpus.from_config(text_file, TEXT)
    with pytest.raises(CheckpointError, match=r"trained on the text of SHA-1 \w+ \(the data given is the"):
        fit(TEXT.replace(epochs=3), other, tmp_path / "run", devices=1, log=None)
    text_file.unlink()
    restored = checkpoint.restore(tmp_path / "run")
    assert restored.vocab == c.vocab and restored.config == TEXT
    out = restored.predict("Ωmega 4", 30)
    assert out.startswith("Ωmega 4") and len(out) == 37 and set(out) <= set(c.vocab.idx_to_token)


@pytest.mark.slow
def test_a_restored_run_fine_tunes_on_another_text_in_its_own_vocabulary(text_file, tmp_path, monkeypatch):
    """Another text made its own vocabulary, which the run's params do not fit: with ``vocab`` it is read
    in the run's tokens (others as ``<unk>``), said to be of its own text, and not cached."""
    monkeypatch.setenv(source.ENV_CACHE, str(tmp_path / "cache"))
    fit(TEXT.replace(epochs=1), Corpus.from_config(text_file, TEXT), tmp_path / "first", devices=1, log=None)
    run = checkpoint.restore(tmp_path / "first")
    entries = cache_entries()
    other = tmp_path / "another.txt"
    other.write_text(other_alphabet(seed=3) + "ß∂", encoding="utf-8")        # two characters it never saw
    tuned = corpus.load(TEXT, text=other, vocab=run.vocab)
    assert tuned.vocab.idx_to_token == run.vocab.idx_to_token and tuned.vocab.source != run.vocab.source
    assert tuned.vocab.decode(tuned.stream[-2:]) == "<unk><unk>" and cache_entries() == entries
    own = Corpus.from_config(other, TEXT)
    known = np.isin(np.asarray(own.vocab.idx_to_token)[own.stream], run.vocab.idx_to_token)
    np.testing.assert_array_equal(np.asarray(tuned.vocab.idx_to_token)[tuned.stream][known],
                                  np.asarray(own.vocab.idx_to_token)[own.stream][known])
    same_size = own.vocab.idx_to_token[:len(run.vocab) - 1] + ["ß"]        # each token another's row
    with pytest.raises(ValueError, match=r"^fit's params are a run's trained in another vocabulary than the "
                                         r"data's: load the data in the run's tokens, "):
        fit(TEXT, corpus.load(TEXT, text=other, vocab=Vocab.from_json({"idx_to_token": same_size})),
            tmp_path / "tuned", devices=1, params=run, log=None)
    assert not (tmp_path / "tuned").exists()
    lines = []
    fit(TEXT.replace(epochs=1), tuned, tmp_path / "tuned", devices=1, params=run, log=lines.append)
    assert lines[0].startswith("new run of 1 epoch") and lines[0].endswith("; from the params given")
    origin = {"workdir": str((tmp_path / "first").absolute()), "step": run.step,
              "meta_checksum": run.meta["meta_checksum"]}
    assert saved.init_from(tmp_path / "tuned") == origin and saved.init_from(tmp_path / "first") is None
    fit(TEXT, corpus.load(TEXT, text=other, vocab=run.vocab), tmp_path / "tuned", devices=1, log=None)
    assert saved.init_from(tmp_path / "tuned") == origin        # a resume keeps it
    with pytest.raises(CheckpointError, match=r"trained on the text of SHA-1 \w+ \(the data given is the"):
        fit(TEXT.replace(epochs=3), corpus.load(TEXT, text=text_file, vocab=run.vocab), tmp_path / "tuned",
            devices=1, log=None)
    with pytest.raises(DataError, match=r"^The vocabulary given is of char tokens, and token='word' asks for "
                                        r"others\.$"):
        corpus.load(TEXT.replace(token="word"), text=other, vocab=run.vocab)


def test_words_train_restore_and_generate_joined_by_spaces(text_file, tmp_path):
    config = TEXT.replace(token="word", num_steps=4)
    c = Corpus.from_config(text_file, config)
    fit(config, c, tmp_path, devices=1, log=None)
    restored = checkpoint.restore(tmp_path)
    assert restored.vocab.kind == "word" and restored.vocab == c.vocab
    out = restored.predict("Zürich. 日本", 6, temperature=1.0)
    words = out.split(" ")
    assert words[:2] == ["Zürich.", "日本"] and len(words) == 8 and set(words) <= set(WORDS) | {"<unk>"}
    with pytest.raises(ValueError, match=r"words outside the vocabulary: \['Zurich'\]"):
        restored.predict("Zurich", 3)


def test_steps_per_epoch_sets_the_epoch(text_file, tmp_path):
    config = TEXT.replace(steps_per_epoch=3, num_train=0)
    c = Corpus.from_config(text_file, config)
    result = fit(config, c, tmp_path, devices=1, log=None)
    assert int(result.state.step) == 6 and [r["step"] for r in result.history] == [3, 6]


def test_load_refuses_a_config_that_is_not_one_in_one_sentence():
    message = r"^config must be an rnnjax.Config \(Config.from_json reads one from JSON\), got a dict\.$"
    with pytest.raises(TypeError, match=message):
        corpus.load(TINY.to_json())
    both = r"^load takes text \(your own file\) or data \(the Time Machine's\), not both\.$"
    with pytest.raises(ValueError, match=both):           # the command line refuses the pair too
        corpus.load(TINY, text="book.txt", data="timemachine.txt")
    with pytest.raises(TypeError, match=r"^load's text is a path \(str or os.PathLike\), got an int\.$"):
        corpus.load(TINY, text=3)
    with pytest.raises(DataError, match=r"^load's text is empty \(''\); give a UTF-8 text file's path\.$"):
        corpus.load(TINY, text="")          # it read ". is a directory"
    with pytest.raises(DataError, match=r"^load's data is empty \(''\); leave it out \(None\) to take "):
        corpus.load(TINY, data="")          # it took the default file, or downloaded
    book = "The Time Machine, by H. G. Wells\n\n" + "I\n" * 3000        # the text itself (Corpus's text=)
    line = "the time traveller " * 20           # one line, of no name a file system has: 380 characters
    for name, given, size in (("text", book, "6,034"), ("data", "x" * 5000, "5,000"), ("text", "a\nb", "3"),
                              ("text", line, "380"), ("text", "and/or the man/woman " * 200, "4,200")):
        said = (rf"^load's {name} is a file's path, and this one is {size} characters \('.{{1,40}}'\.\.\.\), "
                r"a text itself: write it to a file and give the file's path \(rnnjax.Corpus takes a text "
                r"itself, as text=\.\.\.\)\.$")
        with pytest.raises(DataError, match=said):       # it quoted the whole book, "(File name too long)"
            corpus.load(TINY, **{name: given})
    for make in (lambda: Corpus(book, 4, 8), lambda: TimeMachine(4, 8, path=book)):     # given so directly
        with pytest.raises(DataError, match=r"^path is a file's path, and this one is 6,034 characters "):
            make()


def test_a_text_read_mostly_as_unknown_in_the_vocabulary_given_is_said(tmp_path, monkeypatch):
    """A d2l run's vocabulary (lowercase) fine-tuned on a text kept raw read a quarter of it as <unk>,
    silently."""
    import warnings
    monkeypatch.setenv(source.ENV_CACHE, str(tmp_path / "cache"))
    path = tmp_path / "book.txt"
    path.write_text("The Time Traveller (for so it will be convenient to speak of him) WAS expounding. " * 40)
    cleaned = TEXT.replace(preprocess="d2l")
    vocab = Corpus.from_config(path, cleaned).vocab
    said = (r"^\d+% more of the text's tokens are read as <unk> in the vocabulary given than in the "
            r"text's own: 7 it lacks \('\(', '\)', '\.', 'A', 'S', 'T', 'W'\), which training on it cannot "
            r"add\. Where the text was cleaned otherwise than the vocabulary's run's, clean it alike \(its "
            r"config's preprocess and token; here preprocess='raw'\)\.$")   # not new words, as if misclean
    with pytest.warns(UserWarning, match=said):
        raw = corpus.load(TEXT, text=path, vocab=vocab)
    assert np.mean(raw.stream == vocab.unk) > corpus.UNKNOWN_SAID
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corpus.load(cleaned, text=path, vocab=vocab)
        words = TEXT.replace(token="word", min_freq=3)       # its rare words are <unk> in its own run too
        path.write_text(path.read_text() + " ".join(f"w{i}" for i in range(60)))
        own = Corpus.from_config(path, words).vocab
        assert np.mean(corpus.load(words, text=path, vocab=own).stream == own.unk) > corpus.UNKNOWN_SAID
    prose = tmp_path / "prose.txt"      # a book's capitals and stops: under 5% of it, once unsaid (day 6)
    prose.write_text("the time traveller was expounding a recondite matter to us, his grey eyes shone. " * 40)
    with pytest.warns(UserWarning, match=r"^\d+% more of the text's tokens are read as <unk>"):
        some = corpus.load(TEXT, text=prose, vocab=vocab)
    assert corpus.UNKNOWN_SAID < np.mean(some.stream == vocab.unk) < 0.05
    shouted = tmp_path / "shouted.txt"         # every word unknown, whatever min_freq drops
    shouted.write_text(path.read_text().upper())
    with pytest.warns(UserWarning, match=r"^\d+% more of the text's tokens are read as <unk>"):
        corpus.load(words, text=shouted, vocab=own)


def test_a_batch_larger_than_an_epoch_s_windows_is_said(tmp_path):
    """A batch of 100000 on a text of 14,200 windows trained one padded batch an epoch, unsaid (new user);
    said, not refused: a workdir trained so before resumes (hostile pass 3)."""
    import warnings
    path = tmp_path / "short.txt"
    path.write_text(other_alphabet())
    windows = Corpus.from_config(path, TEXT.replace(batch_size=1, num_train=0)).num_train
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Corpus.from_config(path, TEXT.replace(batch_size=windows, num_train=0))     # every window, one batch
        drawn = TEXT.replace(batch_size=windows + 1, num_train=0, steps_per_epoch=3)     # with replacement
        Corpus.from_config(path, drawn)
    with pytest.warns(UserWarning, match=rf"^batch_size={windows + 1} is more than the {windows:,} training "
                                         rf"windows .*short.txt gives an epoch: each epoch is one batch of "
                                         rf"them, the rest padding \(a new run of batch_size={windows} "
                                         "trains alike"):
        Corpus.from_config(path, TEXT.replace(batch_size=windows + 1, num_train=0))
    with pytest.warns(UserWarning, match=r"more than the 10 training windows"):      # as --num-train asks
        Corpus.from_config(path, TEXT.replace(batch_size=16, num_train=10))
    # d2l's split too: --batch-size 20000 trained 10,000 windows a step, unsaid (new-user pass)
    one_batch = r"^batch_size=64 is more than the 50 training windows: each epoch "
    with pytest.warns(UserWarning, match=one_batch) as said:
        data = TimeMachine(64, 8, num_train=50, num_val=10, text=other_alphabet())
    assert said[0].filename == __file__       # the line that made it (a resume cannot change it: "new run")
    (batch,) = data.train_windows(epoch=1)
    assert data.num_batches() == 1 and batch.mask.sum() == 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TimeMachine(50, 8, num_train=50, num_val=10, text=other_alphabet())
        TimeMachine(64, 8, num_train=50, num_val=10, text=other_alphabet(), steps_per_epoch=2)


def test_sizes_of_numpy_are_ints_and_a_val_fraction_that_is_no_fraction_is_one_sentence():
    from rnnjax.config import ConfigError
    c = Corpus(None, np.int64(16), np.int32(8), text=other_alphabet(), num_val=np.int64(50),
               val_fraction=np.float32(0.25))
    assert (c.batch_size, c.num_steps, c.val_fraction) == (16, 8, 0.25) and type(c.batch_size) is int
    with pytest.raises(ConfigError, match=r"^min_freq must be a whole number, got 1\.5\.$"):
        Corpus(None, 16, 8, text=other_alphabet(), min_freq=1.5)
    for bad in ("0.1", float("nan"), 1.0):
        said = rf"^val_fraction must be in \[0, 1\), got {re.escape(repr(bad))}\.$"
        with pytest.raises(DataError, match=said):
            Corpus(None, 16, 8, text=other_alphabet(), val_fraction=bad)
