"""The Time Machine, tokenized and windowed exactly as d2l does it.

d2l semantics: keep letters only (``re.sub('[^A-Za-z]+', ' ', text).lower()``),
one token per character, a vocabulary of the alphabetically sorted set of
``'<unk>'`` and every character, and stride-1 windows of ``num_steps + 1``
characters split into inputs X and targets Y (Y is X shifted by one).

Batches have a fixed shape so that one compiled step serves every batch: the
ragged last batch is padded and carries a row mask, and the losses
(``rnnjax.model``, the kernels) are exact means over the real rows.
``WindowedText`` cuts them from a token stream; ``TimeMachine`` is d2l's
(its text from ``rnnjax.source``), ``rnnjax.corpus.Corpus`` any text's.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import struct

from rnnjax.source import PREPROCESSED_SHA1, DataError, load_text
from rnnjax.config import whole
from rnnjax.spelling import got, plural, spelt
from rnnjax.vocab import Vocab  # noqa: F401 (where it always was)


def preprocess(text: str) -> str:
    """d2l's cleaning (``preprocess='d2l'``): every run of non-letters one space, lower case."""
    return re.sub("[^A-Za-z]+", " ", text).lower()


def tokenize(text: str) -> list[str]:
    return list(text)


class Batch(NamedTuple):
    """``X``, ``Y``: (batch, num_steps) int32; ``mask``: (batch,) float32, 1 for real rows.

    A NamedTuple, hence a JAX pytree: steps take it whole.
    """
    X: np.ndarray
    Y: np.ndarray
    mask: np.ndarray


@struct.dataclass
class Windows:
    """A batch as the starts of its windows in the token stream: row ``b`` is
    ``tokens[starts[b]:starts[b] + num_steps + 1]``, split into X and Y; ``mask`` as in ``Batch``.

    A pytree (``num_steps`` static) that is 1/32 the size of its ``Batch`` at
    d2l's shape: the training loop sends these and each device cuts its
    batches out of the token stream it holds (``batch``).
    """
    starts: np.ndarray
    mask: np.ndarray
    num_steps: int = struct.field(pytree_node=False)

    def batch(self, tokens) -> Batch:
        """The ``Batch`` (any leading axes): NumPy for NumPy ``tokens``, else a gather where they live."""
        xp = np if isinstance(tokens, np.ndarray) else jnp
        seq_BxS = tokens[self.starts[..., None] + xp.arange(self.num_steps + 1)]
        return Batch(seq_BxS[..., :-1], seq_BxS[..., 1:], self.mask)


