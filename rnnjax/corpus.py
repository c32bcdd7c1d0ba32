"""Any UTF-8 text as the corpus: characters or words, at any size.

``Corpus(path, batch_size, num_steps, ...)`` tokenizes a text with NumPy
(``rnnjax.tokens``, fast at any size), builds d2l's
vocabulary from its training part only (``<unk>`` for the rest and for tokens
rarer than ``min_freq``), and keeps the token stream as the only copy of the
data: windows are offsets into it (``WindowedText``). The validation part is
the tail ``val_fraction`` of the stream, so no window overlaps both parts;
``num_train`` (0: all) and ``num_val`` cap the windows, the validation ones
spread evenly over the tail. ``val_fraction=0`` splits as d2l does: the first
``num_train`` windows, then ``num_val``, the vocabulary from the whole text.

A file's stream and vocabulary are cached (``.npy`` and JSON) under
``rnnjax.source.cache_dir()/corpus`` (``rnnjax.token_cache``), keyed by the
file's SHA-1 and the token options; the vocabulary carries that SHA-1 into
the checkpoints, so a run resumes only on the text it was trained on.
"""

from __future__ import annotations

import hashlib
import numbers
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rnnjax.config import Config, check_is_config
from rnnjax.spelling import got, plural, spelt
from rnnjax.data import TimeMachine, WindowedText, check_not_text, check_source, wholes
from rnnjax.source import (SHA1, TOO_LARGE, DataError, check_file, read_text, sha1_of,
                           timemachine_path)
from rnnjax import memory, token_cache
from rnnjax.protocol import StepProblem
from rnnjax.tokens import CHUNK, tokenize
from rnnjax.vocab import Vocab

# What --text changes in the preset before the flags: a text of one's own is taken as it is, its tail
# validates, and every other window trains.
TEXT_DEFAULTS = {"preprocess": "raw", "val_fraction": 0.1, "num_train": 0}


def encode(ids: np.ndarray, name: Callable[[int], str], train_end: int, min_freq: int, kind: str,
           source: str | None, vocab: Vocab | None = None) -> tuple[Vocab, np.ndarray]:
    """d2l's vocabulary of ``ids[:train_end]`` (or ``vocab``'s tokens, ``<unk>`` for others), and ``ids``
    as its indices (int32, converted in place)."""
    size = int(ids.max()) + 1 if len(ids) else 0
    counts = np.zeros(size, np.int64)
    counted = train_end if vocab is None else len(ids)      # the tokens of a vocabulary given: all of them
    for lo in range(0, counted, CHUNK):
        counts += np.bincount(ids[lo:min(lo + CHUNK, counted)], minlength=size)
    if vocab is None:
        vocab, table = Vocab.from_counts(counts, name, min_freq, kind=kind, source=source)
    else:           # another run's tokens, said to be of this text: a resume checks it is the same text
        table = np.full(size, vocab.unk, np.int32)
        for i in np.flatnonzero(counts):
            table[i] = vocab[name(int(i))]
        source = None if source == SHA1 and vocab.source is None else source     # the Time Machine, as d2l's
        vocab = Vocab.from_json({"idx_to_token": vocab.idx_to_token, "token": kind, "text_sha1": source})
    stream = ids.view(np.int32)
    for lo in range(0, len(ids), CHUNK):
        stream[lo:lo + CHUNK] = table[ids[lo:lo + CHUNK]]
    return vocab, stream


