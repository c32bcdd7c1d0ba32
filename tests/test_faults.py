"""Faults injected into runs: each survived with nothing lost and one clear line, never a traceback.

kill -9 at random moments, a full disk, a flipped bit, a torn or garbled metrics line, a second
writer, and bad values for the flags. Each resumed run is compared with an uninterrupted one.
"""

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import timemachine, training
from rnnjax import checkpoint, lock, meta as meta_lib, metrics, workdir
from rnnjax.train import fit

from conftest import SUITE_XLA_FLAGS, TINY, small_text

CONFIG = TINY.replace(epochs=4)


def records(path):
    """The metrics, strict JSON (no Infinity or NaN), without the timings."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    lines = (path / metrics.FILENAME).read_text().splitlines()
    return [{k: v for k, v in json.loads(line, parse_constant=refuse).items() if k != "seconds"}
            for line in lines]


def same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every faulty one must end up equal to."""
    from conftest import small_text
    from rnnjax.data import TimeMachine
    data = TimeMachine(TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val, text=small_text(5000))
    path = tmp_path_factory.mktemp("straight")
    return fit(CONFIG, data, path, devices=1, checkpoint_every=1, log=None), path


def test_a_save_that_fails_in_the_background_stops_the_run_at_that_epochs_end_not_the_next_save(
        small_data, tmp_path, monkeypatch):
    """Orbax saves in a thread of its own: a checkpoints/ that turned unwritable was found at the next save,
    checkpoint_every epochs of training later, all of them lost."""
    failed = []

    def fails_unseen(self, step, *args, **kwargs):
        failed.append(step)             # nothing written, as a save failing in its thread
        return True

    def check_for_errors(self):
        if failed:
            raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(ocp.CheckpointManager, "save", fails_unseen)
    monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", check_for_errors)
    said = r"^Saving a checkpoint to .* failed \(PermissionError: .*\); training stopped and it has no "
    with pytest.raises(checkpoint.CheckpointError, match=said):
        fit(TINY.replace(epochs=8), small_data, tmp_path, devices=1, checkpoint_every=3, log=None)
    assert [r["epoch"] for r in records(tmp_path)] == [1, 2, 3] and len(failed) == 1


def test_a_full_disk_stops_the_run_and_loses_nothing(small_data, tmp_path, monkeypatch, straight):
    saves = []
    real_save = ocp.CheckpointManager.save

    def full_at_the_third(self, step, *args, **kwargs):
        saves.append(step)
        if len(saves) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, *args, **kwargs)
    monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_the_third)
    message = (r"Saving step 39 .* failed \(OSError: \[Errno 28\] No space left on device\); training "
               r"stopped and its last complete checkpoint is step 26")
    with pytest.raises(checkpoint.CheckpointError, match=message):
        fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    assert [r["epoch"] for r in records(tmp_path)] == [1, 2, 3]     # no epoch trained past the failed save
    monkeypatch.undo()
    resumed = fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    assert records(tmp_path) == records(straight[1])                # epoch 3 redone, once
    same_params(resumed.state.params, straight[0].state.params)


def flip_a_bit(step_dir):
    """One bit a quarter into the largest file of a checkpoint's state: among its arrays' bytes (flips in
    the file's second half, its index, leave every array as saved)."""
    path = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 4] ^= 0x10
    path.write_bytes(bytes(data))
    return path


def test_a_flipped_bit_is_caught_and_resume_falls_back(small_data, tmp_path, straight, capsys):
    fit(CONFIG.replace(epochs=3), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    latest = checkpoint.latest_step(tmp_path)
    flip_a_bit(tmp_path / checkpoint.SUBDIR / str(latest))
    with pytest.raises(checkpoint.DamagedCheckpoint, match=f"step {latest} .* (damaged|cannot be restored)"):
        checkpoint.restore(tmp_path)
    assert checkpoint.restore(tmp_path, fallback=True).step == latest - 13
    assert cli("--workdir", str(tmp_path), "--predict", "the", "--num-preds", "5") == 0  # says so, generates
    out, err = capsys.readouterr()
    warning, said = err.splitlines()
    assert out.startswith("the") and warning.startswith("warning: ") and f"step {latest}" in warning
    assert warning.endswith(f"generating from checkpoint step {latest - 13}, the newest good one before it.")
    assert ".;" not in warning and "fallback=True" not in warning     # its full stop, the Python API's hint
    assert said.startswith(f"from {tmp_path}: checkpoint step {latest - 13}")
    lines = []
    resumed = fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=lines.append)
    assert lines[0].startswith(f"resuming from step {latest - 13}")
    assert re.search(f"checkpoint step {latest} (is damaged: |cannot be restored).*set aside in", lines[0])
    assert (tmp_path / checkpoint.DAMAGED / str(latest)).is_dir()           # set aside, not deleted
    assert records(tmp_path) == records(straight[1])
    same_params(resumed.state.params, straight[0].state.params)
    for step in checkpoint.steps(tmp_path):                      # every one damaged: each is named
        flip_a_bit(tmp_path / checkpoint.SUBDIR / str(step))
    assert cli("--workdir", str(tmp_path), "--predict", "the") == 1
    damaged = ", ".join(str(s) for s in sorted(checkpoint.steps(tmp_path), reverse=True))
    assert capsys.readouterr().err.startswith(f"error: Every checkpoint in {tmp_path / checkpoint.SUBDIR} is "
                                              f"damaged (steps {damaged}; step ")


def test_every_checkpoint_damaged_is_one_error(small_data, tmp_path):
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    (tmp_path / checkpoint.SUBDIR / "13" / "meta" / "metadata").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="Every checkpoint .* is damaged"):
        fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, log=None)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="step 13"):
        checkpoint.restore(tmp_path)


