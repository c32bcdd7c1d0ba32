"""``rnnjax.restore``: a run's checkpoints read back for inference, whole or not at all."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from conftest import SUITE_XLA_FLAGS, TINY, assert_trees_equal, free_port, small_text, tree_digest, user_env

from rnnjax import checkpoint, runs, state as state_lib
from rnnjax.checkpoint import CheckpointError
from rnnjax.spelling import flag_spelling
from rnnjax.state import make_model
from rnnjax.train import fit


def test_missing_or_empty_workdir(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.restore(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(CheckpointError, match=r"^The workdir .*file.txt is a file; give the folder a run was "
                                              r"trained in\.$"):
        checkpoint.restore(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoints"):
        checkpoint.restore(tmp_path / "empty")
    (tmp_path / "empty" / checkpoint.SUBDIR).mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        checkpoint.restore(tmp_path / "empty")
    (tmp_path / "empty" / checkpoint.CONFIG).write_text("{}")
    inside = tmp_path / "empty" / checkpoint.SUBDIR             # it said "train with --workdir it first"
    with pytest.raises(CheckpointError, match=rf"^{inside} is a workdir's checkpoints folder; give the "
                                              rf"workdir, {tmp_path / 'empty'}\.$"):
        checkpoint.restore(inside)
    (inside / "26").mkdir()                 # a step's folder
    with pytest.raises(CheckpointError, match=rf"^{inside / '26'} is a checkpoint of a workdir; give the "
                                              rf"workdir, {tmp_path / 'empty'} \(step=26\)\.$"):
        checkpoint.restore(inside / "26")
    monkeypatch.chdir(inside)           # as typed from inside it: "26", ".", a link to it
    (tmp_path / "link").symlink_to(inside / "26")
    for typed in ("26", "26/", tmp_path / "link"):
        with pytest.raises(CheckpointError, match=rf"is a checkpoint of a workdir; give the workdir, "
                                                  rf"{tmp_path / 'empty'} \(step=26\)\.$"):
            checkpoint.restore(typed)
    with pytest.raises(CheckpointError, match=rf"^\. is a workdir's checkpoints folder; give the workdir, "
                                              rf"{tmp_path / 'empty'}\.$"):
        checkpoint.restore(".")
    with pytest.raises(CheckpointError, match=r"^restore's workdir is empty \(''\); give the folder a run "):
        checkpoint.restore("")


def test_unknown_step(small_data, tmp_path):
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1)
    with pytest.raises(CheckpointError, match="no checkpoint at step 5"):
        checkpoint.restore(tmp_path, step=5)


def test_run_is_a_whole_number_as_step_is(small_data, tmp_path):
    together = runs.fit_runs([TINY.replace(epochs=1).replace(seed=s) for s in (0, 1)], small_data, tmp_path,
                             devices=1, log=None)
    for run in (1, np.int64(1), "1"):
        restored = checkpoint.restore(tmp_path, run=run)
        assert restored.config.seed == 1 and restored.run == 1
        assert_trees_equal(restored.params, jax.tree.map(lambda x: x[1], together.state.params))
        # its own, not the mean in the meta (the researcher read a group's mean as a run's)
        assert restored.val_ppl == together.history[-1]["val_ppl"] != restored.meta["val_ppl"]
    single = fit(TINY.replace(epochs=1), small_data, tmp_path / "one", devices=1, log=None)
    assert checkpoint.restore(tmp_path / "one").val_ppl == single.history[-1]["val_ppl"]
    alone = checkpoint.restore(tmp_path / "one", run=0)          # run 0 of a single run: the run itself
    assert alone.run is None and alone.val_ppl == single.history[-1]["val_ppl"]
    for bad in (True, 1.0, "one", "²", [1]):
        message = rf"^run must be a whole number, got {re.escape(repr(bad))}\.$"
        with pytest.raises(CheckpointError, match=message):
            checkpoint.restore(tmp_path, run=bad)
        with pytest.raises(CheckpointError, match="run must be a whole number"):
            checkpoint.restore(tmp_path, best=True, run=bad)


# After a failed restore, orbax's background event loop complains while shutting down.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupted_checkpoint_is_a_clear_error_and_nothing_is_touched(small_data, tmp_path):
    fit(TINY.replace(epochs=1), small_data, tmp_path, devices=1)
    step_dir = tmp_path / checkpoint.SUBDIR / "13"
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and f.parent.name == "d":
            f.write_bytes(b"\0" * f.stat().st_size)
    before = tree_digest(tmp_path)
    with pytest.raises(CheckpointError, match="step 13 .* cannot be restored"):
        checkpoint.restore(tmp_path)
    with pytest.raises(CheckpointError, match="cannot be restored"):
        fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1)
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

    from rnnjax import lock as lock_lib
    fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    step_dir = tmp_path / checkpoint.SUBDIR / "13"
    (step_dir / "meta" / "metadata").unlink()                       # as the deleter starts
    with pytest.raises(checkpoint.DamagedCheckpoint):               # no run holds the workdir: damage
        checkpoint.restore(tmp_path, step=13)
    with lock_lib.lock(tmp_path):                                   # as the run writing it would
        with pytest.raises(checkpoint.DamagedCheckpoint):           # listed still after the wait: damage
            checkpoint.restore(tmp_path, step=13)
        threading.Timer(0.3, shutil.rmtree, (step_dir,)).start()    # the deleter finishes
        with pytest.raises(CheckpointError, match="step 13 in .* was removed as it was read"):
            checkpoint.restore(tmp_path, step=13)


def test_a_listing_that_finds_none_as_the_writing_run_drops_one_is_made_again(small_data, tmp_path,
                                                                              monkeypatch):
    """Seen once in 703 restores during training: "holds no complete checkpoint", listed as the latest but
    one was renamed into .removing and the newest was still being renamed into place."""
    from rnnjax import lock as lock_lib, restore as restore_lib
    fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, log=None)
    listed = restore_lib.steps
    calls = []

    def none_at_first(workdir):
        calls.append(1)
        return [] if len(calls) == 1 else listed(workdir)
    monkeypatch.setattr(restore_lib, "steps", none_at_first)
    (tmp_path / checkpoint.SUBDIR / checkpoint.REMOVING / "13").mkdir(parents=True)    # just dropped
    with lock_lib.lock(tmp_path):                                   # by the run that holds the workdir
        assert checkpoint.restore(tmp_path).step == 26 and len(calls) == 2
    calls.clear()
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):     # no run writes there
        checkpoint.restore(tmp_path)


@pytest.mark.slow
def test_restore_for_inference_in_a_fresh_process(small_data, tmp_path):
    result = fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1)
    from rnnjax import predict
    model = make_model(TINY, len(small_data.vocab))
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


# Process argv[1] of a two-process run trains on the text at argv[3]; then process 0 alone restores it.
_TRAIN_THEN_ONE_RESTORES = """
import sys
import rnnjax
from rnnjax import parallel
i, address, text, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
parallel.initialize_distributed(address, 2, i, timeout_s=60)
config = rnnjax.config.PRESETS["tiny"].replace(epochs=1, **rnnjax.corpus.TEXT_DEFAULTS)
rnnjax.fit(config, rnnjax.corpus.load(config, text=text), workdir, log=None)
if i == 0:
    print(rnnjax.checkpoint.restore(workdir).predict("the ", 10))
