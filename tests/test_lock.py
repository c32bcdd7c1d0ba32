"""``rnnjax.lock``: one writer per workdir, whatever becomes of its lock file, and no stale lock."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from rnnjax import lock
from rnnjax.lock import LOCKFILE


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    with lock.lock(tmp_path / "w"):
        with pytest.raises(lock.WorkdirError, match=f"in use by process {os.getpid()}"):
            with lock.lock(tmp_path / "w"):
                pass
        with pytest.raises(lock.WorkdirError, match=f"in use by process {os.getpid()}"):
            lock.check_unlocked(tmp_path / "w")
    with lock.lock(tmp_path / "w"):          # released when the block ends
        pass
    lock.check_unlocked(tmp_path / "w")


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_lock_file_removed_or_replaced_lets_no_second_writer_in(tmp_path, how):
    """The lock was the lock file's alone: removed, a second writer locked a new one and both wrote."""
    w = tmp_path / "w"
    with lock.lock(w) as held:
        (w / LOCKFILE).unlink()
        if how == "replaced":                       # as an editor saves it: a new file under the name
            (w / "new").write_text("x")
            (w / "new").rename(w / LOCKFILE)
        with pytest.raises(lock.WorkdirError, match="is in use by another process"):
            with lock.lock(w):
                pass
        held.check()                                # the workdir's own lock holds: it trains on
        assert (w / LOCKFILE).read_text() == str(os.getpid())         # the lock file made again
        with pytest.raises(lock.WorkdirError, match=f"in use by process {os.getpid()}"):
            lock.check_unlocked(w)
    with lock.lock(w):
        pass


@pytest.mark.parametrize("how", ["moved", "removed"])
def test_the_holder_stops_once_its_workdir_is_moved_or_removed(tmp_path, how):
    """It wrote on at the old path, making a new workdir there with a stray metrics.jsonl."""
    w = tmp_path / "w"
    with lock.lock(w) as held:
        if how == "moved":
            w.rename(tmp_path / "elsewhere")
        else:
            shutil.rmtree(w)
            w.mkdir()
        says = (r"was moved or removed while this run wrote it: this run stopped, writing nothing more "
                r"\(its last checkpoint: step 20\)\. Resume it where it is now")
        with pytest.raises(lock.WorkdirError, match=says):
            held.check(" (its last checkpoint: step 20)")


def test_a_lock_file_of_bytes_that_are_not_text_is_read_as_no_pid(tmp_path):
    """A held lock whose file held non-UTF-8 bytes said "'utf-8' codec can't decode byte 0xff"."""
    w = tmp_path / "w"
    with lock.lock(w):
        (w / LOCKFILE).write_bytes(b"garbage\xff")
        with pytest.raises(lock.WorkdirError, match="in use by another process"):
            lock.check_unlocked(w)
        with pytest.raises(lock.WorkdirError, match="in use by another process"):
            with lock.lock(w):
                pass


@pytest.mark.slow
def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = ("import sys, time; from pathlib import Path; from rnnjax import lock\n"
            "with lock.lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(lock.WorkdirError, match=f"in use by process {proc.pid}"):
            lock.check_unlocked(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(0.1)
    with lock.lock(tmp_path):
        pass


def test_an_unmakeable_workdir_is_one_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(lock.WorkdirError, match="cannot be written"):
        with lock.lock(tmp_path / "f" / "sub"):
            pass
