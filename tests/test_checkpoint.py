"""``rnnjax.checkpoint``: saving a run, keeping its latest and best checkpoints, resuming bit for bit."""

import logging
import os
import re
import signal
import time

import jax
import numpy as np
import pytest

from conftest import TINY, TWO_CALLS, assert_trees_equal, tree_digest, without_seconds

from rnnjax import checkpoint
from rnnjax.checkpoint import CheckpointError
from rnnjax.metrics import MetricsLog
from rnnjax.state import create_train_state
from rnnjax.train import STEPS_PER_CALL, Interrupted, fit

SMALL = TINY.replace(epochs=4)


def with_epochs(config, epochs):
    return config.replace(epochs=epochs)


def test_save_restore_round_trip(small_data, tmp_path):
    result = fit(with_epochs(SMALL, 2), small_data, tmp_path, devices=1)
    restored = checkpoint.restore(tmp_path)
    assert restored.step == int(result.state.step) == 2 * small_data.num_batches()
    assert restored.config == with_epochs(SMALL, 2) and restored.vocab == small_data.vocab
    assert_trees_equal(restored.params, result.state.params)
    mngr = checkpoint.manager(tmp_path / checkpoint.SUBDIR)
    full = checkpoint.restore_state(mngr, restored.step, create_train_state(SMALL, len(small_data.vocab)))
    assert_trees_equal(full, result.state)             # step, params and optimizer state
    assert restored.meta["position"] == {"epoch": 2, "batch": 0, "partial": [{}], "stopped": [], "high": [0]}
    assert repr(restored) == (f"Restored(config={restored.config!r}, vocab=Vocab({len(small_data.vocab)} "
                              f"tokens), step={restored.step}, run=None)")   # not every array


def test_resume_equals_an_uninterrupted_run(small_data, tmp_path, monkeypatch):
    straight = fit(SMALL, small_data, tmp_path / "straight", devices=1)
    monkeypatch.chdir(tmp_path)         # a relative workdir, as the CLI's default: orbax wants absolute paths
    fit(with_epochs(SMALL, 2), small_data, "runs/resumed", devices=1)
    resumed = fit(SMALL, small_data, "runs/resumed", devices=1)
    assert without_seconds(resumed.history) == without_seconds(straight.history)      # bit for bit
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert_trees_equal(resumed.state, straight.state)
    assert_trees_equal(checkpoint.restore("runs/resumed").params, straight.state.params)


def test_interrupt_saves_the_last_step_and_resumes_exactly(two_call_data, tmp_path):
    config, data = TWO_CALLS.replace(epochs=4), two_call_data
    straight = fit(config, data, tmp_path / "straight", devices=1)
    sent = []
    steps, per_call = data.num_batches(), STEPS_PER_CALL     # 23 steps an epoch, 10 a first call
    stop_at = steps + per_call                              # after epoch 2's first call

    def send_sigterm(done, total, record):
        if done == stop_at and not sent:
            sent.append(done)
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match=f"epoch 2 after batch {per_call}/{steps}") as info:
        fit(config, data, tmp_path / "run", devices=1, progress=send_sigterm)
    assert info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL        # handler restored
    mngr = checkpoint.manager(tmp_path / "run" / checkpoint.SUBDIR)
    assert mngr.latest_step() == stop_at
    resumed = fit(config, data, tmp_path / "run", devices=1)
    assert without_seconds(resumed.history) == without_seconds(straight.history)
    assert_trees_equal(resumed.state, straight.state)


def test_a_second_signal_while_a_save_starts_its_thread_stops_cleanly(two_call_data, tmp_path, monkeypatch):
    """The second signal lands inside orbax's ``Thread.start`` (as it did once in CI): held until the save
    has started, it then stops the run, and the save it held up completes."""
    import threading
    start, sent = threading.Thread.start, []

    def first_signal(done, total, record):
        if not sent:
            sent.append("first")
            os.kill(os.getpid(), signal.SIGTERM)

    def start_with_a_second_signal(thread):
        if sent == ["first"]:
            sent.append("second")
            os.kill(os.getpid(), signal.SIGTERM)          # its handler runs here, before the thread starts
        return start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_with_a_second_signal)
    with pytest.raises(Interrupted, match=r"second signal 15 \(SIGTERM\)"):
        fit(TWO_CALLS, two_call_data, tmp_path, devices=1, progress=first_signal)
    assert sent == ["first", "second"]
    assert checkpoint.restore(tmp_path).step == STEPS_PER_CALL       # the held-up save is whole