def test_meta_without_its_config_is_damage_not_a_key_error(small_data, tmp_path):
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    meta_file = tmp_path / checkpoint.SUBDIR / "13" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta["config"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(checkpoint.DamagedCheckpoint, match="fails its checksum"):
        checkpoint.restore(tmp_path)
    meta_file.write_text(json.dumps(meta_lib.seal(meta)))        # resealed: its structure is still checked
    with pytest.raises(checkpoint.DamagedCheckpoint, match="lacks its config"):
        checkpoint.restore(tmp_path)


def test_a_torn_last_metrics_line_is_dropped_on_resume(small_data, tmp_path, straight):
    fit(CONFIG.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    with open(tmp_path / metrics.FILENAME, "a") as f:
        f.write('{"epoch": 3, "step": 39, "train_lo')                 # power lost mid-write
    said = []
    resumed = fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=said.append)
    assert said[0].endswith("ends in a torn line, of an epoch past the checkpoint (trained again): dropped")
    assert records(tmp_path) == records(straight[1])
    same_params(resumed.state.params, straight[0].state.params)


@pytest.mark.parametrize("line,message", [("garbage", "line 2, is not a metrics record"),
                                          ("[1, 2]", "line 2, is not a metrics record"),
                                          ('{"epoch": 3}', "line 2, is not a metrics record"),   # no ppl
                                          ('{"epoch": 3, "train_ppl": "x", "val_ppl": 2}', "line 2, is not"),
                                          (None, "epoch 1 after epoch 1")])        # None: line 1 again
def test_a_bad_metrics_line_is_named_before_any_work(small_data, tmp_path, line, message):
    fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, log=None)
    lines = (tmp_path / metrics.FILENAME).read_text().splitlines()
    line = lines[0] if line is None else line
    (tmp_path / metrics.FILENAME).write_text("\n".join([lines[0], line, lines[1]]) + "\n")
    with pytest.raises(metrics.MetricsError, match=message) as e:
        fit(TINY.replace(epochs=3), small_data, tmp_path, devices=1, log=None)
    assert "Move the file aside to resume" in str(e.value)               # as it says: the checkpoints go on
    (tmp_path / metrics.FILENAME).rename(tmp_path / "aside.jsonl")
    resumed = fit(TINY.replace(epochs=3), small_data, tmp_path, devices=1, log=None)
    assert [r["epoch"] for r in resumed.history] == [3]