class Corpus(WindowedText):
    """A UTF-8 text (a file ``path``, or ``text``) as windows of ``num_steps + 1`` tokens (module doc).

    ``check_vocab(vocab_size)`` runs before anything is cached (``from_config``: the memory check).
    """

    def __init__(self, path: str | os.PathLike | None, batch_size: int, num_steps: int, *,
                 text: str | None = None, token: str = "char", preprocess: str = "raw", min_freq: int = 0,
                 val_fraction: float = 0.1, num_train: int = 0, num_val: int = 5000, steps_per_epoch: int = 0,
                 seed: int = 0, cache: bool = True, check_vocab: Callable[[int], None] | None = None,
                 vocab: Vocab | None = None):
        batch_size, num_steps, min_freq, num_train, num_val, steps_per_epoch, seed = wholes(
            batch_size=batch_size, num_steps=num_steps, min_freq=min_freq, num_train=num_train,
            num_val=num_val, steps_per_epoch=steps_per_epoch, seed=seed)
        check_source(path, text)
        if not isinstance(val_fraction, numbers.Real) or not 0 <= val_fraction < 1:      # NaN fails this too
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
        val_fraction = float(val_fraction)
        if batch_size < 1 or num_steps < 1 or num_val < 0 or num_train < (0 if val_fraction else 1):
            raise DataError(f"batch_size and num_steps must be positive, num_val >= 0 and num_train >= 1 (or "
                            f"0 with a val_fraction); got {batch_size}, {num_steps}, {num_val}, {num_train}.")
        self.batch_size, self.num_steps, self.seed = batch_size, num_steps, seed
        self.steps_per_epoch, self.val_fraction = steps_per_epoch, val_fraction
        if path is None and text is None:
            raise DataError("A Corpus needs a path or a text.")
        self.name = str(path) if text is None else "the text"
        self.path = Path(path).absolute() if text is None else None    # the file read: config.json names it
        if vocab is not None and vocab.kind != token:
            raise DataError(f"The vocabulary given is of {vocab.kind} tokens, and {spelt('token', token)} "
                            "asks for others.")
        cache = cache and vocab is None
        self.options = options = {"token": token, "preprocess": preprocess, "min_freq": min_freq,
                                  "val_fraction": val_fraction}
        if text is None:
            size = check_file(path)             # before the whole file is hashed or read
            sha1 = sha1_of(path)
            cached = token_cache.read(token_cache.path(sha1, options), options) if cache else None
        else:
            size, sha1, cached, cache = len(text), hashlib.sha1(text.encode()).hexdigest(), None, False
        self.cache_hit = cached is not None
        if cached is None:
            try:
                made = self._make(path, text, sha1, token, preprocess, min_freq, vocab)
            except MemoryError:         # raised after this handler, so that the frames holding the text go
                made = None
            if made is None:
                raise DataError(TOO_LARGE.format(self.name, size / 2 ** 30))
            self.vocab, self.stream, train_end = made
        else:
            self.vocab, self.stream = cached
            train_end = self._train_end(len(self.stream), token, preprocess)
        self.train_end = train_end
        if len(self.vocab) < 2:
            raise DataError(f"{spelt('min_freq', min_freq)} leaves no {token} but <unk> in the vocabulary: "
                            "lower it.")
        self._split(num_train, num_val)
        self.warn_if_one_batch(f" {self.name} gives an epoch")
        if check_vocab is not None:
            check_vocab(len(self.vocab))
        if cache and not self.cache_hit:
            token_cache.write(token_cache.path(self.vocab.source, options), options, self.vocab, self.stream)
        self.prompt = self._prompt()

    def _make(self, path, text: str | None, sha1: str, token: str, preprocess: str, min_freq: int,
              vocab: Vocab | None) -> tuple[Vocab, np.ndarray, int]:
        """``(vocab, stream, train_end)`` of ``text``, else of the file ``path`` (read here)."""
        if text is None:
            text, sha1 = read_text(path)
        ids, name = tokenize(text, token, preprocess)
        del text
        train_end = self._train_end(len(ids), token, preprocess)
        return *encode(ids, name, train_end, min_freq, token, sha1, vocab), train_end

    def _train_end(self, num_tokens: int, token: str, preprocess: str) -> int:
        """Where the validation tail starts (the end of the stream for d2l's split); ``DataError`` if either
        part is shorter than a window."""
        window = self.num_steps + 1
        train_end = int(num_tokens * (1 - self.val_fraction)) if self.val_fraction else num_tokens
        if train_end < window or (self.val_fraction and num_tokens - train_end < window):
            if not self.val_fraction:
                need = f"one window of {spelt('num_steps')} + 1 = {window} tokens"
            else:
                val, short = num_tokens - train_end, []
                if train_end < window:
                    short.append(f"the first {1 - self.val_fraction:g} of the tokens, which trains, is "
                                 f"{plural(train_end, 'token')}")
                if val < window:
                    short.append(f"the last {self.val_fraction:g}, which validates, is "
                                 f"{plural(val, 'token')}")
                need = (f"a training window and a validation window of {spelt('num_steps')} + 1 = {window} "
                        f"tokens each: split by {spelt('val_fraction', self.val_fraction)}, "
                        f"{' and '.join(short)}")
            raise DataError(f"{self.name} makes {plural(num_tokens, 'token')} ({spelt('token', token)}, "
                            f"{spelt('preprocess', preprocess)}), too few for {need}.")
        return train_end

    def split(self, num_train: int, num_val: int) -> tuple[int, int]:
        """The train and validation windows that ``num_train`` and ``num_val`` ask for give this text."""
        windows = self.train_end - self.num_steps
        if not self.val_fraction:           # d2l's: num_train windows, then num_val
            if windows < num_train + num_val:
                raise DataError(f"{self.name} has {len(self.stream):,} tokens, which make {windows:,} "
                                f"windows of {spelt('num_steps')} + 1 = {self.num_steps + 1:,}; "
                                f"{spelt('num_train')} + {spelt('num_val')} = {num_train + num_val:,} are "
                                f"needed (or split by {spelt('val_fraction')}).")
            return num_train, num_val
        val_windows = len(self.stream) - self.num_steps - self.train_end
        return (min(num_train, windows) if num_train else windows,
                min(num_val, val_windows) if num_val else val_windows)

    def _split(self, num_train: int, num_val: int) -> None:
        self.num_train, self.num_val = self.split(num_train, num_val)
        if self.val_fraction and num_train > self.num_train:      # a cap above the text: said, not silent
            warnings.warn(f"{spelt('num_train', num_train)} is more than the "
                          f"{plural(self.num_train, 'training window')} {self.name} gives: it trains on "
                          "those.", stacklevel=4)
        if not self.val_fraction:
            self.tokens = self.stream[: self.num_train + self.num_val + self.num_steps]
            return
        self._val_windows = len(self.stream) - self.num_steps - self.train_end
        self.tokens = self.stream

    def text_size(self) -> int:
        return len(self.stream)

    def val_starts(self) -> np.ndarray:
        if not self.val_fraction:
            return np.arange(self.num_train, self.num_train + self.num_val)
        # Spread over the whole tail: a capped validation set samples all of it.
        return self.train_end + np.arange(self.num_val, dtype=np.int64) * self._val_windows // self.num_val

    def _prompt(self) -> str:
        """The text's first tokens (6 characters, or 2 words), up to any ``<unk>``: what the command line
        shows the model continue."""
        ids = self.stream[: 6 if self.vocab.kind == "char" else 2]
        unk = np.flatnonzero(ids == self.vocab.unk)
        ids = ids[: unk[0]] if len(unk) else ids
        if not len(ids):
            ids = [i for i, t in enumerate(self.vocab.idx_to_token) if t != "<unk>"][:1]
        return self.vocab.decode(ids)

    @classmethod
    def from_config(cls, path: str | os.PathLike | None, config: Config, **kwargs) -> Corpus:
        """The corpus ``config`` asks for; a vocabulary too large for this machine's memory at its batch
        shape is a ``DataError`` before anything is written."""
        def check_vocab(size: int) -> None:
            try:
                memory.check(config, size, 1)
            except memory.TooLarge as e:
                try:
                    memory.check(config, 1, 1)       # the batch alone is too large: start.plan says so
                except StepProblem:     # a cell that steps on its text's width only: its estimate says it
                    raise e from None
                chars = f", train on characters ({spelt('token', 'char')})" if config.token == "word" else ""
                raise DataError(
                    f"The vocabulary of {size:,} {config.token}s is too large for this machine's memory at "
                    f"{spelt('batch_size', config.batch_size)} x {spelt('num_steps', config.num_steps)}: "
                    f"raise {spelt('min_freq')}{chars} or use a smaller batch.") from None
        return cls(path, config.batch_size, config.num_steps, token=config.token,
                   preprocess=config.preprocess, min_freq=config.min_freq, val_fraction=config.val_fraction,
                   num_train=config.num_train, num_val=config.num_val, steps_per_epoch=config.steps_per_epoch,
                   seed=config.seed, check_vocab=check_vocab, **kwargs)


