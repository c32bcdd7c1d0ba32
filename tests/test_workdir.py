"""Checksums of saved states, workdirs that cannot be written, whole files."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from rnnjax import checkpoint, workdir
from rnnjax.lock import LOCKFILE
from rnnjax.data import Vocab

from conftest import TINY


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_text("x") and p, "exists and is not a directory"),
    (lambda p: p.write_text("x") and p / "sub", "is a file, not a directory"),
])
def test_workdirs_that_cannot_be_written(tmp_path, make, message):
    with pytest.raises(workdir.WorkdirError, match=message):
        workdir.check_writable(make(tmp_path / "f"))
    workdir.check_writable(tmp_path / "new" / "nested")          # can be made


def test_paths_orbax_or_the_system_cannot_take_are_refused_before_any_work(tmp_path):
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    for path, message in ((tmp_path / os.fsdecode(b"w\xff"), "has bytes that are not UTF-8 in its path"),
                          (tmp_path / ("x" * 256) / "w", "has a name of 256 bytes in its path"),
                          (tmp_path / "gone", r"is a link to .*nowhere, which does not exist"),
                          (tmp_path / "gone" / "sub", r"cannot be made: .*gone is a link to .*nowhere")):
        with pytest.raises(workdir.WorkdirError, match=message):
            workdir.check_writable(path)
    workdir.check_writable(tmp_path / ("x" * 255))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gone"]            # nothing made
    (tmp_path / "root").symlink_to("/")
    for root in ("/", "/tmp/..", tmp_path / "root"):          # as root, a run wrote its files there
        with pytest.raises(workdir.WorkdirError, match=r"^The workdir .* is the file system's root; give a "):
            workdir.check_writable(Path(root))
    (tmp_path / "root").unlink()


def test_a_path_too_long_for_what_a_run_writes_below_it_is_refused_before_any_work(tmp_path):
    """Near PATH_MAX it trained, then its first save failed in orbax ("free space"), at each run again."""
    need = workdir.PATH_MAX - workdir.BELOW - len(os.fsencode(str(tmp_path.absolute())))
    parts = ["x" * 99] * (need // 100 - 1)                     # each a "/" and 99 bytes
    fits = tmp_path.joinpath(*parts, "y" * (need - 100 * len(parts) - 1))    # the longest path it takes
    assert len(os.fsencode(str(fits.absolute()))) == workdir.PATH_MAX - workdir.BELOW
    workdir.check_writable(fits)
    said = (rf"^The workdir's path is {len(os.fsencode(str(fits))) + 1} bytes long, and the paths a run "
            r"writes below it take up to 128 more, past the system's 4096; use a (--)?workdir of a shorter")
    with pytest.raises(workdir.WorkdirError, match=said):
        workdir.check_writable(Path(str(fits) + "y"))


def test_a_folder_orbax_takes_for_a_url_or_inside_a_run_s_checkpoints_is_refused(tmp_path):
    """``gs:`` (``--workdir gs://bucket/run``, a local folder here) failed only at the first save; a workdir
    in a run's ``checkpoints/`` went when that run deleted the checkpoint."""
    for typed in ("gs://bucket/run", "my-gs:/run"):
        with pytest.raises(workdir.WorkdirError, match=r"orbax reads as a Google Cloud Storage URL"):
            workdir.check_writable(tmp_path / typed)
    for fine in ("s3://bucket/run", "gs:x/run", "GS:/run", "checkpoints/run"):      # orbax saves there
        workdir.check_writable(tmp_path / fine)
    (tmp_path / "proj" / "checkpoints").mkdir(parents=True)
    (tmp_path / "proj" / "config.json").write_text("{}")              # another tool's: not a run
    workdir.check_writable(tmp_path / "proj" / "checkpoints" / "x")
    checkpoint.write_config(tmp_path / "run", TINY, Vocab(list("ab ")))
    with pytest.raises(workdir.WorkdirError, match=r"is inside .*run/checkpoints, the checkpoints of the run "
                                                   r"in .*run, which it deletes as it saves newer ones"):
        workdir.check_writable(tmp_path / "run" / "checkpoints" / "3822" / "nested")
    workdir.check_writable(tmp_path / "run" / "sub")
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "ck").symlink_to(tmp_path / "run" / "checkpoints")      # the same, through a link
    with pytest.raises(workdir.WorkdirError, match=r"is inside .*run/checkpoints, the checkpoints of the"):
        workdir.check_writable(tmp_path / "ck" / "9999")
    for itself in (tmp_path / "run" / "checkpoints", tmp_path / "ck"):      # the run's checkpoints folder
        with pytest.raises(workdir.WorkdirError, match=r"is .*run/checkpoints, the checkpoints of the run"):
            workdir.check_writable(itself)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")                  # resolves to nothing: one sentence
    with pytest.raises(workdir.WorkdirError, match=r"loop is a link in a loop of links, which never reaches"):
        workdir.check_writable(tmp_path / "loop" / "x")
    (tmp_path / "proj" / LOCKFILE).write_text("")                   # a run's, its config.json cut short
    with pytest.raises(workdir.WorkdirError, match=r"is inside .*proj/checkpoints, the checkpoints of"):
        workdir.check_writable(tmp_path / "proj" / "checkpoints" / "x")