"""


@pytest.mark.slow
def test_one_process_of_a_multi_host_run_restores_alone(tmp_path):
    """orbax's reader waited for every process of the run after reading: process 0 hung in restore, and the
    other at its exit."""
    (tmp_path / "input.txt").write_text(small_text(3000))
    env = user_env(**SUITE_XLA_FLAGS, JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu")
    address = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, "-c", _TRAIN_THEN_ONE_RESTORES, str(i), address,
                               str(tmp_path / "input.txt"), str(tmp_path / "w")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=100) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    said = [[line for line in out.splitlines() if not line.startswith("[Gloo]")] for out, _ in outs]
    assert len(said[0]) == 1 and said[0][0].startswith("the ") and said[1] == [], said


def test_the_best_with_a_damaged_meta_is_not_chosen_silently(small_data, tmp_path, capsys):
    """A checkpoint whose meta cannot be read may have been the best: ``best=True`` said nothing and took
    the best of the rest."""
    from experiments import timemachine
    fit(TINY.replace(epochs=3), small_data, tmp_path, devices=1, checkpoint_every=1, keep=3, log=None)
    best = checkpoint.restore(tmp_path, best=True).step
    (tmp_path / checkpoint.SUBDIR / str(best) / "meta" / "metadata").write_bytes(b"")
    rest = min((p["val_ppl"], s) for s, p in checkpoint.scores_by_step(tmp_path).items())[1]
    with pytest.raises(checkpoint.DamagedCheckpoint, match=f"step {best} "):
        checkpoint.restore(tmp_path, best=True)
    assert checkpoint.restore(tmp_path, best=True, fallback=True).step == rest != best
    capsys.readouterr()
    argv = ["--workdir", str(tmp_path), "--predict", "the", "--num-preds", "3", "--best"]
    assert timemachine.main(argv) == 0
    warning = capsys.readouterr().err.splitlines()[0]
    assert warning.startswith(f"warning: The checkpoint at step {best} ") and warning.endswith(
        f"generating from checkpoint step {rest}, the best of those that can be read.")
    assert "fallback=True" not in warning          # the Python API's hint: the command has fallen back


def test_arguments_of_the_wrong_type_are_one_sentence(tmp_path):
    for workdir in (None, 5, ["runs/tm"]):
        with pytest.raises(TypeError, match=r"^restore takes the workdir as a path \(str or os.PathLike\)"):
            checkpoint.restore(workdir)
    for kwargs in ({"best": "no"}, {"fallback": 1}, {"best": None}):
        with pytest.raises(TypeError, match=rf"^restore's {next(iter(kwargs))} is True or False, got"):
            checkpoint.restore(tmp_path, **kwargs)


def test_a_workdir_that_cannot_be_read_is_one_sentence(tmp_path, monkeypatch):
    """Python's OSError (ENAMETOOLONG from pathlib, EACCES from listing checkpoints/) reached the caller."""
    with pytest.raises(CheckpointError, match=r"^The workdir x{100}\.\.\. cannot be read \(File name too "):
        checkpoint.restore("x" * 5000)
    (tmp_path / checkpoint.SUBDIR).mkdir()
    listed = os.listdir

    def denied(path):
        if Path(path).name == checkpoint.SUBDIR:
            raise PermissionError(13, "Permission denied")
        return listed(path)
    monkeypatch.setattr(os, "listdir", denied)
    with pytest.raises(CheckpointError, match=rf"^The workdir {tmp_path} cannot be read \(Permission denied"):
        checkpoint.restore(tmp_path)
    monkeypatch.undo()
    (tmp_path / checkpoint.SUBDIR).rmdir()
    (tmp_path / checkpoint.SUBDIR).write_text("")        # not "holds no checkpoints; train first"
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / checkpoint.SUBDIR} is not a folder; move it "
                                              r"aside to train or restore\.$"):
        checkpoint.restore(tmp_path)