def test_keeps_latest_and_best(small_data, tmp_path):
    fit(with_epochs(SMALL, 6), small_data, tmp_path, devices=1, checkpoint_every=1, keep=2)
    mngr = checkpoint.manager(tmp_path / checkpoint.SUBDIR)
    records = MetricsLog(tmp_path / "metrics.jsonl").read()
    best = min(records, key=lambda r: r["val_ppl"])["step"]
    assert set(mngr.all_steps()) == {records[-1]["step"], records[-2]["step"], best}
    assert checkpoint.restore(tmp_path, best=True).step == best


def test_saves_every_checkpoint_every_epochs_and_after_the_last(small_data, tmp_path):
    fit(with_epochs(SMALL, 7), small_data, tmp_path, devices=1, checkpoint_every=3, keep=5)
    steps = small_data.num_batches()
    assert checkpoint.manager(tmp_path / checkpoint.SUBDIR).all_steps() == [3 * steps, 6 * steps, 7 * steps]
    resumed = fit(with_epochs(SMALL, 8), small_data, tmp_path, devices=1, checkpoint_every=3, keep=5)
    assert [r["epoch"] for r in resumed.history] == list(range(1, 9))


def test_a_failed_save_never_names_its_own_step_as_the_last_complete_one(tmp_path, monkeypatch):
    folder = tmp_path / checkpoint.SUBDIR
    mngr = checkpoint.manager(folder)
    try:
        for step in (1, 2):             # step 2's save reads step 1's back
            checkpoint.save(mngr, step, {"w": np.arange(4, dtype=np.float32)}, {})
        mngr.wait_until_finished()
        (folder / "2" / "meta" / "metadata").unlink()       # listed, but lacking a file
        with pytest.raises(CheckpointError, match=r"Saving step 2 .* lacks meta/metadata after its save\); "
                           r"training stopped and its last complete checkpoint is step 1\."):
            checkpoint.check_saved(mngr)
        (folder / "1" / "state" / "_METADATA").unlink()
        mngr.unchecked.append(2)
        with pytest.raises(CheckpointError, match=r"Saving step 2 .* it has no complete checkpoint\."):
            checkpoint.check_saved(mngr)
        # Another host's process, which does not share the folder: "Free space" misled.
        monkeypatch.setattr(jax, "process_index", lambda: 1)
        mngr.unchecked.append(2)
        unshared = (r"^Saving step 2 to .*: this process \(1\) does not see what process 0 wrote there "
                    r"\(.* lacks meta/metadata\): its save failed \(process 0 says why\), or the processes "
                    r"do not share one workdir folder")
        with pytest.raises(CheckpointError, match=unshared):
            checkpoint.check_saved(mngr)
        # A peer killed in the save's collective: "Free space" misled too (multi-host, hostile pass).
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        lost = ValueError("UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read error: Connection reset")
        said = (r"^Saving step 3 to .* failed \(ValueError: UNKNOWN: Gloo AllGather failed: .*\): another "
                r"process of the multi-host run stopped or failed; training stopped and it has no complete "
                r"checkpoint\. Start every process again to resume\.$")
        assert re.match(said, str(checkpoint._save_failed(mngr, 3, lost)))
        assert "Free space" in str(checkpoint._save_failed(mngr, 3, OSError(28, "No space left on device")))
    finally:
        mngr.close()


def test_half_written_checkpoint_is_ignored(small_data, tmp_path, caplog):
    fit(with_epochs(SMALL, 1), small_data, tmp_path, devices=1)
    # What a save killed midway leaves behind: orbax's temporary directory (its name, for step 26).
    tmp_dir = tmp_path / checkpoint.SUBDIR / "26.orbax-checkpoint-tmp"
    tmp_dir.mkdir()
    (tmp_dir / "garbage").write_text("half")
    assert checkpoint.restore(tmp_path).step == 13
    resumed = fit(with_epochs(SMALL, 2), small_data, tmp_path, devices=1)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert not tmp_dir.exists() and "temporary directory" not in caplog.text     # orbax's warning, dropped


@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_a_step_s_missing_or_empty_orbax_metadata_is_not_logged_and_the_run_resumes_from_it(
        damage, small_data, tmp_path, caplog):
    """orbax logs "Metadata file does not exist" (a warning) or "Failed to json parse Metadata file" (an
    error) for a step folder's ``_CHECKPOINT_METADATA``: its timestamps, which rnnjax does not need."""
    fit(with_epochs(SMALL, 1), small_data, tmp_path, devices=1, log=None)
    metadata = tmp_path / checkpoint.SUBDIR / "13" / "_CHECKPOINT_METADATA"
    metadata.unlink() if damage == "missing" else metadata.write_text("")
    said = []
    with caplog.at_level(logging.INFO):
        resumed = fit(with_epochs(SMALL, 2), small_data, tmp_path, devices=1, log=said.append)
    assert said[0].startswith("resuming from step 13 (epoch 2 of 2, batch 0)")
    assert [r["epoch"] for r in resumed.history] == [1, 2] and int(resumed.state.step) == 26
    # What a user sees (absl's default): orbax's INFO "Wrote Metadata=..." may land in time, or not.
    said = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "Metadata file" not in said and "_CHECKPOINT_METADATA" not in said


