import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import TINY, without_seconds

from rnnjax import checkpoint, runs
from rnnjax.checkpoint import CheckpointError
from rnnjax.metrics import MetricsLog
from rnnjax.state import create_train_state, make_model
from rnnjax.train import STEPS_PER_CALL, Interrupted, fit

SMALL = TINY.replace(epochs=4)


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def tree_digest(path):
    """Every file under ``path`` with its content hash: to show nothing changed."""
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


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


def test_resume_equals_an_uninterrupted_run(small_data, tmp_path, monkeypatch):
    straight = fit(SMALL, small_data, tmp_path / "straight", devices=1)
    monkeypatch.chdir(tmp_path)         # a relative workdir, as the CLI's default: orbax wants absolute paths
    fit(with_epochs(SMALL, 2), small_data, "runs/resumed", devices=1)
    resumed = fit(SMALL, small_data, "runs/resumed", devices=1)
    assert without_seconds(resumed.history) == without_seconds(straight.history)      # bit for bit
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert_trees_equal(resumed.state, straight.state)
    assert_trees_equal(checkpoint.restore("runs/resumed").params, straight.state.params)


def test_interrupt_saves_the_last_step_and_resumes_exactly(small_data, tmp_path):
    straight = fit(SMALL, small_data, tmp_path / "straight", devices=1)
    sent = []
    steps, per_call = small_data.num_batches(), STEPS_PER_CALL      # 13 steps an epoch, 10 a call
    stop_at = steps + per_call                                      # after epoch 2's first call

    def send_sigterm(done, total, record):
        if done == stop_at and not sent:
            sent.append(done)
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match=f"epoch 2 after batch {per_call}/{steps}") as info:
        fit(SMALL, small_data, tmp_path / "run", devices=1, progress=send_sigterm)
    assert info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL        # handler restored
    mngr = checkpoint.manager(tmp_path / "run" / checkpoint.SUBDIR)
    assert mngr.latest_step() == stop_at
    resumed = fit(SMALL, small_data, tmp_path / "run", devices=1)
    assert without_seconds(resumed.history) == without_seconds(straight.history)
    assert_trees_equal(resumed.state, straight.state)


def test_a_second_signal_while_a_save_starts_its_thread_stops_cleanly(small_data, tmp_path, monkeypatch):
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
        fit(SMALL, small_data, tmp_path, devices=1, progress=first_signal)
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


def test_a_failed_save_never_names_its_own_step_as_the_last_complete_one(tmp_path):
    folder = tmp_path / checkpoint.SUBDIR
    mngr = checkpoint.manager(folder)
    try:
        for step in (1, 2):             # step 2's save reads step 1's back
            checkpoint.save(mngr, step, {"w": np.arange(4, dtype=np.float32)}, {})
        mngr.wait_until_finished()
        (folder / "2" / "meta" / "metadata").unlink()       # listed, but lacking a file
        with pytest.raises(CheckpointError, match=r"Saving step 2 .* lacks meta/metadata after its save\); "
                           r"training stopped there and its last complete checkpoint is step 1\."):
            checkpoint.check_saved(mngr)
        (folder / "1" / "state" / "_METADATA").unlink()
        mngr.unchecked.append(2)
        with pytest.raises(CheckpointError, match=r"Saving step 2 .* it has no complete checkpoint\."):
            checkpoint.check_saved(mngr)
    finally:
        mngr.close()