@pytest.mark.slow
def test_one_run_trained_together_restores_without_choosing_it(small_data, tmp_path):
    """``fit_runs([config])``: run 0 is the only one (it asked for run=K, K from 0 to 0)."""
    together = runs.fit_runs([TINY.replace(epochs=1)], small_data, tmp_path, devices=1, log=None)
    for kwargs in ({}, {"best": True}, {"run": 0}):
        restored = checkpoint.restore(tmp_path, **kwargs)
        assert_trees_equal(restored.params, jax.tree.map(lambda x: x[0], together.state.params))
    with pytest.raises(CheckpointError, match=r"holds 1 run trained together; .* K from 0 to 0, not 1"):
        checkpoint.restore(tmp_path, run=1)


def test_past_a_damaged_best_the_fallback_takes_the_next_best_not_the_newest_before_it(small_data, tmp_path,
                                                                                       monkeypatch):
    """--predict --best said "the best of those that can be read" and took the newest good step before it."""
    from rnnjax import restore as restore_lib
    fit(TINY.replace(epochs=3), small_data, tmp_path, devices=1, checkpoint_every=1, keep=3, log=None)
    by_epoch = {1: 3.0, 2: 1.0, 3: 2.0}                                  # steps 13, 26, 39
    monkeypatch.setattr(restore_lib, "val_ppl", lambda meta, run=None: by_epoch[meta["position"]["epoch"]])
    state = tmp_path / checkpoint.SUBDIR / "26" / "state"
    largest = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(bytes(largest.stat().st_size))
    with pytest.raises(checkpoint.DamagedCheckpoint,
                       match=r"step 26 .*; fallback=True tries the next best, of those that can be read\.$"):
        checkpoint.restore(tmp_path, best=True)
    with pytest.raises(checkpoint.DamagedCheckpoint,
                       match=r"; fallback=True tries the newest good one before it\.$"):
        checkpoint.restore(tmp_path, step=26)
    assert checkpoint.restore(tmp_path, best=True, fallback=True).step == 39
    assert checkpoint.restore(tmp_path, step=26, fallback=True).step == 13          # the newest before it


