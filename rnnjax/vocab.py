"""The vocabulary: d2l's ``Vocab``, characters or words, and what text it was built from.

``Vocab(tokens, min_freq)`` is d2l's class. ``from_counts`` builds the same
vocabulary from NumPy token counts, for texts too large for a ``Counter``.
"""

from __future__ import annotations

import collections
import operator
from collections.abc import Callable, Sequence

import numpy as np


class Vocab:
    """d2l's vocabulary: index order is the sorted set of tokens and ``'<unk>'``."""

    def __init__(self, tokens: Sequence = (), min_freq: int = 0,
                 reserved_tokens: Sequence[str] = (), *, kind: str = "char", source: str | None = None):
        self.kind, self.source = kind, source     # what a token is; the SHA-1 of the text it came from
        if tokens and isinstance(tokens[0], list):
            tokens = [t for line in tokens for t in line]
        counter = collections.Counter(tokens)
        self.token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
        self.idx_to_token = sorted(
            set(["<unk>", *reserved_tokens, *(t for t, f in self.token_freqs if f >= min_freq)]))
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    @classmethod
    def from_counts(cls, counts: np.ndarray, name: Callable[[int], str], min_freq: int = 0, *,
                    kind: str = "char", source: str | None = None) -> tuple[Vocab, np.ndarray]:
        """d2l's vocabulary of the tokens ``name(i)`` seen ``counts[i]`` times (the same as ``Vocab`` of
        those tokens), and the int32 table taking each ``i`` to its index, ``<unk>``'s below ``min_freq``."""
        kept = np.flatnonzero(counts >= max(min_freq, 1))
        names = [name(int(i)) for i in kept]
        vocab = cls.from_json({"idx_to_token": sorted({"<unk>", *names}), "token": kind, "text_sha1": source})
        table = np.full(len(counts), vocab.unk, np.int32)
        table[kept] = [vocab.token_to_idx[t] for t in names]
        return vocab, table

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        if not isinstance(tokens, (list, tuple)):
            return self.token_to_idx.get(tokens, self.unk)
        return [self[t] for t in tokens]

    def to_tokens(self, indices):
        """d2l's: the token of an index (a NumPy or JAX scalar too), or the tokens of several."""
        if np.ndim(indices) == 0:
            return self._token(indices)
        tokens = [self._token(i) for i in indices]
        return tokens[0] if len(tokens) == 1 else tokens

    def _token(self, index) -> str:
        try:            # int() read 2.7 as 2, True as 1
            k = operator.index(index) if not isinstance(index, (bool, np.bool_)) else None
        except TypeError:
            k = None
        if k is None:
            raise TypeError(f"A token's index is a whole number, got {index!r}.")
        if not 0 <= k < len(self.idx_to_token):         # -1 would read the last token
            raise IndexError(f"{k} is no token's index in this vocabulary of {len(self.idx_to_token)} "
                             f"(0 to {len(self.idx_to_token) - 1}).")
        return self.idx_to_token[k]

    @property
    def unk(self) -> int:
        return self.token_to_idx["<unk>"]

    def split(self, text: str) -> list[str]:
        """``text`` as tokens: its characters, or for a word vocabulary its words (split at whitespace)."""
        return text.split() if self.kind == "word" else list(text)

    def encode(self, text: str) -> list[int]:
        """Indices of ``text``'s tokens; unknown tokens are an error.

        Unlike ``vocab[...]``, which maps them to ``<unk>`` as d2l does, this is
        what prompts go through: a model never trained on ``'I'`` should say so.
        """
        tokens = self.split(text)
        what = "words" if self.kind == "word" else "characters"
        if not tokens:
            raise ValueError(f"{text!r} has no {what}; a prompt needs at least one.")
        unknown = sorted({t for t in tokens if t not in self.token_to_idx})
        if unknown:
            chars = "".join(t for t in self.idx_to_token if len(t) == 1)
            if self.kind == "word" or len(chars) < len(self) - 1:      # a vocabulary of longer tokens too
                known = f"{len(self) - 1} {'words' if self.kind == 'word' else 'tokens'}"
            else:
                known = repr(chars) if len(chars) <= 100 else f"{len(chars):,} characters ({chars[:40]!r}...)"
                if set(chars) <= set("abcdefghijklmnopqrstuvwxyz "):
                    known += " (lowercase letters and space)"
            raise ValueError(f"{text!r} has {what} outside the vocabulary: {unknown[:10]!r}"
                             f"{' and more' if len(unknown) > 10 else ''}; the model knows {known}.")
        return [self.token_to_idx[t] for t in tokens]

    def decode(self, indices) -> str:
        """The text of ``indices``: characters joined, or words joined by spaces."""
        return (" " if self.kind == "word" else "").join(self._token(i) for i in indices)

    def to_json(self) -> dict:
        """``idx_to_token``, and ``token`` and ``text_sha1`` where they are not d2l's characters of
        the Time Machine (whose JSON stays as it always was)."""
        d = {"idx_to_token": list(self.idx_to_token)}
        if self.kind != "char":
            d["token"] = self.kind
        if self.source is not None:
            d["text_sha1"] = self.source
        return d

    @classmethod
    def from_json(cls, d: dict) -> Vocab:
        vocab = cls(kind=d.get("token", "char"), source=d.get("text_sha1"))
        vocab.token_freqs = []
        vocab.idx_to_token = list(d["idx_to_token"])
        vocab.token_to_idx = {t: i for i, t in enumerate(vocab.idx_to_token)}
        return vocab

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.to_json() == other.to_json()

    def differs(self, other: Vocab) -> str | None:
        """What this vocabulary was made of, where ``other`` differs from it, in a few words (``None``: it
        does not): ``f"trained on {vocab.differs(other)}"``."""
        def text(v: Vocab) -> str:
            return "the Time Machine" if v.source is None else f"the text of SHA-1 {v.source}"
        if self.source != other.source:
            return f"{text(self)} (the data given is {text(other)})"
        if self.kind != other.kind:
            return f"{self.kind} tokens (the data given has {other.kind} tokens)"
        return None if self == other else "another vocabulary"

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens)"