@pytest.mark.parametrize("name", ["checkpoints", "damaged", "metrics.jsonl"])
def test_a_workdir_whose_checkpoints_or_records_cannot_be_written_is_refused_before_any_work(
        tmp_path, monkeypatch, name):
    """Found at the first save (in orbax's thread: at the next one) or the first record, hours of training
    lost; access() is what root's permissions allow too."""
    w = tmp_path / "run"
    (w / "checkpoints").mkdir(parents=True)
    (w / "damaged").mkdir()
    (w / "metrics.jsonl").write_text("")
    workdir.check_writable(w)
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path).name != name and real(path, mode))
    with pytest.raises(workdir.WorkdirError, match=rf"^{w / name} is not writable, where the run writes; fix "
                                                   r"its permissions, or use another workdir\.$"):
        workdir.check_writable(w)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_workdir_that_access_allows_but_mkdir_refuses(tmp_path):
    """/proc passes ``os.access`` (for root, anything does); the probe directory finds out, and is gone."""
    with pytest.raises(workdir.WorkdirError, match="cannot be made in /proc"):
        workdir.check_writable(Path("/proc/rnnjax-run"))
    workdir.check_writable(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_checksums_catch_one_flipped_bit():
    state = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.ones(4, np.int32)]}
    sums = workdir.checksums(state)
    assert workdir.verify(state, sums) == []
    flipped = state["a"].copy()
    flipped.view(np.uint32)[1, 2] ^= 1 << 7
    assert workdir.verify({**state, "a": flipped}, sums) == ["['a']"]
    assert workdir.verify({"a": state["a"]}, sums) == ["['b'][0]"]          # a missing array counts


def test_a_folder_of_someone_else_s_config_or_plot_is_refused_and_a_run_s_own_is_not(tmp_path):
    mine = tmp_path / "proj"
    mine.mkdir()
    (mine / "notes.md").write_text("my notes")           # a run writes no notes.md: it stays
    workdir.check_ours(mine)
    (mine / "config.json").write_text('{"mine": true}')
    with pytest.raises(workdir.WorkdirError, match=r"holds config.json but no checkpoints: a new run would"):
        workdir.check_ours(mine)
    (mine / "config.json").unlink()
    (mine / "ppl.png").write_bytes(b"PNG")
    with pytest.raises(workdir.WorkdirError, match=r"holds ppl.png but no checkpoints"):
        workdir.check_ours(mine)
    ours = tmp_path / "run"                   # a run killed before its first checkpoint: started anew
    checkpoint.write_config(ours, TINY, Vocab(list("ab ")))
    (ours / "ppl.png").write_bytes(b"PNG")
    workdir.check_ours(ours)
    saved = json.loads((ours / "config.json").read_text())
    for theirs in ({"config": {"model": "bert"}, "vocab": {"size": 3}},          # another tool's
                   {**saved, "config": {**saved["config"], "lr": -1.0}},        # not a config of ours
                   {**saved, "vocab": {**saved["vocab"], "text_sha1": 5}}):
        (mine / "config.json").write_text(json.dumps(theirs))
        with pytest.raises(workdir.WorkdirError, match="holds config.json and ppl.png but no checkpoints"):
            workdir.check_ours(mine)
    (mine / "config.json").unlink()
    os.mkfifo(mine / "config.json")           # refused, not read (reading would hang)
    with pytest.raises(workdir.WorkdirError, match="holds config.json and ppl.png but no checkpoints"):
        workdir.check_ours(mine)
    (mine / "config.json").unlink()
    (mine / "checkpoints").mkdir()            # a run's workdir
    workdir.check_ours(mine)
    workdir.check_ours(tmp_path / "new")


def test_write_atomically_syncs_before_the_rename_and_keeps_the_old_file_if_it_fails(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text("old")
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", str(a))), real_replace(a, b)))
    workdir.write_atomically(path, "new")
    assert path.read_text() == "new"
    tmp = str(path) + ".tmp"
    assert calls == [("fsync", tmp), ("replace", tmp), ("fsync", str(tmp_path))]

    def full(tmp):
        raise OSError(28, "No space left on device")
    with pytest.raises(workdir.WorkdirError, match="config.json cannot be written .*free space"):
        workdir.write_atomically(path, "newer", save=full)
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]

    def interrupted(tmp):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        workdir.write_atomically(path, "newer", save=interrupted)
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_folder_where_the_temporary_file_goes_is_named(tmp_path):
    (tmp_path / "ppl.png.tmp").mkdir()
    with pytest.raises(workdir.WorkdirError, match=r"ppl.png.tmp is a folder, where ppl.png is written"):
        workdir.write_atomically(tmp_path / "ppl.png", "x")
    assert (tmp_path / "ppl.png.tmp").is_dir() and not (tmp_path / "ppl.png").exists()


def test_a_path_is_in_a_run_s_checkpoints_as_the_system_takes_its_dots(tmp_path, monkeypatch):
    """R/checkpoints/../../other was refused as inside R's checkpoints; the run was named R/checkpoints/..."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "R" / "checkpoints").mkdir(parents=True)
    (tmp_path / "R" / LOCKFILE).write_text("")
    (tmp_path / "other").mkdir()
    assert workdir.in_checkpoints(Path("R/checkpoints/../../other/s1")) is None
    assert workdir.in_checkpoints(Path("R/checkpoints/../checkpoints/7")) == (
        f"inside {tmp_path / 'R' / 'checkpoints'}, the checkpoints of the run in {tmp_path / 'R'}")
    monkeypatch.chdir(tmp_path / "R")
    assert workdir.in_checkpoints(Path("./checkpoints/../checkpoints")) == (
        f"{tmp_path / 'R' / 'checkpoints'}, the checkpoints of the run in {tmp_path / 'R'}")