def test_a_checkpoint_removed_as_the_best_is_sought_is_not_damage(small_data, tmp_path, monkeypatch):
    """Every meta is read to find the best: one the run writing there removes meanwhile was damage."""
    import shutil

    from rnnjax import lock as lock_lib, restore as restore_lib
    fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, keep=3, log=None)
    read = restore_lib.read_meta

    def removed_as_read(workdir, step):
        if step == 13 and (tmp_path / checkpoint.SUBDIR / "13").exists():
            shutil.rmtree(tmp_path / checkpoint.SUBDIR / "13")
            raise checkpoint.DamagedCheckpoint(step, tmp_path / checkpoint.SUBDIR, "cannot be read")
        return read(workdir, step)
    monkeypatch.setattr(restore_lib, "read_meta", removed_as_read)
    with lock_lib.lock(tmp_path):                       # as the run removing it holds it
        assert checkpoint.restore(tmp_path, best=True).step == 26


def test_the_best_of_a_run_that_is_not_there_is_the_run_s_sentence(small_data, tmp_path):
    """``--predict --best --run 5`` of two runs ended in an IndexError."""
    runs.fit_runs([TINY.replace(epochs=1, seed=s) for s in (0, 1)], small_data, tmp_path, devices=1, log=None)
    for fallback in (False, True):
        with pytest.raises(CheckpointError, match=r"holds 2 runs trained together; .* K from 0 to 1, not 5"):
            checkpoint.restore(tmp_path, best=True, run=5, fallback=fallback)
    assert checkpoint.restore(tmp_path, best=True, run=1).config.seed == 1


@pytest.mark.parametrize("keep, epoch", [(3, 2), (1, 2), (1, 1)])
def test_a_run_that_stopped_early_names_a_checkpoint_from_before_it_stopped_where_one_is_kept(
        keep, epoch, small_data, tmp_path, monkeypatch):
    """With keep=1 the run's own best from before it stopped is kept (the latest and the runs' mean's best
    alone were); stopped in epoch 1, it has none."""
    from rnnjax import writer
    from rnnjax.diverging import NonFiniteLoss
    real = writer.check_divergence

    def run_1_diverges(record, high, vocab_size):
        if (record["run"], record["epoch"]) == (1, epoch):
            raise NonFiniteLoss("", f"it diverged in epoch {epoch}")
        return real(record, high, vocab_size)
    monkeypatch.setattr(writer, "check_divergence", run_1_diverges)
    configs = [TINY.replace(epochs=3, seed=s) for s in (0, 1)]
    runs.fit_runs(configs, small_data, tmp_path, devices=1, log=None, checkpoint_every=1, keep=keep)
    stopped = rf"^Run 1 of {re.escape(str(tmp_path))} stopped early \(it diverged in epoch {epoch}\)"
    if epoch == 1:       # its epoch's checkpoint is from after it stopped
        none_before = stopped + r": restore another run; no checkpoint kept is from before it stopped\.$"
        with pytest.raises(CheckpointError, match=none_before):
            checkpoint.restore(tmp_path, run=1)
        no_best = stopped + r", and no checkpoint holds a finite validation perplexity of it: restore another"
        with pytest.raises(CheckpointError, match=no_best):
            checkpoint.restore(tmp_path, run=1, best=True)
        return
    per_epoch = 13
    before = (stopped + r": restore another run, or one saved before it stopped: the newest with "
              rf"step={per_epoch}, the best with best=True\.$")
    with pytest.raises(CheckpointError, match=before):
        checkpoint.restore(tmp_path, run=1)
    with pytest.raises(CheckpointError, match=stopped + r": choose another --run, or one saved before it "
                                                        r"stopped: the best with --best\.$"), flag_spelling():
        checkpoint.restore(tmp_path, run=1)          # as --predict --run 1 says it: the command takes no step
    assert checkpoint.restore(tmp_path, run=1, step=per_epoch).step == per_epoch
    assert checkpoint.restore(tmp_path, run=1, best=True).step == per_epoch
    assert checkpoint.restore(tmp_path, run=0).step == 3 * per_epoch