def test_missing_or_empty_workdir(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.restore(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoints"):
        checkpoint.restore(tmp_path / "empty")
    (tmp_path / "empty" / checkpoint.SUBDIR).mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        checkpoint.restore(tmp_path / "empty")


def test_unknown_step(small_data, tmp_path):
    fit(with_epochs(SMALL, 1), small_data, tmp_path, devices=1)
    with pytest.raises(CheckpointError, match="no checkpoint at step 5"):
        checkpoint.restore(tmp_path, step=5)


def test_run_is_a_whole_number_as_step_is(small_data, tmp_path):
    together = runs.fit_runs([with_epochs(TINY, 1).replace(seed=s) for s in (0, 1)], small_data, tmp_path,
                             devices=1, log=None)
    for run in (1, np.int64(1), "1"):
        restored = checkpoint.restore(tmp_path, run=run)
        assert restored.config.seed == 1
        assert_trees_equal(restored.params, jax.tree.map(lambda x: x[1], together.state.params))
    for bad in (True, 1.0, "one", "²", [1]):
        message = rf"^run must be a whole number, got {re.escape(repr(bad))}\.$"
        with pytest.raises(CheckpointError, match=message):
            checkpoint.restore(tmp_path, run=bad)
        with pytest.raises(CheckpointError, match="run must be a whole number"):
            checkpoint.restore(tmp_path, best=True, run=bad)


# After a failed restore, orbax's background event loop complains while shutting down.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupted_checkpoint_is_a_clear_error_and_nothing_is_touched(small_data, tmp_path):
    fit(with_epochs(SMALL, 1), small_data, tmp_path, devices=1)
    step_dir = tmp_path / checkpoint.SUBDIR / "13"
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and f.parent.name == "d":
            f.write_bytes(b"\0" * f.stat().st_size)
    before = tree_digest(tmp_path)
    with pytest.raises(CheckpointError, match="step 13 .* cannot be restored"):
        checkpoint.restore(tmp_path)
    with pytest.raises(CheckpointError, match="cannot be restored"):
        fit(with_epochs(SMALL, 2), small_data, tmp_path, devices=1)
    assert tree_digest(tmp_path) == before


def test_a_checkpoint_removed_as_it_is_read_is_not_damage(small_data, tmp_path, monkeypatch):
    """The run writing a workdir keeps its latest: it may remove the one a restore is reading, which then
    fails as damage would. The latest (or best) is picked again; a step asked for says it went."""
    import shutil
    fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    from rnnjax import restore as restore_lib
    read = restore_lib._restore_for_inference

    def removed_as_read(workdir, step, run):
        if step == 26 and (tmp_path / checkpoint.SUBDIR / "26").exists():
            shutil.rmtree(tmp_path / checkpoint.SUBDIR / "26")
            raise checkpoint.DamagedCheckpoint(step, tmp_path / checkpoint.SUBDIR, "cannot be restored")
        return read(workdir, step, run)
    monkeypatch.setattr(restore_lib, "_restore_for_inference", removed_as_read)
    assert checkpoint.restore(tmp_path).step == 13
    fit(TINY.replace(epochs=2), small_data, tmp_path / "again", devices=1, checkpoint_every=1, log=None)
    shutil.rmtree(tmp_path / checkpoint.SUBDIR)
    shutil.move(tmp_path / "again" / checkpoint.SUBDIR, tmp_path / checkpoint.SUBDIR)
    with pytest.raises(CheckpointError, match="step 26 in .* was removed as it was read .*restore another"):
        checkpoint.restore(tmp_path, step=26)


def test_a_removal_in_progress_is_told_from_damage_while_a_run_holds_the_workdir(small_data, tmp_path):
    """orbax deletes a step's files first, its folder last: a read that fails meanwhile, the step still
    listed, waits to see it go (a run holds the lock), and is damage where it stays or no run holds it."""
    import shutil
    import threading

    from rnnjax import workdir as workdir_lib
    fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    step_dir = tmp_path / checkpoint.SUBDIR / "13"
    (step_dir / "meta" / "metadata").unlink()                       # as the deleter starts
    with pytest.raises(checkpoint.DamagedCheckpoint):               # no run holds the workdir: damage
        checkpoint.restore(tmp_path, step=13)
    with workdir_lib.lock(tmp_path):                                # as the run writing it would
        with pytest.raises(checkpoint.DamagedCheckpoint):           # listed still after the wait: damage
            checkpoint.restore(tmp_path, step=13)
        threading.Timer(0.3, shutil.rmtree, (step_dir,)).start()    # the deleter finishes
        with pytest.raises(CheckpointError, match="step 13 in .* was removed as it was read"):
            checkpoint.restore(tmp_path, step=13)


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


def test_config_mismatch_is_a_clear_error_and_nothing_is_touched(small_data, tmp_path):
    fit(with_epochs(SMALL, 1), small_data, tmp_path, devices=1)
    before = tree_digest(tmp_path)
    other = SMALL.replace(num_hiddens=32)
    with pytest.raises(CheckpointError, match=r"--num-hiddens 32 \(it has 16\)"):
        fit(other, small_data, tmp_path, devices=1)
    assert tree_digest(tmp_path) == before


@pytest.mark.slow
def test_restore_for_inference_in_a_fresh_process(small_data, tmp_path):
    result = fit(with_epochs(SMALL, 2), small_data, tmp_path, devices=1)
    from rnnjax import predict
    model = make_model(SMALL, len(small_data.vocab))
    expected = predict(model, result.state.params, small_data.vocab, "the time", 40)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RNNJAX_", "XLA_FLAGS", "JAX_"))}
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"        # as this process's (conftest): on any backend
    env["RNNJAX_CACHE"] = str(tmp_path / "no-cache")
    code = ("import sys; from rnnjax.checkpoint import restore; "
            "print(restore(sys.argv[1]).predict('the time', 40))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
    assert not (tmp_path / "no-cache").exists()


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
    assert checkpoint.best_step(tmp_path) == best["step"]


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