# The share of a text's tokens read as <unk> in a vocabulary given past which load says so.
UNKNOWN_SAID = 0.01


def _holds(vocab: Vocab, text: str) -> bool:
    return all(t in vocab.token_to_idx for t in vocab.split(text))


def load(config: Config, text: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
         vocab: Vocab | None = None) -> WindowedText:
    """The data ``config`` trains on: the file ``text`` (``Corpus``), else The Time Machine (``data``,
    SHA-1 checked): d2l's ``TimeMachine`` for d2l's tokens and split, a ``Corpus`` of it for others. With
    ``vocab`` (a restored run's, to fine-tune or evaluate it), in those tokens, ``<unk>`` for the rest: clean
    the text as that run's was, ``config.replace(**{**TEXT_DEFAULTS, "preprocess": run.config.preprocess})``.
    ``config`` says how a text is cleaned and split: the CLI's ``--text`` takes ``TEXT_DEFAULTS`` first."""
    check_is_config(config)
    if vocab is not None and not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be an rnnjax Vocab (a restored run's .vocab), got {got(vocab)}.")
    if text is not None and data is not None:
        raise ValueError("load takes text (your own file) or data (the Time Machine's), not both.")
    for name, path in (("text", text), ("data", data)):
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"load's {name} is a path (str or os.PathLike), got {got(path)}.")
        if path == "":              # not the current folder, nor (data) the default file
            instead = ("give a UTF-8 text file's path" if name == "text" else
                       "leave it out (None) to take $RNNJAX_TIMEMACHINE or d2l's download")
            raise DataError(f"load's {name} is empty (''); {instead}.")
        check_not_text(path, f"load's {name}")        # data= goes to timemachine_path, not Corpus, too
    try:
        d2l = (config.token, config.preprocess, config.val_fraction) == ("char", "d2l", 0.0)
        if text is None and d2l and config.min_freq <= 1 and vocab is None:
            return TimeMachine(config.batch_size, config.num_steps, config.num_train, config.num_val,
                               path=data, seed=config.seed, steps_per_epoch=config.steps_per_epoch)
        path = timemachine_path(data) if text is None else text
        made = Corpus.from_config(path, config, vocab=vocab)
        if text is None and config.preprocess == "d2l" and _holds(made.vocab, TimeMachine.prompt):
            made.prompt = TimeMachine.prompt    # d2l's (--min-freq 23 drops "has": the text's own then)
        unknown = float(np.mean(made.stream == vocab.unk)) if vocab is not None and made.stream.size else 0.0
        if unknown >= UNKNOWN_SAID:
            with warnings.catch_warnings():         # its own warnings were said as it was read
                warnings.simplefilter("ignore")
                own = Corpus.from_config(path, config, cache=False)
            unknown -= float(np.mean(own.stream == own.vocab.unk))     # its rare tokens: <unk> in its own too
        if unknown >= UNKNOWN_SAID:      # a text cleaned otherwise than the vocabulary's (d2l's is lowercase)
            unseen = [t for t in own.vocab.idx_to_token if t != "<unk>" and t not in vocab.token_to_idx]
            more = f" and {len(unseen) - 10} more" if len(unseen) > 10 else ""
            listed = ", ".join(map(repr, unseen[:10])) + more
            # New words are a fine-tune's own (the vocabulary is the run's); another cleaning is a mistake.
            warnings.warn(f"{unknown:.0%} more of the text's tokens are read as <unk> in the vocabulary "
                          f"given than in the text's own: {len(unseen)} it lacks ({listed}), which training "
                          f"on it cannot add. Where the text was cleaned otherwise than the vocabulary's "
                          f"run's, clean it alike (its config's {spelt('preprocess')} and {spelt('token')}; "
                          f"here {spelt('preprocess', config.preprocess)}).", stacklevel=2)
        return made
    except OSError as e:            # unreadable (permissions, a vanished file): one sentence
        why = e.strerror or type(e).__name__
        raise DataError(f"Cannot read {e.filename or text or data} ({why}).") from None