def test_config_mismatch_is_a_clear_error_and_nothing_is_touched(small_data, tmp_path):
    fit(with_epochs(SMALL, 1), small_data, tmp_path, devices=1)
    before = tree_digest(tmp_path)
    other = SMALL.replace(num_hiddens=32)
    with pytest.raises(CheckpointError, match=r"than the one given: num_hiddens=32 \(it has 16\)\. "
                                              r"Use a new workdir,"):
        fit(other, small_data, tmp_path, devices=1)
    assert tree_digest(tmp_path) == before


@pytest.mark.slow
def test_cli_ctrl_c_then_resume_then_predict(real_text_path, tmp_path, main_job):
    workdir = tmp_path / "run"
    args = ["--data", real_text_path, "--workdir", str(workdir), "--epochs", "15", "--no-progress"]
    proc = main_job(*args)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Run the same command again to resume" in err
    stopped_at = checkpoint.restore(workdir).step
    assert stopped_at >= 20

    proc = main_job(*args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    records = MetricsLog(metrics).read()
    assert [r["epoch"] for r in records] == list(range(1, 16))
    assert checkpoint.restore(workdir).step == 150

    proc = main_job("--workdir", str(workdir), "--predict", "it has", "--num-preds", "50")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == checkpoint.restore(workdir).predict("it has", 50)

    proc = main_job("--workdir", str(workdir), "--predict", "it has", "--num-hiddens", "64")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "--num-hiddens 64 (it has 32)" in err


def test_best_is_the_lowest_validation_perplexity_and_survives_a_restart(small_data, tmp_path):
    """A run whose validation perplexity jumps about (lr 4), one checkpoint kept, one saved every
    epoch, and a restart after epoch 9: the best, from before the restart, is what best=True
    restores, and it is never deleted."""
    config = SMALL.replace(lr=4.0, epochs=9)
    fit(config, small_data, tmp_path, devices=1, checkpoint_every=1, keep=1, log=None)
    fit(config.replace(epochs=12), small_data, tmp_path, devices=1, checkpoint_every=1, keep=1, log=None)
    records = MetricsLog(tmp_path / "metrics.jsonl").read()
    best = min(records, key=lambda r: r["val_ppl"])
    assert best["epoch"] < 9                  # what this test is about: a best older than the restart
    assert checkpoint.restore(tmp_path, best=True).step == best["step"] != records[-1]["step"]
    kept = checkpoint.manager(tmp_path / checkpoint.SUBDIR).all_steps()
    assert set(kept) == {best["step"], records[-1]["step"]}       # the latest and the best, nothing else


def test_an_earlier_best_goes_once_a_later_checkpoint_beats_it(small_data, tmp_path):
    """lr 1 improves every epoch: after a restart with keep=1, the checkpoint that was best before it is
    deleted as soon as a later one is better, leaving one."""
    config = SMALL.replace(epochs=3)
    fit(config, small_data, tmp_path, devices=1, checkpoint_every=1, keep=1, log=None)
    fit(config.replace(epochs=5), small_data, tmp_path, devices=1, checkpoint_every=1, keep=1, log=None)
    records = MetricsLog(tmp_path / "metrics.jsonl").read()
    assert [r["val_ppl"] for r in records] == sorted((r["val_ppl"] for r in records), reverse=True)
    assert checkpoint.manager(tmp_path / checkpoint.SUBDIR).all_steps() == [records[-1]["step"]]


def test_a_save_failing_as_the_manager_closes_after_an_error_leaves_that_error(tmp_path, monkeypatch):
    """On a full disk the metrics line fails first, then the pending save as the manager closes: the run
    says the first (it said a bare OSError, blamed on stdout)."""
    import orbax.checkpoint as ocp

    def full(self):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ocp.CheckpointManager, "close", full)
    with pytest.raises(LookupError, match="metrics.jsonl cannot be written"):
        with checkpoint.manager(tmp_path / "a"):
            raise LookupError("metrics.jsonl cannot be written")
    with pytest.raises(OSError, match="No space left"):       # closed after no error: its own is said
        with checkpoint.manager(tmp_path / "b"):
            pass