class WindowedText:
    """Batches of windows cut from a token stream: what ``fit`` trains on.

    Train windows start at ``[0, num_train)``; each epoch takes them shuffled by a
    permutation that is a pure function of ``(seed, epoch)``, so a resumed run
    sees the same order, the last batch kept (as d2l does) and padded to
    ``batch_size`` rows with ``mask`` 0. With ``steps_per_epoch`` an epoch is
    instead that many full batches of train windows drawn at random (with
    replacement, batch ``b`` from ``(seed, epoch, b)``), for texts whose pass
    would take too long between validations. Validation batches come in
    order. Subclasses set ``vocab``, ``tokens`` and the sizes, and define ``val_starts()``.
    """
    batch_size: int
    num_steps: int
    num_train: int
    num_val: int
    seed: int
    steps_per_epoch: int = 0
    prompt: str = "it has"     # what the command line shows the model continuing
    # How rnnjax made the tokens (token, preprocess, min_freq, val_fraction), checked against a run's config.
    options: dict | None = None

    def val_starts(self) -> np.ndarray:
        """Where the validation windows start in ``tokens``."""
        raise NotImplementedError

    def text_size(self) -> int:
        """The text's tokens, of which ``tokens`` may be the first part."""
        return len(self.tokens)

    def describe(self) -> str:
        """One line: the vocabulary's size, the windows, and which of the text's tokens they read (d2l's
        split: the Time Machine's first 15,032 characters; a split by ``val_fraction``: the training
        windows a head of it, the validation windows spread over the rest)."""
        kind = "word" if getattr(self.vocab, "kind", "char") == "word" else "character"
        total, starts = self.text_size(), self.val_starts()
        cleaned = (self.options or {}).get("preprocess", "raw") != "raw"
        text = "the cleaned text's" if cleaned else "the text's"
        said = f"data: {plural(len(self.vocab), kind)} in the vocabulary; "
        if len(starts) and starts[0] != self.num_train or np.any(np.diff(starts) != 1):
            return (said + f"{plural(self.num_train, 'training window')} of {self.num_steps} in the first "
                    f"{self.num_train + self.num_steps:,} of {text} {plural(total, kind)}, "
                    f"{plural(self.num_val, 'validation window')} across its last {total - int(starts[0]):,}")
        read = self.num_train + self.num_val + self.num_steps     # the validation windows next, as d2l's
        where = f"{text} first {read:,} of {plural(total, kind)}" if read < total else \
            f"all {text} {plural(total, kind)}"
        return said + (f"{self.num_train:,} training and {plural(self.num_val, 'validation window')} of "
                       f"{self.num_steps}, in {where}")

    def split(self, num_train: int, num_val: int) -> tuple[int, int]:
        """The train and validation windows that ``num_train`` and ``num_val`` ask for give this text:
        those numbers, where a text is split as d2l splits it."""
        return num_train, num_val

    def check_tokens(self) -> None:
        """``ValueError`` in one sentence unless every id is in the vocabulary (one past it one-hots to
        nothing, a NaN loss) and every window lies within ``tokens`` (a gather on a device would clamp)."""
        low, high = (int(self.tokens.min()), int(self.tokens.max())) if len(self.tokens) else (0, 0)
        if low < 0 or high >= len(self.vocab):
            raise ValueError(f"data.tokens holds the id {high if high >= len(self.vocab) else low}, outside "
                             f"its vocabulary's {len(self.vocab)} tokens (ids 0 to {len(self.vocab) - 1}).")
        starts = self.val_starts()
        if int(np.min(starts, initial=0)) < 0:      # indexing would wrap around to the end
            raise ValueError(f"val_starts() holds {int(np.min(starts))}: a window starts at 0 or later.")
        need = max(self.num_train - 1, int(np.max(starts, initial=0))) + self.num_steps + 1
        if need > len(self.tokens):
            raise ValueError(f"data.tokens has {len(self.tokens)} tokens, and its windows of num_steps + 1 = "
                             f"{self.num_steps + 1} (num_train {self.num_train} and the validation windows) "
                             f"need {need}.")

    def check_made_for(self, config) -> None:
        """``ValueError`` in one sentence unless these are the batches ``config`` trains on: a resume, which
        remakes the data from config.json, would otherwise train and validate on other windows."""
        if (self.batch_size, self.num_steps) != (config.batch_size, config.num_steps):
            raise ValueError(f"The data's batches are {self.batch_size} x {self.num_steps}, the config's "
                             f"{config.batch_size} x {config.num_steps}: train with the data loaded for the "
                             "config (rnnjax.corpus.load(config, ...)).")
        if (self.steps_per_epoch, self.vocab.kind) != (config.steps_per_epoch, config.token):
            raise ValueError(f"The data has {self.steps_per_epoch} steps an epoch and {self.vocab.kind} "
                             f"tokens, the config {config.steps_per_epoch} and {config.token}: train with "
                             "the config it was loaded with (rnnjax.corpus.load(config, ...)).")
        if self.options is None:        # a WindowedText of the caller's own: its sizes are its own
            return
        differ = []                     # (the data's, the config's)
        for k, made in self.options.items():
            asked = getattr(config, k)
            same = max(made, 1) == max(asked, 1) if k == "min_freq" else made == asked   # 0, 1: every token
            if not same:
                differ.append((spelt(k, made), spelt(k, asked)))
        split = self.split(config.num_train, config.num_val)
        if (self.num_train, self.num_val) != split:
            differ.append((f"{self.num_train} train and {self.num_val} validation windows", f"{split[0]} and "
                           f"{split[1]} ({spelt('num_train', config.num_train)}, "
                           f"{spelt('num_val', config.num_val)})"))
        if differ:
            made, asked = "; ".join(d for d, _ in differ), "; ".join(c for _, c in differ)
            raise ValueError(f"The data was made with {made}, the config asks for {asked}: train with the "
                             "config it was loaded with (rnnjax.corpus.load(config, ...)).")

    def warn_if_one_batch(self, gives: str = "") -> None:
        """A warning where an epoch is one batch of all training windows, the rest padding (d2l's DataLoader
        keeps a short last batch), as ``batch_size`` asks for more."""
        if not self.steps_per_epoch and self.batch_size > self.num_train:
            fits = spelt("batch_size", self.num_train)
            warnings.warn(f"{spelt('batch_size', self.batch_size)} is more than the "
                          f"{plural(self.num_train, 'training window')}{gives}: each epoch is one batch of "
                          f"them, the rest padding (a new run of {fits} trains alike, faster).", stacklevel=3)

    def num_batches(self, train: bool = True) -> int:
        if train and self.steps_per_epoch:
            return self.steps_per_epoch
        return -(-(self.num_train if train else self.num_val) // self.batch_size)

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch)).permutation(self.num_train)

    def train_windows(self, epoch: int, start: int = 0) -> Iterator[Windows]:
        """The shuffled train batches of ``epoch`` as ``Windows``, from batch index ``start`` on."""
        if self.steps_per_epoch:
            for b in range(start, self.steps_per_epoch):
                rng = np.random.default_rng((self.seed, epoch, b))
                yield self._windows(rng.integers(0, self.num_train, self.batch_size))
            return
        order = self.permutation(epoch)
        for b in range(start, self.num_batches(True)):
            yield self._windows(order[b * self.batch_size:(b + 1) * self.batch_size])

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The shuffled train batches of ``epoch``, from batch index ``start`` on."""
        for windows in self.train_windows(epoch, start):
            yield windows.batch(self.tokens)

    def val_batches(self) -> Iterator[Batch]:
        starts = self.val_starts()
        for lo in range(0, len(starts), self.batch_size):
            yield self._windows(starts[lo:lo + self.batch_size]).batch(self.tokens)

    def _windows(self, idx: np.ndarray) -> Windows:
        """Windows ``idx``, padded to ``batch_size`` rows with window 0 and mask 0."""
        starts = np.zeros(self.batch_size, np.int32)
        mask = np.zeros(self.batch_size, np.float32)
        starts[: len(idx)], mask[: len(idx)] = idx, 1.0
        return Windows(starts, mask, self.num_steps)


def wholes(**values: Any) -> list[int]:
    """Each of ``values`` as an ``int``, by name: a NumPy integer too (its records would fail as JSON after
    the first epoch); ``ConfigError`` in one sentence for a float, a str, ``None``."""
    return [whole(value, name) for name, value in values.items()]


def check_source(path: Any, text: Any) -> None:
    """``TypeError`` in one sentence unless ``path`` is a path and ``text`` a str (or either ``None``)."""
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path is a file's path (str or os.PathLike), got {got(path)}.")
    if text is not None and not isinstance(text, str):
        raise TypeError(f"text is the text itself, a str, got {got(text)}.")
    check_not_text(path, "path")


def check_not_text(path: Any, name: str) -> None:
    """``DataError`` where the str ``path`` is a text itself: a path is a line of at most PATH_MAX
    characters, of names of at most NAME_MAX bytes (a file named so still is one). Reading it quoted the
    whole text, "(File name too long)"."""
    named = isinstance(path, str) and len(path) <= 4096 and max(
        len(p.encode(errors="replace")) for p in path.split("/")) <= 255
    if isinstance(path, str) and ("\n" in path or not named) and not os.path.exists(path):
        raise DataError(f"{name} is a file's path, and this one is {len(path):,} characters "
                        f"({path[:30]!r}...), a text itself: write it to a file and give the file's path "
                        "(rnnjax.Corpus takes a text itself, as text=...).")


class TimeMachine(WindowedText):
    """d2l's ``TimeMachine`` data module, with fixed-shape batches.

    Train windows are ``[0, num_train)``, validation windows
    ``[num_train, num_train + num_val)`` (``WindowedText`` for the batches).
    ``text=``: a text of one's own, preprocessed alike, named by its SHA-1 in
    the vocabulary as ``Corpus`` names a file (a resume on other data is refused).
    ``rnnjax.corpus.Corpus`` takes any text, words too.
    """

    def __init__(self, batch_size: int, num_steps: int, num_train: int = 10000,
                 num_val: int = 5000, path: str | os.PathLike | None = None, *,
                 text: str | None = None, seed: int = 0, steps_per_epoch: int = 0):
        batch_size, num_steps, num_train, num_val, seed, steps_per_epoch = wholes(
            batch_size=batch_size, num_steps=num_steps, num_train=num_train, num_val=num_val, seed=seed,
            steps_per_epoch=steps_per_epoch)
        check_source(path, text)
        if batch_size < 1 or num_steps < 1 or num_train < 1 or num_val < 0 or steps_per_epoch < 0:
            raise DataError(
                f"batch_size, num_steps and num_train must be positive and num_val >= 0; got "
                f"{batch_size}, {num_steps}, {num_train}, {num_val}.")
        self.batch_size, self.num_steps = batch_size, num_steps
        self.num_train, self.num_val, self.seed = num_train, num_val, seed
        self.steps_per_epoch = steps_per_epoch
        self.options = {"token": "char", "preprocess": "d2l", "min_freq": 0, "val_fraction": 0.0}
        clean = preprocess(load_text(path) if text is None else text)
        tokens, source = tokenize(clean), None
        if text is not None and hashlib.sha1(clean.encode()).hexdigest() != PREPROCESSED_SHA1:  # not d2l's
            source = hashlib.sha1(text.encode(errors="surrogatepass")).hexdigest()    # as Corpus names a file
        self.vocab = Vocab(tokens, source=source)
        self.corpus = np.asarray(self.vocab[tokens], dtype=np.int32)
        num_windows = len(self.corpus) - num_steps
        if num_windows < num_train + num_val:
            raise DataError(
                f"The corpus has {len(self.corpus):,} characters after preprocessing, which make "
                f"{max(num_windows, 0):,} windows of {spelt('num_steps')} + 1 = {num_steps + 1:,}; "
                f"{spelt('num_train')} + {spelt('num_val')} = {num_train + num_val:,} are needed.")
        windows = np.lib.stride_tricks.sliding_window_view(self.tokens, num_steps + 1)
        self.X, self.Y = windows[:, :-1], windows[:, 1:]
        self.warn_if_one_batch()

    @property
    def tokens(self) -> np.ndarray:
        """The part of the corpus the windows cover: what ``Windows.batch`` cuts from."""
        return self.corpus[: self.num_train + self.num_val + self.num_steps]

    def text_size(self) -> int:
        return len(self.corpus)

    def val_starts(self) -> np.ndarray:
        return np.arange(self.num_train, self.num_train + self.num_val)
