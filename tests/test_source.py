import hashlib
import http.server
import threading
from functools import partial

import pytest

from rnnjax import source
from rnnjax.data import TimeMachine
from rnnjax.source import DataError


def test_real_text_hash_is_checked(real_text_path, tmp_path):
    bad = tmp_path / "timemachine.txt"
    raw = open(real_text_path, "rb").read()
    bad.write_bytes(raw[:-1] + (b"?" if raw[-1:] != b"?" else b"!"))      # d2l's size, not its bytes
    with pytest.raises(source.NotTheTimeMachine, match=r"SHA-1 .* not d2l's timemachine.txt \(truncated or a "
                                                       r"different file\)\.$"):
        TimeMachine(8, 4, path=bad)


def test_a_file_of_another_size_is_refused_before_it_is_hashed(tmp_path, monkeypatch):
    def hashed(path):
        raise AssertionError("hashed")
    monkeypatch.setattr(source, "sha1_of", hashed)
    big = tmp_path / "timemachine.txt"
    with open(big, "wb") as f:
        f.truncate(4 << 30)                     # sparse: no disk used
    with pytest.raises(DataError, match=r"has 4,294,967,296 bytes, expected 178,979: it is not d2l's"):
        source.timemachine_path(big)
    with pytest.raises(DataError, match=r"has 4,294,967,296 bytes, expected 178,979"):
        TimeMachine(8, 4, path=big)
    with pytest.raises(DataError, match="Could not download"):     # the cached copy is not d2l's
        source.download("http://127.0.0.1:9/timemachine.txt", root=tmp_path, timeout=5)


def test_missing_local_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="No such file"):
        source.load_text(tmp_path / "nope.txt")


def test_env_variable_is_read(tmp_path, monkeypatch):
    text = b"The Time Machine\n"
    path = tmp_path / "t.txt"
    path.write_bytes(text)
    monkeypatch.setenv(source.ENV_PATH, str(path))
    assert source.load_text(sha1=hashlib.sha1(text).hexdigest()) == text.decode()


def test_offline_without_a_file_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.delenv(source.ENV_PATH, raising=False)
    with pytest.raises(DataError, match=r"data=PATH or \$RNNJAX_TIMEMACHINE"):
        source.download("http://127.0.0.1:9/timemachine.txt", root=tmp_path, timeout=5)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_and_caches(http_server, tmp_path):
    root, url = http_server
    (root / "timemachine.txt").write_bytes(b"some text\n")
    sha1 = hashlib.sha1(b"some text\n").hexdigest()
    cache = tmp_path / "cache"
    path = source.download(url + "/timemachine.txt", sha1, root=cache)
    assert path == cache / "timemachine.txt" and path.read_bytes() == b"some text\n"
    (root / "timemachine.txt").unlink()          # now cached: no request needed
    assert source.download(url + "/timemachine.txt", sha1, root=cache) == path


def test_a_download_cache_that_cannot_be_written_is_named_as_such(http_server, tmp_path, monkeypatch):
    """It said "Cannot read <cache>/timemachine.txt.<random>.part (Read-only file system)", or "Cannot read
    /etc/passwd (File exists)" for $RNNJAX_CACHE a file."""
    _, url = http_server
    (tmp_path / "file").write_text("")
    said = r" is not a folder: set \$RNNJAX_CACHE to a folder that can be, or pass the path of a local "
    with pytest.raises(DataError, match=rf"^The download cache {tmp_path}/file{said}"):
        source.download(url + "/timemachine.txt", root=tmp_path / "file")

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(source.tempfile, "mkstemp", read_only)
    with pytest.raises(DataError, match=rf"^The download cache {tmp_path}/ro cannot be written \(Read-only "
                                        r"file system\): set \$RNNJAX_CACHE"):
        source.download(url + "/timemachine.txt", root=tmp_path / "ro")


def test_download_with_wrong_hash_leaves_nothing_in_the_cache(http_server, tmp_path):
    root, url = http_server
    (root / "timemachine.txt").write_bytes(b"tampered\n")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="SHA-1"):
        source.download(url + "/timemachine.txt", "0" * 40, root=cache)
    assert list(cache.iterdir()) == []
