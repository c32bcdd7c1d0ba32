"""A text's token stream and vocabulary cached under ``rnnjax.source.cache_dir()/corpus``, keyed by the
text's SHA-1 and the token options (``rnnjax.corpus``): each entry a folder written whole or not at all, read
whole and checked or removed, to be made again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np

from rnnjax.source import cache_dir
from rnnjax.vocab import Vocab

VERSION = 1


def path(sha1: str, options: dict) -> Path:
    key = json.dumps({"version": VERSION, "sha1": sha1, **options}, sort_keys=True)
    return cache_dir() / "corpus" / hashlib.sha1(key.encode()).hexdigest()[:24]


def _crc32(stream: np.ndarray, vocab: dict) -> str:
    """Of the tokens and the vocabulary that reads them: a cache entry is both or neither."""
    crc = zlib.crc32(json.dumps(vocab, sort_keys=True).encode())
    return f"{zlib.crc32(np.ascontiguousarray(stream).data, crc):08x}"


def read(path: Path, options: dict) -> tuple[Vocab, np.ndarray] | None:
    """The cached ``(vocab, stream)``, or ``None`` if there is none; an entry that cannot be read whole, or
    fails its checksum, is removed, to be made again."""
    if not os.path.lexists(path):   # none yet, or a cache this process may not search (Path.exists raised)
        return None
    try:                            # else the entry is whole, or removed: written again, whole
        meta = json.loads((path / "vocab.json").read_text())
        stream = np.load(path / "tokens.npy", allow_pickle=False)
        if (meta["options"] == options and stream.dtype == np.int32 and stream.ndim == 1
                and meta.get("crc32") == _crc32(stream, meta["vocab"])):     # else damaged, or older
            return Vocab.from_json(meta["vocab"]), stream
    except Exception:       # damaged: numpy's header parser raises what it meets (TokenError, SyntaxError)
        pass
    shutil.rmtree(path, ignore_errors=True)
    return None


def write(path: Path, options: dict, vocab: Vocab, stream: np.ndarray) -> None:
    """Writes the cache entry whole or not at all (a folder renamed into place); a cache that cannot be
    written is no error."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + "."))
        np.save(tmp / "tokens.npy", stream, allow_pickle=False)
        meta = {"options": options, "vocab": vocab.to_json(), "crc32": _crc32(stream, vocab.to_json())}
        (tmp / "vocab.json").write_text(json.dumps(meta))
        os.rename(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