@pytest.mark.slow
def test_best_of_runs_without_a_run_names_the_one_of_lowest_validation_perplexity(small_data, tmp_path):
    configs = [TINY.replace(epochs=2, lr=lr) for lr in (0.5, 2.0, 1.0)]
    runs.fit_runs(configs, small_data, tmp_path, devices=1, log=None, checkpoint_every=1)
    best = min((p, k) for s in checkpoint.steps(tmp_path) for k, p in
               enumerate(checkpoint.read_meta(tmp_path, s)["run_val_ppls"]))
    with pytest.raises(CheckpointError, match=rf"choose one with run=K .*, K from 0 to 2; run {best[1]} has "
                                              rf"the lowest validation perplexity, {best[0]:.4g}\.$"):
        checkpoint.restore(tmp_path, best=True)
    with pytest.raises(CheckpointError, match=r"K from 0 to 2\.$"):      # not best: no perplexity to name
        checkpoint.restore(tmp_path)


@pytest.mark.slow
def test_a_run_of_another_optimizer_restores_for_inference_and_a_resume_names_the_optimizer(
        small_data, tmp_path, monkeypatch):
    """A run trained with Adam where its config names SGD (``make_optimizer`` replaced: an optimizer
    redefined under the name a run was trained with) was read where SGD is the optimizer, and the other
    way, as a cell registered wrongly: inference reads the params alone now, and a resume says the
    optimizer differs."""
    def adam(config, per_run=False):
        return optax.chain(optax.clip_by_global_norm(config.clip), optax.adam(1e-2))
    config = TINY.replace(epochs=1)
    with monkeypatch.context() as m:
        m.setattr(state_lib, "make_optimizer", adam)
        trained = fit(config, small_data, tmp_path / "adam", devices=1, log=None)
    fit(config, small_data, tmp_path / "sgd", devices=1, log=None)
    for workdir, patched in ((tmp_path / "adam", False), (tmp_path / "sgd", True)):
        with monkeypatch.context() as m:
            if patched:
                m.setattr(state_lib, "make_optimizer", adam)
            restored = checkpoint.restore(workdir)
            if not patched:
                assert_trees_equal(restored.params, trained.state.params)
            sides = f"{'made here, not saved' if patched else 'saved, not made here'}: .opt_state"
            says = (re.escape(sides) + r".* trained with another optimizer than its Config\.optimizer makes "
                    r"here \(rnnjax\.OPTIMIZERS\) or another TrainState; resume it with the same")
            with pytest.raises(checkpoint.StateMismatch, match=says):
                fit(config.replace(epochs=2), small_data, workdir, devices=1, log=None)
    assert not (tmp_path / "adam" / checkpoint.DAMAGED).exists() and checkpoint.steps(tmp_path / "adam")


def test_a_run_that_diverged_before_its_first_checkpoint_says_so(small_data, tmp_path):
    """Its last record says why it stopped: restore (and --predict) says it, not only that none is there."""
    from rnnjax.diverging import NonFiniteLoss
    with pytest.raises(NonFiniteLoss):
        fit(TINY.replace(lr=1e30, epochs=3), small_data, tmp_path, devices=1, log=None)
    with pytest.raises(CheckpointError, match=rf"^The workdir {re.escape(str(tmp_path))} holds no complete "
                                              r"checkpoint: its run stopped before its first \(its train "
                                              r"perplexity is inf at epoch 1, the uniform guess's \d+\)\.$"):
        checkpoint.restore(tmp_path)
