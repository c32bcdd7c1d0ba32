"""A text's tokens in NumPy, a chunk at a time: characters as code points (d2l's preprocessing as array
operations, no Python loop over characters) or words as ids of their first appearance."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

# Characters (or words) handled at a time: bounds the temporaries to a few times this.
CHUNK = 1 << 22
_SPACE = re.compile(r"\s")


def char_codes(text: str, preprocess: str, chunk: int = CHUNK) -> np.ndarray:
    """The code points (uint32) of ``text``, ``raw`` or after d2l's ``re.sub('[^A-Za-z]+', ' ',
    text).lower()``, done in NumPy a chunk at a time."""
    out = np.empty(len(text), np.uint32)
    n, after_letter = 0, True           # a run of non-letters at the start becomes a space too
    for lo in range(0, len(text), chunk):
        codes = np.frombuffer(text[lo:lo + chunk].encode("utf-32-le"), np.uint32)
        if preprocess == "d2l":
            lower = codes | 0x20                        # A-Z to a-z; a-z stay
            letter = (lower >= ord("a")) & (lower <= ord("z"))
            keep = letter.copy()
            keep[0] |= after_letter
            keep[1:] |= letter[:-1]                     # the first of each run of non-letters
            after_letter = bool(letter[-1])
            codes = np.where(letter, lower, ord(" ")).astype(np.uint32)[keep]
        out[n:n + len(codes)] = codes
        n += len(codes)
    return out[:n]


def word_ids(text: str, preprocess: str, chunk: int = CHUNK) -> tuple[np.ndarray, list[str]]:
    """``(ids, words)``: ``text`` split at whitespace (after ``preprocess``), each word as the index
    (int32) of its first appearance in ``words``; a chunk at a time, cut at whitespace."""
    if preprocess == "d2l":
        text = char_codes(text, preprocess, chunk).tobytes().decode("utf-32-le")
    index: dict[str, int] = {}
    parts, lo = [], 0
    while lo < len(text):
        hi = lo + chunk
        if hi < len(text):
            space = _SPACE.search(text, hi)
            hi = space.start() if space else len(text)
        words = text[lo:hi].split()
        parts.append(np.fromiter((index.setdefault(w, len(index)) for w in words), np.int32, len(words)))
        lo = hi
    return (np.concatenate(parts) if parts else np.zeros(0, np.int32)), list(index)


def cleaned(text: str, preprocess: str) -> str:
    """``text`` as ``preprocess`` cleans a run's text before it is split: d2l's lower-case letters and
    spaces, or ``raw``, as it is."""
    return char_codes(text, preprocess).tobytes().decode("utf-32-le") if preprocess == "d2l" else text


def tokenize(text: str, token: str, preprocess: str) -> tuple[np.ndarray, Callable[[int], str]]:
    """``(ids, name)``: a non-negative 32-bit id per token, writable, and the token of an id."""
    if token == "word":
        ids, words = word_ids(text, preprocess)
        return ids, words.__getitem__
    return char_codes(text, preprocess), chr
