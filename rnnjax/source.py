"""Where a text comes from: The Time Machine's from d2l's URL, verified by SHA-1 and cached, or a local copy
(``--data``, ``$RNNJAX_TIMEMACHINE``), which ``rnnjax.data`` windows; a UTF-8 file of one's own checked and
read (``--text``), which ``rnnjax.corpus`` tokenizes."""

from __future__ import annotations

import codecs
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from rnnjax.spelling import as_flags, spelt

URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
PREPROCESSED_SHA1 = "0aa295adbf8f925249b7ea9e8f6e698625ac7195"     # of preprocess(its text): what trains
SIZE = 178979       # bytes of the file of SHA-1 SHA1: a file of another size is refused before it is hashed
ENV_PATH = "RNNJAX_TIMEMACHINE"
ENV_CACHE = "RNNJAX_CACHE"
# The first bytes of a file looked at for binary or non-UTF-8 content before it is hashed and read.
HEAD = 1 << 16
TOO_LARGE = "{} ({:.1f} GiB) is too large for this machine's memory to tokenize: train on a part of it."


class DataError(ValueError):
    """The text could not be had, or cannot make the requested windows."""


class NotTheTimeMachine(DataError):
    """A file given as d2l's timemachine.txt that is another (its size or SHA-1): a text of one's own?"""


def cache_dir() -> Path:
    """``$RNNJAX_CACHE``, else ``$XDG_CACHE_HOME/rnnjax``, else ``~/.cache/rnnjax``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rnnjax"


def sha1_of(path: str | os.PathLike) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_sha1(path: Path, sha1: str, what: str) -> None:
    size = path.stat().st_size
    wrong = NotTheTimeMachine if what == "File" else DataError      # a file given, not a download
    if sha1 == SHA1 and size != SIZE:
        raise wrong(f"{what} {path} has {size:,} bytes, expected {SIZE:,}: it is not d2l's "
                    "timemachine.txt (truncated or a different file).")
    actual = sha1_of(path)
    if actual != sha1:
        raise wrong(f"{what} {path} has SHA-1 {actual}, expected {sha1}: it is not d2l's "
                    "timemachine.txt (truncated or a different file).")


def download(url: str | None = None, sha1: str = SHA1, root: str | os.PathLike | None = None,
             timeout: float = 30.0) -> Path:
    """Returns the verified cached copy of ``url``, downloading it if needed.

    The download goes to a temporary file that is renamed into place only once
    its SHA-1 matches, so a failed or corrupt download never sits in the cache
    as if valid. A cached file with the wrong hash is fetched again.
    """
    url = url or URL
    root = Path(root) if root is not None else cache_dir()
    path = root / url.rsplit("/", 1)[-1]
    if path.is_file() and (sha1 != SHA1 or path.stat().st_size == SIZE) and sha1_of(path) == sha1:
        return path
    given = "--data PATH" if as_flags() else "data=PATH"
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=path.name + ".", suffix=".part")
    except OSError as e:            # read-only, a file: the cache, not the download, is what failed
        file = root.exists() and not root.is_dir()
        why = "is not a folder" if file else f"cannot be written ({e.strerror})"
        raise DataError(f"The download cache {root} {why}: set ${ENV_CACHE} to a folder that can be, or pass "
                        f"the path of a local timemachine.txt with {given} or ${ENV_PATH}.") from None
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
            out.write(r.read())
        _check_sha1(Path(tmp), sha1, "Downloaded file")
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"Could not download {url} ({getattr(e, 'reason', e)}); offline, pass the path of a "
                        f"local timemachine.txt with {given} or ${ENV_PATH}.") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def timemachine_path(path: str | os.PathLike | None = None, *, sha1: str = SHA1,
                     root: str | os.PathLike | None = None) -> Path:
    """The verified file of The Time Machine: ``path``, else ``$RNNJAX_TIMEMACHINE``, else the cached
    download of d2l's copy."""
    path = path or os.environ.get(ENV_PATH) or None
    if path is None:
        return download(sha1=sha1, root=root)
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory; {spelt('data')} (or ${ENV_PATH}) takes the file "
                        "timemachine.txt.")
    if not path.is_file():
        raise DataError(f"{path} is not a regular file; {spelt('data')} (or ${ENV_PATH}) takes "
                        "timemachine.txt." if path.exists() else
                        f"No such file: {path} (given as {spelt('data')} or ${ENV_PATH}).")
    _check_sha1(path, sha1, "File")
    return path


def load_text(path: str | os.PathLike | None = None, *, sha1: str = SHA1,
              root: str | os.PathLike | None = None) -> str:
    """The raw text of The Time Machine, verified against ``sha1`` (``timemachine_path``)."""
    return timemachine_path(path, sha1=sha1, root=root).read_text(encoding="utf-8")


def _decode(path: Path, raw: bytes, final: bool) -> str:
    """``raw`` (the file, or its first bytes if not ``final``) decoded; ``DataError`` unless UTF-8 text."""
    nul = raw.find(b"\0")
    if nul >= 0:
        raise DataError(f"{path} looks binary, not text (a NUL byte at offset {nul}); {spelt('text')} takes "
                        "a UTF-8 text file.")
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(raw, final=final)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}): convert "
                        "it first, for instance with iconv -f latin1 -t utf-8.") from None


def check_file(path: str | os.PathLike) -> int:
    """The size of ``path``; ``DataError`` if it is missing, not a regular file, empty, larger than this
    machine's memory holds, or its first bytes are not UTF-8 text: the checks that need no whole read."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory; {spelt('text')} takes a UTF-8 text file.")
    if not path.is_file():
        raise DataError(f"{path} is not a regular file; {spelt('text')} takes a UTF-8 text file."
                        if path.exists() else f"No such file: {path} ({spelt('text')} names a UTF-8 file).")
    size = path.stat().st_size
    if not size:
        raise DataError(f"{path} is empty: there is no text to train on.")
    if 6 * size > os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"):   # tokenizing's peak, 6x the file
        raise DataError(TOO_LARGE.format(path, size / 2 ** 30))
    with open(path, "rb") as f:
        _decode(path, f.read(HEAD), final=False)
    return size


def read_text(path: str | os.PathLike) -> tuple[str, str]:
    """``(text, SHA-1 of the file)``; ``DataError`` if it is missing, empty, binary or not UTF-8."""
    check_file(path)
    raw = Path(path).read_bytes()
    return _decode(path, raw, final=True).removeprefix("\ufeff"), hashlib.sha1(raw).hexdigest()