def test_orbax_s_notes_on_a_step_s_metadata_are_dropped_while_its_manager_is_open(tmp_path, caplog):
    """Dropped only as the manager started: under load a save's own read let "WARNING:absl:Metadata file
    does not exist: .../3454.orbax-checkpoint-tmp/_CHECKPOINT_METADATA" through to a user's terminal."""
    folder = (tmp_path / checkpoint.SUBDIR).absolute()
    note = f"Metadata file does not exist: {folder}/7.orbax-checkpoint-tmp/_CHECKPOINT_METADATA"
    mngr = checkpoint.manager(folder)
    with caplog.at_level(logging.WARNING, logger="absl"):
        logging.getLogger("absl").warning(note)
        assert note not in caplog.text
        mngr.close()
        logging.getLogger("absl").warning(note)
        assert note in caplog.text                  # another manager's, or none: passed on


@pytest.mark.parametrize("content", ['{"item_handlers": 5}', "[]"])
def test_a_step_metadata_orbax_cannot_take_is_damage_of_that_step(small_data, tmp_path, content):
    """Valid JSON of other types in a step's _CHECKPOINT_METADATA, even an older step's: orbax's manager
    failed on it at every resume ("Metadata dict must be a dictionary"), naming no step."""
    fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, log=None, checkpoint_every=1)
    older, latest = sorted(checkpoint.steps(tmp_path))
    (tmp_path / checkpoint.SUBDIR / str(older) / "_CHECKPOINT_METADATA").write_text(content)
    says = rf"step {older} .* has a _CHECKPOINT_METADATA that orbax cannot take \(ValueError: "
    with pytest.raises(checkpoint.DamagedCheckpoint, match=says):
        checkpoint.restore(tmp_path, step=older)             # restore and resume call it alike
    said = []
    resumed = fit(TINY.replace(epochs=3), small_data, tmp_path, devices=1, log=said.append,
                  checkpoint_every=1)
    assert said[0].startswith(f"resuming from step {latest} ")
    assert f"checkpoint step {older} has a _CHECKPOINT_METADATA" in said[0]
    assert int(resumed.state.step) == latest + older
    assert (tmp_path / checkpoint.DAMAGED / str(older)).is_dir()


def test_orbax_drops_a_checkpoint_in_one_rename_and_rnnjax_deletes_it(small_data, tmp_path, monkeypatch):
    """Deleted file by file, a step killed mid-delete was left without its meta: read as damaged, set aside,
    and restore(best=True) failed on it. Moved into checkpoints/.removing, it is whole or gone."""
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "remove_dropped", lambda directory: None)      # a kill before rnnjax deletes
        fit(TINY.replace(epochs=3), small_data, tmp_path, devices=1, log=None, checkpoint_every=1, keep=1)
    dropped = tmp_path / checkpoint.SUBDIR / checkpoint.REMOVING
    kept = checkpoint.steps(tmp_path)
    assert sorted(os.listdir(dropped)) and not set(map(int, os.listdir(dropped))) & set(kept)
    (dropped / "13" / "meta").rename(tmp_path / "partly-deleted")           # cut short, as a kill leaves it
    assert checkpoint.restore(tmp_path, best=True).step in kept
    said = []
    resumed = fit(TINY.replace(epochs=4), small_data, tmp_path, devices=1, log=said.append,
                  checkpoint_every=1)
    assert "set aside" not in said[0] and not dropped.exists() and int(resumed.state.step) == 4 * 13
    assert not (tmp_path / checkpoint.DAMAGED).exists()


def test_a_second_signal_leaves_the_manager_without_waiting_for_its_saves(tmp_path, monkeypatch):
    """"Stopped at once": in a multi-host run it waited in the manager's close for a save, which another
    process's full disk had failed, for 20 minutes; any other stop, and a single process's, still waits."""
    import orbax.checkpoint as ocp
    from rnnjax import stops
    closes = []
    close = ocp.CheckpointManager.close
    monkeypatch.setattr(ocp.CheckpointManager, "close", lambda self: closes.append(self))
    second, first = stops._StopFlag._second(signal.SIGINT), stops.Interrupted("first", signal.SIGINT)
    managers = [checkpoint.manager(tmp_path / name) for name in ("second", "first", "alone")]
    with monkeypatch.context() as m:
        m.setattr(jax, "process_count", lambda: 2)
        for mngr, stop in zip(managers, (second, first)):
            with pytest.raises(stops.Interrupted):
                with mngr:
                    raise stop
    with pytest.raises(stops.Interrupted):
        with managers[2]:
            raise second
    assert closes == managers[1:]
    close(managers[0])


def test_steps_are_listed_in_order(tmp_path, monkeypatch):
    """orbax lists them in the folder's order: [39, 26, 52] (library user)."""
    import orbax.checkpoint as ocp
    (tmp_path / checkpoint.SUBDIR).mkdir()
    monkeypatch.setattr(ocp.utils, "checkpoint_steps", lambda directory: [39, 26, 52])
    assert checkpoint.steps(tmp_path) == [26, 39, 52]
