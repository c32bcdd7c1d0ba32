"""Faults injected into runs: each survived with nothing lost and one clear line, never a traceback.

kill -9 at random moments, a full disk, a flipped bit, a torn or garbled metrics line, a second
writer, and bad values for the flags. Each resumed run is compared with an uninterrupted one.
"""

import errno
import json
import random
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import timemachine
from rnnjax import checkpoint, meta as meta_lib, metrics, workdir
from rnnjax.train import fit

from conftest import TINY

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
               r"stopped there and its last complete checkpoint is step 26")
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


def test_a_flipped_bit_is_caught_and_resume_falls_back(small_data, tmp_path, straight):
    fit(CONFIG.replace(epochs=3), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    latest = checkpoint.latest_step(tmp_path)
    flip_a_bit(tmp_path / checkpoint.SUBDIR / str(latest))
    with pytest.raises(checkpoint.DamagedCheckpoint, match=f"step {latest} .* (damaged|cannot be restored)"):
        checkpoint.restore(tmp_path)
    assert checkpoint.restore(tmp_path, fallback=True).step == latest - 13
    lines = []
    resumed = fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=lines.append)
    assert lines[0].startswith(f"resuming from step {latest - 13}")
    assert f"checkpoint step {latest} is damaged: " in lines[0] and "set aside in" in lines[0]
    assert (tmp_path / checkpoint.DAMAGED / str(latest)).is_dir()           # set aside, not deleted
    assert records(tmp_path) == records(straight[1])
    same_params(resumed.state.params, straight[0].state.params)


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


def test_a_torn_last_metrics_line_is_dropped_on_resume(small_data, tmp_path, straight, capsys):
    fit(CONFIG.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    with open(tmp_path / metrics.FILENAME, "a") as f:
        f.write('{"epoch": 3, "step": 39, "train_lo')                 # power lost mid-write
    resumed = fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    assert "dropped a torn last line" in capsys.readouterr().err
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
    with pytest.raises(metrics.MetricsError, match=message):
        fit(TINY.replace(epochs=3), small_data, tmp_path, devices=1, log=None)


def test_a_second_writer_fails_at_once(small_data, tmp_path):
    with workdir.lock(tmp_path):
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
    (["--cell", "nope"], "not a known cell"), (["--nonlinearity", "sigmoid"], "--nonlinearity must be"),
    (["--batch-size", str(10 ** 7)], "GiB for a training step"),
    (["--num-train", "10000000"], "windows of num_steps"),
    (["--devices", "99"], "--devices 99"), (["--batch-size", "1023"], "not divisible"),
    (["--seeds", "0,0"], "the same run"), (["--sample"], "add --predict"),
    (["--predict", "a", "--temperature", "0"], "--temperature must be"),
    (["--predict", "a", "--top-k", "0"], "--top-k must be at least 1"),
    (["--predict", "it has", "--top-k", "99"], "top_k (--top-k) must be between 1 and the vocabulary's 28"),
    (["--predict", "It has"], "outside the vocabulary"), (["--predict", "a", "--run", "1"], "single run"),
    (["--predict", "a", "--num-preds", "-1"], "--num-preds must be at least 0"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_flags_are_one_line_and_lose_nothing(real_text_path, tmp_path, capsys, flags, message, trained):
    """Every flag's bad values: exit 1, one line naming it, the workdir as it was."""
    before = sorted(p.relative_to(trained) for p in trained.rglob("*"))
    workdir_args = ["--workdir", str(trained)] if "--predict" in flags or "--run" in flags else \
        ["--workdir", str(tmp_path / "new")]
    assert cli("--data", real_text_path, "--preset", "tiny", "--devices", "2", *workdir_args, *flags) == 1
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


@pytest.mark.parametrize("signum,after", [(signal.SIGTERM, 0.3), (signal.SIGINT, 0.3), (signal.SIGTERM, 2.5),
                                          (signal.SIGINT, 2.5)])
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


def test_a_save_that_fails_in_the_background_stops_the_run_at_its_next_save(small_data, tmp_path,
                                                                            monkeypatch):
    """Orbax writes asynchronously: a write that failed after ``save`` returned is found at the next save
    (or at the end), and stops the run there."""
    calls = []

    def failed_in_background(self):          # the first save's write failed, after it returned
        calls.append(self)
        if len(calls) > 1:
            raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", failed_in_background)
    with pytest.raises(checkpoint.CheckpointError, match=r"Saving a checkpoint to .* failed \(OSError: "
                                                         r"\[Errno 5\]"):
        fit(CONFIG, small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    assert [r["epoch"] for r in records(tmp_path)] == [1, 2]          # stopped at epoch 2's save
