"""``rnnjax.tidy``: what the lock's holder moves and removes in a checkpoints folder, and what it leaves."""

import pytest

from rnnjax import tidy
from rnnjax.stored import DAMAGED, SUBDIR, CheckpointError


def test_only_the_folders_of_orbax_s_unfinished_saves_are_removed(tmp_path):
    assert tidy.remove_unfinished(tmp_path) == []                 # no checkpoints folder: nothing made
    assert not (tmp_path / SUBDIR).exists()
    folder = tmp_path / SUBDIR
    (folder / "7.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
    (folder / "7.orbax-checkpoint-tmp" / "state" / "d").write_bytes(bytes(10))
    (folder / "6").mkdir()                                          # a checkpoint
    (folder / "x.orbax-checkpoint-tmp").mkdir()                     # not a step's
    (folder / "8.orbax-checkpoint-tmp-1").symlink_to(folder / "6")  # a link: never followed
    removed = tidy.remove_unfinished(tmp_path)
    assert [p.name for p in removed] == ["7.orbax-checkpoint-tmp"]
    left = ["6", "8.orbax-checkpoint-tmp-1", "x.orbax-checkpoint-tmp"]
    assert sorted(p.name for p in folder.iterdir()) == left


def test_setting_aside_a_step_gone_meanwhile_or_that_cannot_move_is_no_traceback(tmp_path):
    """A step removed as it was set aside (its run pruning it) raised FileNotFoundError."""
    (tmp_path / SUBDIR).mkdir()
    assert tidy.set_aside(tmp_path, 7) is None and not (tmp_path / DAMAGED).exists()
    (tmp_path / SUBDIR / "8").mkdir()
    (tmp_path / DAMAGED).write_text("a file where the folder goes")
    with pytest.raises(CheckpointError, match=r"checkpoints/8 cannot be moved to .*damaged/8 \(.*\); "
                                              "move it aside yourself"):
        tidy.set_aside(tmp_path, 8)


def test_checkpoints_orbax_dropped_are_removed_and_a_link_in_their_place_is_not_followed(tmp_path):
    (tmp_path / SUBDIR / tidy.REMOVING / "13" / "state").mkdir(parents=True)
    tidy.remove_unfinished(tmp_path)                # before a resume: what orbax dropped goes too
    assert list((tmp_path / SUBDIR).iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / SUBDIR / tidy.REMOVING).symlink_to(tmp_path / "mine")
    (tmp_path / "mine" / "keep").write_text("")
    tidy.remove_dropped(tmp_path / SUBDIR)
    assert (tmp_path / "mine" / "keep").is_file()
