"""``rnnjax.lock``: one writer per workdir, whatever becomes of its lock file, and no stale lock."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnjax import lock
from rnnjax.lock import LOCKFILE
from rnnjax.stored import CONFIG


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


def test_folders_the_lock_made_are_removed_again_where_nothing_else_was_written(tmp_path):
    """A run refused once it holds the lock (loop.run refuses a state) leaves no workdir behind."""
    with lock.lock(tmp_path / "a" / "b" / "w"):
        assert os.listdir(tmp_path / "a" / "b" / "w") == [LOCKFILE]
    assert os.listdir(tmp_path) == []
    with lock.lock(tmp_path / "a" / "w"):
        (tmp_path / "a" / "w" / CONFIG).write_text("{}")
    assert sorted(os.listdir(tmp_path / "a" / "w")) == [LOCKFILE, CONFIG]       # a run's: kept
    with lock.lock(tmp_path / "a" / "w"):       # there before: kept as it was
        pass
    (tmp_path / "a" / "w" / CONFIG).unlink()
    with lock.lock(tmp_path / "a" / "w"):
        pass
    assert os.listdir(tmp_path / "a" / "w") == [LOCKFILE]


def test_only_the_folders_the_lock_made_and_still_holds_are_removed(tmp_path, monkeypatch):
    """A cwd changed in the block made it remove another folder and climb to the root; another run's
    workdir made where the refused one was moved lost its lock file; ``..`` removed a folder that was
    there before."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two" / "a" / "w").mkdir(parents=True)
    (tmp_path / "two" / "a" / "w" / LOCKFILE).write_text("theirs")
    monkeypatch.chdir(tmp_path / "one")
    with lock.lock(Path("a/w")):
        os.chdir(tmp_path / "two")
    assert (tmp_path / "two" / "a" / "w" / LOCKFILE).read_text() == "theirs"
    assert os.listdir(tmp_path / "one") == []                   # its own, removed as made
    with lock.lock(tmp_path / "w"):
        (tmp_path / "w").rename(tmp_path / "moved")
        (tmp_path / "w").mkdir()
        (tmp_path / "w" / LOCKFILE).write_text("theirs")
    assert (tmp_path / "w" / LOCKFILE).read_text() == "theirs" and (tmp_path / "moved").is_dir()
    (tmp_path / "existing").mkdir()
    monkeypatch.chdir(tmp_path)
    with lock.lock(Path("nothere/../existing")):
        pass
    assert (tmp_path / "existing" / LOCKFILE).is_file()


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_lock_file_removed_or_replaced_lets_no_second_writer_in(tmp_path, how):
    """The lock was the lock file's alone: removed, a second writer locked a new one and both wrote."""
    w = tmp_path / "w"
    with lock.lock(w) as held:
        (w / CONFIG).write_text("{}")                 # as the run writes it first
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


@pytest.mark.parametrize("how", ["moved", "removed", "emptied", "cwd changed"])
def test_the_holder_stops_once_its_workdir_is_moved_removed_or_emptied(tmp_path, monkeypatch, how):
    """It wrote on at the old path, making a new workdir there with a stray metrics.jsonl; emptied by an
    ``rm -r`` as it ran, it made its lock file again and trained on, saving nothing. A relative workdir
    is the one it was when the run started, whatever the process's cwd becomes."""
    monkeypatch.chdir(tmp_path)
    w = Path("w")
    with lock.lock(w) as held:
        (w / CONFIG).write_text("{}")                 # as the run writes it first
        held.check()
        if how == "cwd changed":
            monkeypatch.chdir("/")
            held.check()
            return
        if how == "moved":
            w.rename(tmp_path / "elsewhere")
        elif how == "removed":
            shutil.rmtree(w)
            w.mkdir()
        else:
            for path in w.iterdir():
                path.unlink()
        says = (r"was moved, removed or emptied while this run wrote it: this run stopped, writing nothing "
                r"more \(its last checkpoint: step 20\)\. If it was moved, resume it there")
        with pytest.raises(lock.WorkdirError, match=says):
            held.check(" (its last checkpoint: step 20)")


def test_where_folders_cannot_be_locked_the_lock_file_s_lock_holds_and_its_removal_stops_the_run(
        tmp_path, monkeypatch):
    """NFS, say: ``flock`` on a folder fails; the lock file alone keeps a second writer out while it is
    there, and the holder stops once it is removed or replaced (another may have locked a new one)."""
    real_flock = lock.fcntl.flock

    def flock(fd, mode):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOLCK, "No locks available")
        return real_flock(fd, mode)
    monkeypatch.setattr(lock.fcntl, "flock", flock)
    w = tmp_path / "w"
    with lock.lock(w) as held:
        (w / CONFIG).write_text("{}")
        with pytest.raises(lock.WorkdirError, match=f"in use by process {os.getpid()}"):
            with lock.lock(w):
                pass
        held.check()
        (w / LOCKFILE).unlink()
        with pytest.raises(lock.WorkdirError, match=r"lock file .* was removed or replaced while this run "
                                                    "held it, so another run may be writing there"):
            held.check()


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


def test_an_unmakeable_workdir_is_one_error(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(lock.WorkdirError, match="cannot be written"):
        with lock.lock(tmp_path / "f" / "sub"):
            pass
    opened = os.open

    def read_only(path, *args, **kwargs):       # a read-only lock file, as a user who is not root meets it
        if os.path.basename(path) == lock.LOCKFILE:
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(lock.WorkdirError, match=rf"^The workdir {tmp_path} cannot be written \("
                                                rf"{tmp_path / lock.LOCKFILE}: Permission denied\)\.$"):
        with lock.lock(tmp_path):
            pass


def test_a_second_process_of_one_id_of_a_multi_host_run_is_refused_and_a_killed_one_leaves_its_id(
        tmp_path, monkeypatch):
    """A process restarted under the id of one still running joined, and JAX aborted every process of the
    run, unsaved (hostile pass: 'unexpectedly tried to connect with a different incarnation')."""
    monkeypatch.setenv("RNNJAX_CACHE", str(tmp_path))
    code = ("import sys; from rnnjax import lock\n"
            "lock.claim_process('host:1234', 1); print('joined', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "joined"
        said = (rf"^Process 1 of the multi-host run at host:1234 is running on this machine already \(pid "
                rf"{proc.pid}\): a second one joining as process_id=1 would stop every process of the run "
                r"unsaved\. Give each process its own id, or stop that one first\.$")
        with pytest.raises(ValueError, match=said):
            lock.claim_process("host:1234", 1)
        lock.claim_process("host:1234", 0)           # another id of the run, and another run's
        lock.claim_process("other:1234", 1)
        lock.claim_process("host:1234", 0)           # its own, again: it named its own pid
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("RNNJAX_CACHE", ".")      # the same folder written otherwise
        lock.claim_process("host:1234", 0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lock.claim_process("host:1234", 1)               # the kernel released it: no stale claim
    assert sorted(p.name for p in (tmp_path / "processes").iterdir()) == [
        "host_1234-0.lock", "host_1234-1.lock", "other_1234-1.lock"]