def test_a_second_writer_fails_at_once(small_data, tmp_path):
    with lock.lock(tmp_path):
        with pytest.raises(workdir.WorkdirError, match="in use by process"):
            fit(TINY, small_data, tmp_path, devices=1, log=None)
    assert not (tmp_path / checkpoint.SUBDIR).exists() and not (tmp_path / metrics.FILENAME).exists()


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(real_text_path, tmp_path, main_job):
    """Three SIGKILLs at random moments of a CLI run; then it resumes to what an uninterrupted run gives."""
    args = ["--data", real_text_path, "--preset", "tiny", "--epochs", "40", "--checkpoint-every", "1",
            "--devices", "1", "--no-progress"]
    straight = main_job(*args, "--workdir", str(tmp_path / "straight"))
    assert straight.wait(timeout=300) == 0
    rng, log = random.Random(0), tmp_path / "killed" / metrics.FILENAME
    for kill in range(3):       # at a random moment after a random epoch (mid-step, mid-save, ...)
        proc = main_job(*args, "--workdir", str(tmp_path / "killed"))
        after = 10 * kill + rng.randint(1, 8)
        while proc.poll() is None and not (log.exists() and log.read_text().count("\n") >= after):
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.2))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL                    # killed, not finished
    assert len(metrics.MetricsLog(log, warn=lambda message: None).read()) < 40
    proc = main_job(*args, "--workdir", str(tmp_path / "killed"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert records(tmp_path / "killed") == records(tmp_path / "straight")
    a, b = (checkpoint.restore(tmp_path / d) for d in ("straight", "killed"))
    same_params(a.params, b.params)


def cli(*args):
    return timemachine.main([*args, "--no-compilation-cache"])


BAD = [  # (flags, what the one line says)
    (["--epochs", "0"], "--epochs must be at least 1"), (["--epochs", "-1"], "--epochs must be at least 1"),
    (["--num-hiddens", "0"], "--num-hiddens must be at least 1"),
    (["--num-hiddens", "-3"], "--num-hiddens must be at least 1"),
    (["--num-steps", "0"], "--num-steps must be at least 1"), (["--batch-size", "0"], "--batch-size must be"),
    (["--num-train", "0"], "--num-train must be at least 1"), (["--num-layers", "0"], "--num-layers must be"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be at least 1"),
    (["--keep", "0"], "--keep must be"),
    (["--seed", "-1"], "--seed must be in"), (["--seed", str(2 ** 32)], "--seed must be in"),
    (["--lr", "-1"], "--lr must be a positive finite"), (["--lr", "nan"], "--lr must be a positive finite"),
    (["--clip", "0"], "--clip must be a positive finite"), (["--clip", "-1"], "--clip must be a positive"),
    (["--clip", "inf"], "--clip must be a positive finite"), (["--dropout", "1.5"], "--dropout must be in"),
    (["--cell", "nope"], "not a known cell; choose from gru, lstm, rnn, or register"),
    (["--nonlinearity", "sigmoid"], "--nonlinearity must be one of relu, tanh; got 'sigmoid'"),
    (["--batch-size", str(10 ** 7)], "GiB for a training step"),
    (["--num-train", "10000000"], "windows of --num-steps + 1 = 9; --num-train + --num-val = 10,000,050 are"),
    (["--devices", "99"], "--devices 99"), (["--batch-size", "1023"], "not divisible"),
    (["--sample"], "add --predict"),
    (["--predict", "a", "--temperature", "0"], "got 0; the likeliest token each time is --predict without "
                                               "--temperature, --sample or --top-k."),
    (["--predict", "a", "--temperature", "inf"], "--temperature must be a positive number up to 3.4e+38"),
    (["--predict", "a", "--temperature", "3.5e38"], "(float32's largest), got 3.5e38."),
    (["--predict", "a", "--top-k", "0"], "--top-k must be at least 1"),
    (["--predict", "it has", "--top-k", "99"], "--top-k must be between 1 and the vocabulary's 28"),
    (["--predict", ""], "needs at least one character"), (["--predict", "a", "--run", "1"], "single run"),
    (["--predict", "a", "--num-preds", "-1"], "--num-preds must be at least 0"),
    (["--predict", "a", "--num-preds", "99999999999"], "--num-preds must be at most"),
    (["--num-hiddens", "100000", "--num-layers", "4"], "lower --num-hiddens or --num-layers"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[" ".join(f) for f, _ in BAD])
@pytest.mark.cpu_devices(2)
def test_bad_flags_are_one_line_and_lose_nothing(real_text_path, tmp_path, capsys, flags, message, trained):
    """Every flag's bad values: exit 1, one line naming it, the workdir as it was."""
    before = sorted(p.relative_to(trained) for p in trained.rglob("*"))
    workdir_args = ["--workdir", str(trained)] if "--predict" in flags or "--run" in flags else \
        ["--workdir", str(tmp_path / "new")]
    devices = [] if "--devices" in flags else ["--devices", "2"]       # each flag once
    assert cli("--data", real_text_path, "--preset", "tiny", *devices, *workdir_args, *flags) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "new").exists()
    assert sorted(p.relative_to(trained) for p in trained.rglob("*")) == before


@pytest.fixture(scope="module")
def trained(tmp_path_factory, real_text_path_module):
    path = tmp_path_factory.mktemp("trained")
    assert cli("--data", real_text_path_module, "--preset", "tiny", "--epochs", "1", "--devices", "1",
               "--workdir", str(path)) == 0
    return path


@pytest.fixture(scope="module")
def real_text_path_module():
    from conftest import REAL_TEXT
    if not REAL_TEXT:
        pytest.skip("set RNNJAX_TIMEMACHINE to d2l's timemachine.txt (.ci/run does)")
    return REAL_TEXT


@pytest.mark.parametrize("where,message", [("file", "exists and is not a directory"),
                                           ("file/sub", "is a file, not a directory"),
                                           ("/proc/rnnjax-run", "cannot be"),
                                           ("dir-as-data", "is a directory")])
def test_bad_paths_are_one_line(real_text_path, tmp_path, capsys, where, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir-as-data").mkdir()
    if where == "dir-as-data":
        args = ["--data", str(tmp_path / where), "--workdir", str(tmp_path / "w")]
    else:
        path = where if where.startswith("/") else str(tmp_path / where)
        args = ["--data", real_text_path, "--workdir", path]
    assert cli("--preset", "tiny", "--devices", "1", *args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_a_diverging_run_stops_with_a_fix_the_user_can_apply(real_text_path, tmp_path, capsys):
    """--lr 1e6: stopped with one line naming a new --workdir and a smaller --lr; strict JSON throughout."""
    assert cli("--data", real_text_path, "--preset", "tiny", "--epochs", "6", "--lr", "1e6", "--devices", "1",
               "--workdir", str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "new --workdir with a smaller --lr" in err
    if (tmp_path / metrics.FILENAME).exists():
        records(tmp_path)                                              # strict JSON


def test_restore_takes_a_step_given_as_text(small_data, tmp_path):
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    assert checkpoint.restore(tmp_path, step="13").step == 13
    with pytest.raises(checkpoint.CheckpointError, match="step must be a whole number"):
        checkpoint.restore(tmp_path, step="latest")


@pytest.mark.slow
@pytest.mark.parametrize("signum,after", [(signal.SIGTERM, 0.3), (signal.SIGINT, 2.5)])
def test_a_signal_while_starting_is_one_line(real_text_path, tmp_path, main_job, signum, after):
    """While JAX loads (0.3 s) or the run compiles (2.5 s): 130/143 and one line, not a traceback."""
    proc = main_job("--data", real_text_path, "--preset", "tiny", "--workdir", str(tmp_path), "--no-progress",
                    "--no-compilation-cache")
    time.sleep(after)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (128 + signum, 0), err          # 0: it finished first (a fast machine)
    if proc.returncode:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert f"signal {signum}" in err


# The command, with a signal to itself at a moment: as training returns (before the command has control),
# as it plots, as the checkpoints close, or as it restores a checkpoint to generate from.
_SIGNAL_AT = """
import os, signal, sys
from experiments import stopping, timemachine, training
from rnnjax import checkpoint, metrics
where, signum = sys.argv[1], int(sys.argv[2])

def signalled(f):
    def g(*args, **kwargs):
        out = f(*args, **kwargs)
        os.kill(os.getpid(), signum)
        return out
    return g
if where == "fit":
    training.fit = signalled(training.fit)
if where == "plot":
    training.plot_perplexity = signalled(lambda *args, **kwargs: None)
if where == "restore":
    checkpoint.restore = signalled(checkpoint.restore)
if where == "start":            # JAX starting, before the checkpoint is looked at
    from rnnjax import backend
    backend.start = signalled(backend.start)
if where == "close":         # the checkpoint manager closes as the loop ends, after its last look for one
    import orbax.checkpoint as ocp
    ocp.CheckpointManager.close = signalled(ocp.CheckpointManager.close)
signal.signal(signal.SIGHUP, signal.SIG_DFL)       # as in a terminal, even where the suite runs under nohup
stopping.run(lambda: timemachine.main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_a_signal_after_training_says_the_run_is_saved_and_the_rerun_draws_its_plot(
        real_text_path, tmp_path, fresh_env):
    def command(*args, where=None, signum=None):
        argv = ["-c", _SIGNAL_AT, where, str(int(signum))] if where else ["-m", "experiments.timemachine"]
        return subprocess.run([sys.executable, *argv, "--data", real_text_path, "--preset", "tiny",
                               "--workdir", str(tmp_path), "--no-progress", *args],
                              env=fresh_env(**SUITE_XLA_FLAGS),
                              capture_output=True, text=True, timeout=120)
    plot, records = tmp_path / metrics.PLOT, tmp_path / metrics.FILENAME
    # The first run stopped before its plot, a resumed run's plot stopped, then the closing of a resumed run's
    # checkpoints and a finished one's; the rerun draws a plot that is missing or older than its records.
    TERM, INT, HUP = signal.SIGTERM, signal.SIGINT, signal.SIGHUP      # a hang-up killed it, saved, silently
    for where, epochs, signum, rerun in (("fit", 1, HUP, True), ("plot", 2, INT, True),
                                         ("close", 3, TERM, False), ("close", 3, INT, True)):
        proc = command("--epochs", str(epochs), where=where, signum=signum)
        assert proc.returncode == 128 + signum, proc.stderr
        said = f"Stopped by signal {signum} ({signum.name}) after the run was trained and saved: the " \
               "workdir holds the whole run (the same command again draws its plot)."
        assert proc.stderr.strip() == said
        if where != "close":
            assert not plot.exists() or plot.stat().st_mtime_ns < records.stat().st_mtime_ns
        if rerun:
            again = command("--epochs", str(epochs))
            assert again.returncode == 0 and "nothing to train" in again.stdout, again.stdout + again.stderr
            assert plot.stat().st_mtime_ns >= records.stat().st_mtime_ns      # drawn again where it was not
    for signum, where in ((signal.SIGINT, "start"), (signal.SIGHUP, "restore")):     # SIGTERM's handler too
        proc = command("--predict", "it ", where=where, signum=signum)
        assert proc.returncode == 128 + signum and proc.stdout == "", proc.stdout
        assert proc.stderr.strip() == f"Stopped by signal {signum} ({signum.name}) while generating; the " \
                                      "workdir is as it was."


# --- round three: the meta, odd paths, the lock before the plan, memory, FIFOs, ENOSPC, signals ---

def meta_file(workdir, step):
    return workdir / checkpoint.SUBDIR / str(step) / "meta" / "metadata"


def edit_meta(workdir, step, change, reseal=False):
    path = meta_file(workdir, step)
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta_lib.seal(meta) if reseal else meta))


@pytest.mark.parametrize("change,says", [
    (lambda m: m["config"].update(label_smoothing=0.0), "the config field label_smoothing"),
    (lambda m: m.update(format=meta_lib.FORMAT + 1), f"format {meta_lib.FORMAT + 1}")])
def test_a_checkpoint_of_a_newer_rnnjax_is_named_so_not_damage(small_data, tmp_path, change, says):
    """A field a newer Config has (or a later format), its checksum whole: both were set aside as damage,
    an epoch lost (before that, the field was passed over, training on without it)."""
    fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    latest = checkpoint.latest_step(tmp_path)
    edit_meta(tmp_path, latest, change, reseal=True)
    newer = (rf"^The checkpoint at step {latest} in .* was written by a newer rnnjax \({says}, which this "
             r"one lacks\): upgrade rnnjax to read it\.$")
    with pytest.raises(checkpoint.CheckpointError, match=newer):
        checkpoint.restore(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match=newer):
        fit(TINY.replace(epochs=3), small_data, tmp_path, devices=1, log=None)
    assert checkpoint.latest_step(tmp_path) == latest and not (tmp_path / checkpoint.DAMAGED).exists()
    config = json.loads((tmp_path / checkpoint.CONFIG).read_text())
    config["config"]["note"] = "mine"                   # config.json, for people and tools: passed over
    (tmp_path / checkpoint.CONFIG).write_text(json.dumps(config))
    assert checkpoint.restore(tmp_path, step=latest - 13).step == latest - 13


@pytest.mark.parametrize("reseal,why", [(False, "fails its checksum"), (True, "which is step 52")])
def test_a_changed_epoch_in_the_meta_is_damage_and_resume_falls_back(small_data, tmp_path, straight, reseal,
                                                                     why):
    """BAD 1: epoch 3 -> 4 in the latest meta resumed at epoch 5, epoch 4 never trained. Now it is damage,
    caught by the meta's checksum or (resealed) by its position against its step."""
    fit(CONFIG.replace(epochs=3), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    edit_meta(tmp_path, 39, lambda m: m["position"].update(epoch=4), reseal)
    with pytest.raises(checkpoint.DamagedCheckpoint, match=f"step 39 .*{why}"):
        checkpoint.restore(tmp_path)
    lines = []
    resumed = fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=lines.append)
    assert lines[0].startswith("resuming from step 26") and "checkpoint step 39 " in lines[0]
    assert (tmp_path / checkpoint.DAMAGED / "39").is_dir()
    assert records(tmp_path) == records(straight[1])
    same_params(resumed.state.params, straight[0].state.params)


@pytest.mark.parametrize("change", [lambda m: m["config"].update(num_hiddens=32),
                                    lambda m: m["vocab"]["idx_to_token"].pop()])
def test_a_resealed_meta_that_does_not_fit_the_arrays_is_damage(small_data, tmp_path, change):
    """A meta that passes its checksum but describes another model: damage, not a flax shape error."""
    fit(CONFIG.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    edit_meta(tmp_path, 26, change, reseal=True)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="step 26 .*(do not fit the model|vocabulary)"):
        checkpoint.restore(tmp_path)
    assert checkpoint.restore(tmp_path, fallback=True).step == 13


def test_a_damaged_meta_of_runs_trained_together_is_damage(small_data, tmp_path):
    from rnnjax.runs import fit_runs
    configs = [TINY.replace(epochs=2, seed=s) for s in (0, 1)]
    fit_runs(configs, small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    edit_meta(tmp_path, 26, lambda m: m["position"].update(epoch=1, batch=12), reseal=True)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="says epoch 1 batch 12, which is step 25"):
        checkpoint.restore(tmp_path, run=0)
    assert checkpoint.restore(tmp_path, run=1, fallback=True).step == 13


@pytest.mark.parametrize("where", ["p[0]/w", "x\\y", "[ab]"])
def test_a_path_orbax_cannot_take_is_refused_before_any_work(real_text_path, tmp_path, capsys, monkeypatch,
                                                             where):
    """BAD 2: 'p[0]' trained and said "wrote", but no checkpoint could be restored; 'x\\y' wrote elsewhere."""
    monkeypatch.chdir(tmp_path)
    assert cli("--data", real_text_path, "--preset", "tiny", "--devices", "1", "--workdir", where) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "orbax's checkpoints cannot take" in err
    assert list(tmp_path.iterdir()) == []


def test_a_save_that_cannot_be_restored_stops_the_run(small_data, tmp_path, monkeypatch):
    """Every save is read back: one without its manifest (what a misread path gave) stops the run."""
    real_save = ocp.CheckpointManager.save

    def lost_manifest(self, step, *args, **kwargs):
        saved = real_save(self, step, *args, **kwargs)
        self.wait_until_finished()
        if step == 26:
            (tmp_path / checkpoint.SUBDIR / "26" / "state" / "manifest.ocdbt").unlink()
        return saved
    monkeypatch.setattr(ocp.CheckpointManager, "save", lost_manifest)
    with pytest.raises(checkpoint.CheckpointError, match=r"Saving step 26 .* lacks state/manifest.ocdbt"):
        fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    assert [r["epoch"] for r in records(tmp_path)] == [1, 2, 3]          # stopped at the next save


def test_the_plan_is_made_under_the_lock(small_data, tmp_path, monkeypatch, straight):
    """BAD 3: a run that finished between another's plan and its lock was overwritten by it."""
    real_steps, other = checkpoint.steps, []

    def another_run_finishes_meanwhile(path):
        found = real_steps(path)
        if not other:
            try:
                other.append(fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=None))
            except workdir.WorkdirError as e:
                other.append(e)
        return found
    monkeypatch.setattr(checkpoint, "steps", another_run_finishes_meanwhile)
    fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    assert isinstance(other[0], workdir.WorkdirError) and "in use by process" in str(other[0])
    assert records(tmp_path) == records(straight[1])


def test_out_of_memory_at_run_time_is_one_sentence(real_text_path, tmp_path, capsys, monkeypatch):
    def oom(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.0GiB.")
    monkeypatch.setattr(training, "fit", oom)
    assert cli("--data", real_text_path, "--preset", "tiny", "--devices", "1", "--workdir",
               str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: The machine ran out of memory") and err.count("\n") == 1, err
    assert "lower --batch-size or --num-steps, or --num-hiddens or --num-layers" in err


def within(seconds, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a thread: its result, or its exception; a test failure, not a hang, if it
    has not returned in ``seconds`` (a FIFO opened for reading blocks in C, where no signal reaches)."""
    import threading
    out = {}

    def run():
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: B902 (handed to the test)
            out["error"] = e
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} hung"
    if "error" in out:
        raise out["error"]
    return out["result"]


@pytest.mark.parametrize("inside", ["meta/metadata", "state/manifest.ocdbt", "_CHECKPOINT_METADATA"])
def test_a_fifo_in_a_checkpoint_is_damage_not_a_hang(small_data, tmp_path, straight, inside):
    """BAD 5: a FIFO in place of a checkpoint file hung --predict and resume."""
    import os
    fit(CONFIG.replace(epochs=3), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    target = tmp_path / checkpoint.SUBDIR / "39" / inside
    target.unlink()
    os.mkfifo(target)
    with pytest.raises(checkpoint.DamagedCheckpoint, match=f"holds {inside}, which is not a regular"):
        within(60, checkpoint.restore, tmp_path)
    resumed = within(120, fit, CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    assert records(tmp_path) == records(straight[1])
    same_params(resumed.state.params, straight[0].state.params)


@pytest.mark.parametrize("name,message", [(metrics.FILENAME, "is not a regular file"),
                                          (lock.LOCKFILE, "lock file .* is not a regular file")])
def test_a_fifo_for_the_metrics_or_the_lock_is_refused(small_data, tmp_path, name, message):
    import os
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    (tmp_path / name).unlink()
    os.mkfifo(tmp_path / name)
    with pytest.raises((metrics.MetricsError, workdir.WorkdirError), match=message):
        within(60, fit, TINY.replace(epochs=2), small_data, tmp_path, devices=1, log=None)


@pytest.mark.parametrize("make,message", [
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.symlink_to(p.parent / "nowhere" / "x"), "is a link"),
])
def test_an_odd_lock_file_is_refused_before_the_plan_is_said(small_data, tmp_path, make, message):
    make(tmp_path / lock.LOCKFILE)
    lines = []
    with pytest.raises(workdir.WorkdirError, match=message):
        fit(TINY, small_data, tmp_path, devices=1, log=lines.append)
    assert lines == [] and not (tmp_path / "nowhere").exists()


def test_a_step_folder_orbax_would_misread_is_one_sentence(real_text_path, tmp_path, capsys, trained):
    import shutil
    shutil.copytree(trained, tmp_path / "w")
    (tmp_path / "w" / checkpoint.SUBDIR / "0300").mkdir()
    assert cli("--data", real_text_path, "--preset", "tiny", "--epochs", "2", "--devices", "1",
               "--workdir", str(tmp_path / "w")) == 1
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1 and "0300 is not a checkpoint" in err
    assert "new run" not in out and "resuming" not in out


def test_a_metrics_file_that_is_a_link_to_nothing_is_refused_before_any_work(small_data, tmp_path):
    """It was read as missing ("lacks the records of epochs 1-3"), then its first record failed to be
    written, an epoch's training lost."""
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    (tmp_path / metrics.FILENAME).unlink()
    (tmp_path / metrics.FILENAME).symlink_to(tmp_path / "nowhere" / "x")
    with pytest.raises(workdir.WorkdirError, match=r"metrics\.jsonl is not a regular file, where rnnjax"):
        fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, log=None)
    assert checkpoint.steps(tmp_path) == [13]


@pytest.mark.parametrize("where", ["meta", "state"])
def test_a_checkpoint_this_process_may_not_read_is_not_set_aside_as_damaged(
        small_data, tmp_path, monkeypatch, where):
    """A permission (orbax's own wording for the arrays) made an intact checkpoint 'damaged': set aside, and
    its epochs trained again from the one before."""
    from rnnjax import read_state, stored
    fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    if where == "meta":
        def denied(self, directory, *args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(directory / "metadata"))
        monkeypatch.setattr(ocp.JsonCheckpointHandler, "restore", denied)
    else:
        def denied(path, abstract, params_only):
            raise ValueError(f'PERMISSION_DENIED: Error reading "params" in OCDBT database at "{path}"')
        monkeypatch.setattr(read_state, "_read", denied)
    said = r"^The checkpoint at step 26 in .* \((PermissionError|ValueError): .*\): it is not damaged; fix "
    for call in (lambda: fit(TINY.replace(epochs=3), small_data, tmp_path, devices=1, log=None),
                 lambda: checkpoint.restore(tmp_path, fallback=True)):
        with pytest.raises(stored.UnreadableCheckpoint, match=said):
            call()
    assert sorted(checkpoint.steps(tmp_path)) == [13, 26] and not (tmp_path / checkpoint.DAMAGED).exists()


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="drops root's file capabilities")
def test_a_checkpoint_folder_this_process_may_not_list_is_not_called_damaged(small_data, tmp_path):
    """orbax says the files of a folder it may not list are missing: restore and --predict called the
    checkpoint damaged (fallback=True took an older one, saying nothing), where a resume said permissions."""
    fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    (tmp_path / checkpoint.SUBDIR / "26" / "state").chmod(0)
    code = ("from rnnjax import checkpoint\n"
            "for fallback in (False, True):\n"
            "    try:\n"
            f"        checkpoint.restore({str(tmp_path)!r}, fallback=fallback)\n"
            "    except checkpoint.CheckpointError as e:\n"
            "        print(type(e).__name__, e)\n")
    state = tmp_path / checkpoint.SUBDIR / "26" / "state"
    try:
        out = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner",
                              sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             check=True).stdout
    finally:
        state.chmod(0o755)
    said = (f"UnreadableCheckpoint The checkpoint at step 26 in {state.parent.parent} cannot be restored "
            f"(PermissionError: [Errno 13] Permission denied: '{state}'): it is not damaged; fix its "
            "permissions")
    assert [line[:len(said)] for line in out.splitlines()] == [said, said], out
    assert checkpoint.restore(tmp_path).step == 26 and not (tmp_path / checkpoint.DAMAGED).exists()


@pytest.mark.parametrize("several", [False, True])
def test_a_checkpoint_that_lost_orbaxs_tree_metadata_resumes_as_it_restores(small_data, tmp_path, several):
    """Without state/_METADATA, --predict read the checkpoint (by the model's tree) but a resume called it
    damaged: set aside, or every checkpoint 'damaged' where it was the only one. The checksums still hold."""
    from rnnjax import runs
    configs = [TINY.replace(epochs=2, seed=s) for s in (0, 1)]

    def train(workdir, epochs):
        if several:
            return runs.fit_runs([c.replace(epochs=epochs) for c in configs], small_data, workdir, devices=1,
                                 log=None)
        return fit(configs[0].replace(epochs=epochs), small_data, workdir, devices=1, log=None)
    train(tmp_path / "w", 1)
    (tmp_path / "w" / checkpoint.SUBDIR / "13" / "state" / "_METADATA").unlink()
    resumed, straight = train(tmp_path / "w", 2), train(tmp_path / "straight", 2)
    assert records(tmp_path / "w") == records(tmp_path / "straight")
    same_params(resumed.state, straight.state)
    assert not (tmp_path / "w" / checkpoint.DAMAGED).exists()


def test_a_file_where_a_folder_is_kept_is_one_sentence(small_data, tmp_path):
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    (tmp_path / checkpoint.DAMAGED).write_text("x")
    with pytest.raises(workdir.WorkdirError, match="damaged is a file where rnnjax keeps a folder"):
        fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, log=None)
    (tmp_path / checkpoint.DAMAGED).unlink()
    dropped = tmp_path / checkpoint.SUBDIR / checkpoint.REMOVING
    (tmp_path / "elsewhere").mkdir()
    for make in (lambda: dropped.write_text("x"), lambda: dropped.symlink_to(tmp_path / "elsewhere")):
        make()              # a file failed each save after the first; a link's target got the checkpoints
        with pytest.raises(workdir.WorkdirError, match=r"checkpoints/\.removing is not a folder, where "
                                                       "rnnjax keeps the checkpoints it drops"):
            fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, log=None)
        dropped.unlink()


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_at_the_lock_is_one_sentence(small_data, tmp_path, monkeypatch):
    real_write = lock.os.write

    def write(fd, data):          # the pid into the lock file: a full disk
        if os.readlink(f"/proc/self/fd/{fd}").endswith(lock.LOCKFILE):
            full_disk()
        return real_write(fd, data)
    monkeypatch.setattr(lock.os, "write", write)
    with pytest.raises(workdir.WorkdirError, match="cannot be written .No space left on device"):
        fit(TINY, small_data, tmp_path, devices=1, log=None)
    assert not (tmp_path / checkpoint.SUBDIR).exists()


def test_a_full_disk_at_config_json_leaves_no_temporary_file(small_data, tmp_path, monkeypatch):
    monkeypatch.setattr(workdir.os, "replace", full_disk)
    with pytest.raises(workdir.WorkdirError, match=r"config.json cannot be written \(No space left"):
        fit(TINY, small_data, tmp_path, devices=1, log=None)
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "config.json").exists()


def test_a_full_disk_at_the_metrics_append_is_one_sentence(small_data, tmp_path, monkeypatch, straight):
    monkeypatch.setattr(metrics, "open", full_disk, raising=False)
    with pytest.raises(metrics.MetricsError, match="cannot be written .No space left on device.; training "
                                                   "stopped at epoch 1"):
        fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    monkeypatch.undo()
    resumed = fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    assert records(tmp_path) == records(straight[1])
    same_params(resumed.state.params, straight[0].state.params)


@pytest.mark.parametrize("damage,said", [
    (lambda path: path.write_text(""), "lacks the records of epoch(s) 1-3"),
    (lambda path: path.unlink(), "lacks the records of epoch(s) 1-3"),
    (lambda path: path.write_text("".join(path.read_text().splitlines(True)[i] for i in (0, 2))),
     "lacks the records of epoch(s) 2"),
])
def test_lost_metrics_are_said_when_the_run_resumes(small_data, tmp_path, damage, said):
    fit(CONFIG.replace(epochs=3), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    damage(tmp_path / metrics.FILENAME)
    lines = []
    fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=lines.append)
    assert f"metrics.jsonl {said} (their records are lost)" in lines[0]


def test_nan_in_the_metrics_is_never_written_back(small_data, tmp_path):
    fit(CONFIG.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    path = tmp_path / metrics.FILENAME
    first, second = path.read_text().splitlines()
    path.write_text(first.replace('"seconds": ', '"seconds": NaN, "was": ') + "\n" + second + "\n"
                    + '{"epoch": 3, "train_ppl": NaN, "val_ppl": Infinity}\n')         # past the checkpoint
    fit(CONFIG.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)  # done
    fit(CONFIG.replace(epochs=3), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert json.loads(path.read_text().splitlines()[0])["seconds"] is None       # read as null, kept so
    assert [r["epoch"] for r in records(tmp_path)] == [1, 2, 3]                   # strict JSON


def test_a_missing_plot_is_made_again(real_text_path, capsys, trained):
    (trained / metrics.PLOT).unlink()
    assert cli("--data", real_text_path, "--preset", "tiny", "--epochs", "1", "--devices", "1",
               "--workdir", str(trained)) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert (trained / metrics.PLOT).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_two_signals_during_a_save_exit_naming_the_signal(real_text_path, tmp_path, main_job, signum):
    """Two signals 20 ms apart: the second stops at once; 130/143, one line naming it, no traceback; the
    run resumes from its last complete checkpoint."""
    args = ["--data", real_text_path, "--preset", "tiny", "--epochs", "200", "--checkpoint-every", "1",
            "--devices", "1", "--no-progress", "--workdir", str(tmp_path)]
    proc, log = main_job(*args), tmp_path / metrics.FILENAME
    while proc.poll() is None and not (log.exists() and log.read_text().count("\n") >= 3):
        time.sleep(0.01)
    proc.send_signal(signum)
    time.sleep(0.02)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"signal {signum} ({signal.Signals(signum).name})" in err
    assert checkpoint.restore(tmp_path).step >= 2 * 13             # the save cut short is never listed


def test_restore_takes_numpy_steps_and_refuses_step_with_best(small_data, tmp_path):
    fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    assert checkpoint.restore(tmp_path, step=np.int64(13)).step == 13
    with pytest.raises(checkpoint.CheckpointError, match="not both"):
        checkpoint.restore(tmp_path, step=13, best=True)
    with pytest.raises(checkpoint.CheckpointError, match="whole number"):
        checkpoint.restore(tmp_path, step=13.0)
    with pytest.raises(checkpoint.CheckpointError, match=r"^step is a checkpoint's step, 0 or more, got -1"):
        checkpoint.restore(tmp_path, step=-1)


def test_predict_with_the_flags_of_another_epoch_count_is_the_same_model(
        real_text_path, capsys, trained, monkeypatch, tmp_path):
    assert cli("--workdir", str(trained), "--predict", "it has", "--preset", "tiny", "--epochs", "5",
               "--keep", "2") == 0
    out, err = capsys.readouterr()
    assert out.startswith("it has")
    assert err.rstrip().endswith("; --keep, --epochs and --preset: for training, not used to predict")
    monkeypatch.chdir(tmp_path)                         # without --workdir, the preset chooses it: used
    shutil.copytree(trained, tmp_path / "runs" / "tiny")
    assert cli("--predict", "it has", "--preset", "tiny", "--epochs", "5") == 0
    assert capsys.readouterr().err.rstrip().endswith("; --epochs: for training, not used to predict")
    (tmp_path / "mine.txt").write_text(small_text(20000))                   # --text chooses it too
    assert cli("--preset", "tiny", "--text", "mine.txt", "--epochs", "1", "--devices", "1") == 0
    capsys.readouterr()
    assert cli("--preset", "tiny", "--text", "mine.txt", "--predict", "the", "--keep", "2") == 0
    assert capsys.readouterr().err.rstrip().endswith("; --keep: for training, not used to predict")
    for bad in (["--epochs", "-5"], ["--kernel", "bogus"], ["--keep", "0"]):     # not used, still checked
        assert cli("--workdir", str(trained), "--predict", "it has", *bad) == 1
        assert capsys.readouterr().err.startswith(f"error: {bad[0]} must be ")
    # A model's setting, named as typed: a float in the digits that tell it apart, a switch as a switch.
    wrong = [(["--lr", "0.5"], "--lr 0.5 (it has 1)"), (["--lr", "1.0000001"], "--lr 1.0000001 (it has 1)"),
             (["--bidirectional"], "--bidirectional (it has --no-bidirectional)"),
             (["--cell", "gru", "--num-hiddens", "8"],
              "--num-hiddens 8 (it has 16); --cell gru (it has rnn)")]
    for flags, says in wrong:
        assert cli("--workdir", str(trained), "--predict", "it has", *flags) == 1
        assert capsys.readouterr().err == (f"error: The checkpoint in {trained} was trained with other "
                                           f"settings than the flags ask for: {says}.\n")
    for bad, says in ((["--lr", "nan"], "--lr must be a positive finite number"),      # no run has these
                      (["--cell", "GRU"], "--cell GRU is not a known cell")):
        assert cli("--workdir", str(trained), "--predict", "it has", *bad) == 1
        assert capsys.readouterr().err.startswith(f"error: {says}")


DIVERGING = TINY.replace(epochs=20, lr=30.0, clip=1000.0)      # far above uniform from epoch 1: stops at 3


def test_a_diverging_run_resumes_bit_for_bit(small_data, tmp_path):
    """The divergence streak is in the checkpoint: --epochs 2 then 20 stops where one run stops (it went on
    to epoch 5, saving the diverged model)."""
    from rnnjax.diverging import NonFiniteLoss
    with pytest.raises(NonFiniteLoss, match="at epoch 3"):
        fit(DIVERGING, small_data, tmp_path / "straight", devices=1, checkpoint_every=1, log=None)
    fit(DIVERGING.replace(epochs=2), small_data, tmp_path / "split", devices=1, checkpoint_every=1, log=None)
    assert checkpoint.restore(tmp_path / "split").meta["position"]["high"] == [2]
    with pytest.raises(NonFiniteLoss, match="at epoch 3"):
        fit(DIVERGING, small_data, tmp_path / "split", devices=1, checkpoint_every=1, log=None)
    assert records(tmp_path / "split") == records(tmp_path / "straight")
    last = records(tmp_path / "straight")[-1]
    assert [r["epoch"] for r in records(tmp_path / "straight")] == [1, 2, 3]       # the epoch that stopped it
    assert last["stopped"].startswith("its train perplexity stayed above 4 times the uniform guess's")
    assert checkpoint.latest_step(tmp_path / "split") == checkpoint.latest_step(tmp_path / "straight") == 26


def test_a_diverging_run_among_runs_resumes_bit_for_bit(small_data, tmp_path):
    from rnnjax.runs import fit_runs
    configs = [DIVERGING.replace(epochs=5, lr=lr) for lr in (1.0, 30.0)]
    straight = fit_runs(configs, small_data, tmp_path / "straight", devices=1, checkpoint_every=1, log=None)
    fit_runs([c.replace(epochs=2) for c in configs], small_data, tmp_path / "split", devices=1,
             checkpoint_every=1, log=None)
    split = fit_runs(configs, small_data, tmp_path / "split", devices=1, checkpoint_every=1, log=None)
    assert straight.stopped[1] is not None and "at epoch 3" in straight.stopped[1]
    assert split.stopped == straight.stopped
    assert records(tmp_path / "split") == records(tmp_path / "straight")


def test_a_checkpoint_from_before_the_streak_was_saved_resumes(small_data, tmp_path, straight):
    fit(CONFIG.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)

    def as_format_2_without_the_streak(m):
        m["format"], m["position"]["partial"] = 2, []
        del m["position"]["high"]
    for step in (13, 26):
        edit_meta(tmp_path, step, as_format_2_without_the_streak, reseal=True)
    resumed = fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    assert records(tmp_path) == records(straight[1])
    same_params(resumed.state.params, straight[0].state.params)
