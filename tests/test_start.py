import dataclasses
import errno
import functools
import json
import os

import jax
import numpy as np
import optax
import pytest

import rnnjax

from conftest import TINY as SMALL, small_text
from rnnjax import checkpoint, metrics, optimizers, start
from rnnjax.backend import available_cores
from rnnjax.checkpoint import CheckpointError
from rnnjax.data import TimeMachine
from rnnjax.position import Position
from rnnjax.start import plan
from rnnjax.train import fit


@pytest.mark.cpu_devices(2)
def test_plan_says_new_resumed_or_finished_and_writes_nothing(small_data, tmp_path):
    workdir = tmp_path / "run"
    new = plan(SMALL, small_data, workdir, devices=2)
    assert new.step is None and not new.finished and not workdir.exists()
    assert new.describe().startswith("new run of 3 epochs on 2 CPU device(s), fused loss")
    assert new.describe().endswith(f"writing to {workdir}")
    lines = []
    fit(SMALL.replace(epochs=2), small_data, workdir, devices=1, log=lines.append)
    assert lines[0].startswith("new run of 2 epochs on 1 CPU device(s), fused loss")
    resumed = plan(SMALL, small_data, workdir, devices=1)
    assert resumed.step == 26
    assert resumed.describe().startswith("resuming from step 26 (epoch 3 of 3, batch 0)")
    assert resumed.describe().endswith("; 2 epochs asked for before, 3 now")   # rnnjax's sgd has no schedule
    done = plan(SMALL.replace(epochs=2), small_data, workdir, devices=1)
    assert done.finished and "nothing to train" in done.describe()
    before = tree_stat(workdir)
    result = fit(SMALL.replace(epochs=2), small_data, workdir, devices=1, log=lines.append)
    assert "nothing to train" in lines[-1] and [r["epoch"] for r in result.history] == [1, 2]
    assert int(result.state.step) == 26 and tree_stat(workdir) == before


def test_a_resume_of_more_epochs_says_an_optimizer_of_ones_own_is_made_of_them(
        small_data, tmp_path, monkeypatch):
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "cosine", optimizers.clipped(
        lambda learning_rate: optax.sgd(lambda n: learning_rate * optax.cosine_decay_schedule(1.0, 26)(n))))
    config = SMALL.replace(optimizer="cosine", epochs=2)

    def stop(done, total, record):
        raise StopIteration         # at its first call: a run stopped early, of its 2 epochs
    with pytest.raises(StopIteration):
        fit(config, small_data, tmp_path, devices=1, log=None, progress=stop)
    assert "asked for before" not in plan(config, small_data, tmp_path, devices=1).describe()
    assert plan(config.replace(epochs=5), small_data, tmp_path, devices=1).describe().endswith(
        "; 2 epochs asked for before, 5 now (the optimizer 'cosine' is made anew: a schedule of "
        "config.epochs follows the new count, one of a fixed count of steps keeps its end)")


def test_a_resume_past_the_end_of_ones_own_schedule_warns_that_it_trains_nothing(
        small_data, tmp_path, monkeypatch):
    """A warmup-cosine schedule of the 2 epochs' 26 steps, resumed for 4: epochs 3-4 trained at rate 0,
    unsaid (day-4 researcher). Runs trained together are probed as well; an optimizer that accumulates
    (MultiSteps, an update every 16th step) is not taken for one at rate 0."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, 4, 26)
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "cosine", optimizers.clipped(
        lambda learning_rate: optax.adamw(lambda n: learning_rate * schedule(n))))
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "accumulated", optimizers.clipped(
        lambda learning_rate: optax.MultiSteps(optax.sgd(learning_rate), every_k_schedule=16)))
    config = SMALL.replace(optimizer="cosine", epochs=2, lr=0.01)
    fit(config, small_data, tmp_path / "one", devices=1, log=None)
    said = plan(config.replace(epochs=4), small_data, tmp_path / "one", devices=1).describe()
    assert said.endswith("; 2 epochs asked for before, 4 now; warning: the optimizer 'cosine' updates "
                         "nothing in 64 steps from step 26 given gradients of norm 1 (a rate of 0, as a "
                         "schedule's of a fixed count of steps past its end, would train nothing from here): "
                         "register one whose schedule follows config.epochs (rnnjax.optimizers), or train "
                         "anew in another workdir")
    before = checkpoint.restore(tmp_path / "one").params
    after = fit(config.replace(epochs=3), small_data, tmp_path / "one", devices=1, log=None).state.params
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    runs = [config.replace(seed=s) for s in (0, 1)]
    rnnjax.fit_runs(runs, small_data, tmp_path / "runs", devices=1, log=None)
    assert "warning: the optimizer 'cosine' updates nothing in 64 steps from step 26 given" in plan(
        runs[0].replace(epochs=3), small_data, tmp_path / "runs", devices=1,
        runs=[c.replace(epochs=3) for c in runs]).describe()
    accumulated = SMALL.replace(optimizer="accumulated", epochs=1)
    fit(accumulated, small_data, tmp_path / "accumulated", devices=1, log=None)
    assert "updates nothing" not in plan(accumulated.replace(epochs=2), small_data, tmp_path / "accumulated",
                                         devices=1).describe()


def test_a_finished_run_with_a_damaged_newest_checkpoint_says_so_and_ends_at_the_good_one(
        small_data, tmp_path):
    """It said "nothing to train" and reported the damaged checkpoint's epoch with the older one's model."""
    fit(SMALL.replace(epochs=3), small_data, tmp_path, devices=1, log=None, checkpoint_every=1)
    (tmp_path / checkpoint.SUBDIR / "39" / "meta" / "metadata").write_text("{")
    lines = []
    result = fit(SMALL.replace(epochs=2), small_data, tmp_path, devices=1, log=lines.append)
    assert lines[-1].startswith(f"{tmp_path} holds 2 trained epochs (step 26), the run asks for 2 epochs: "
                                "nothing to train; a config of more epochs trains on; checkpoint step 39 ")
    assert lines[-1].endswith("(a run that trains on sets it aside).")
    assert [r["epoch"] for r in result.history] == [1, 2] and int(result.state.step) == 26
    assert sorted(checkpoint.steps(tmp_path)) == [13, 26, 39]     # nothing trains: nothing moves


def test_a_cell_registered_in_place_of_one_of_rnnjax_s_is_named(small_data, tmp_path, monkeypatch):
    """config.json names the cell 'gru' alike: the run's first line says which it is."""
    import flax.linen as nn

    from rnnjax import cells
    assert "registered in place" not in plan(SMALL.replace(cell="gru"), small_data, tmp_path).describe()
    monkeypatch.setitem(cells.CELLS, "gru", nn.MGUCell)
    assert plan(SMALL.replace(cell="gru"), small_data, tmp_path).describe().endswith(
        "; the cell 'gru' is MGUCell, registered in place of rnnjax's own")


@pytest.mark.cpu_devices(1)
def test_plan_names_the_plain_path_and_how_to_use_all_cores(small_data, tmp_path, monkeypatch):
    text = plan(SMALL.replace(kernel="plain"), small_data, tmp_path, devices=1).describe()
    assert "1 CPU device(s), plain loss" in text
    assert "use_cpu_cores" not in text          # one device of four, chosen: no advice
    one = jax.local_devices()[:1]
    monkeypatch.setattr(jax, "local_devices", lambda *args, **kwargs: one)
    # One device chosen (as the CLI's use_cpu_cores(7) chooses on any machine): no advice either.
    assert "use_cpu_cores" not in plan(SMALL.replace(kernel="plain"), small_data, tmp_path).describe()
    monkeypatch.setattr(start, "cpu_device_count_chosen", lambda: False)
    text = plan(SMALL.replace(kernel="plain"), small_data, tmp_path).describe()
    assert ("use_cpu_cores" in text) == (available_cores() > 1)


@pytest.mark.cpu_devices(4)
def test_plan_says_why_it_trains_on_fewer_devices_than_cores(small_data, tmp_path, monkeypatch):
    """As the CLI's use_cpu_cores makes a device per core only where the batch divides over them."""
    assert "does not divide" not in plan(SMALL, small_data, tmp_path).describe()
    monkeypatch.setattr(start, "available_cores", lambda: 6)
    assert plan(SMALL, small_data, tmp_path).describe().endswith(
        "; not 6 devices, one per core: batch_size=16 does not divide over them")
    assert "does not divide" not in plan(SMALL, small_data, tmp_path, devices=2).describe()  # asked for


def test_a_new_run_moves_an_earlier_run_s_records_aside_and_says_so(small_data, tmp_path):
    """Records with no checkpoint left to resume them (deleted, or a kill before the first save) are kept."""
    import shutil
    fit(SMALL.replace(epochs=2), small_data, tmp_path, devices=1, log=None)
    earlier = (tmp_path / metrics.FILENAME).read_text()
    (tmp_path / metrics.PLOT).write_bytes(b"its plot")      # the CLI's
    shutil.rmtree(tmp_path / "checkpoints")
    said = []
    fit(SMALL.replace(epochs=1), small_data, tmp_path, devices=1, log=said.append)
    t = tmp_path
    assert said[0].endswith(f"; {t} holds what an earlier run wrote, with no checkpoint to resume from: "
                            "moving metrics.jsonl, steps.jsonl, config.json and ppl.png aside, as "
                            "metrics.1.jsonl, steps.1.jsonl, config.1.json and ppl.1.png")
    assert (tmp_path / "metrics.1.jsonl").read_text() == earlier
    assert json.loads((tmp_path / "config.1.json").read_text())["config"]["epochs"] == 2      # its settings
    assert (tmp_path / "ppl.1.png").read_bytes() == b"its plot" and not (tmp_path / metrics.PLOT).exists()
    assert [r["epoch"] for r in metrics.MetricsLog(tmp_path / metrics.FILENAME).read()] == [1]
    shutil.rmtree(tmp_path / "checkpoints")
    (tmp_path / "ppl.2.png").write_bytes(b"the user's")      # N is free for both files
    said.clear()
    fit(SMALL.replace(epochs=1), small_data, tmp_path, devices=1, log=said.append)
    assert said[0].endswith("moving metrics.jsonl, steps.jsonl and config.json aside, as metrics.3.jsonl, "
                            "steps.3.jsonl and config.3.json")         # no plot
    assert (tmp_path / "metrics.1.jsonl").read_text() == earlier
    assert not (tmp_path / "metrics.2.jsonl").exists()
    assert (tmp_path / "ppl.2.png").read_bytes() == b"the user's"


def test_records_that_cannot_be_moved_aside_stop_the_run_in_one_sentence(small_data, tmp_path, monkeypatch):
    from rnnjax.workdir import WorkdirError
    (tmp_path / metrics.FILENAME).write_text('{"epoch": 1, "train_ppl": 9.0, "val_ppl": 9.5}\n')

    def refused(source, target):
        raise PermissionError(1, "Operation not permitted")
    replace = os.replace
    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(WorkdirError, match="cannot be moved to .*metrics.1.jsonl .Operation not permitted.; "
                                           "move it aside yourself"):
        fit(SMALL, small_data, tmp_path, devices=1, log=None)
    assert (tmp_path / metrics.FILENAME).read_text().startswith('{"epoch": 1')
    assert not (tmp_path / "checkpoints").exists()
    # The plot refused after the records moved: they are moved back, to stay numbered alike.
    (tmp_path / metrics.PLOT).write_bytes(b"its plot")
    monkeypatch.setattr(os, "replace",
                        lambda a, b: refused(a, b) if a.name == metrics.PLOT else replace(a, b))
    with pytest.raises(WorkdirError, match="ppl.png cannot be moved to .*ppl.1.png"):
        fit(SMALL, small_data, tmp_path, devices=1, log=None)
    assert (tmp_path / metrics.FILENAME).read_text().startswith('{"epoch": 1')
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", metrics.FILENAME, metrics.PLOT]


def test_a_torn_last_metrics_line_is_said_once_with_the_epochs_it_leaves_out(small_data, tmp_path, capsys):
    fit(SMALL.replace(epochs=2), small_data, tmp_path, devices=1, checkpoint_every=1, log=None)
    log = tmp_path / metrics.FILENAME
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0] + lines[1] + lines[1][:20])          # a crash writing epoch 3's record
    said = []
    fit(SMALL, small_data, tmp_path, devices=1, checkpoint_every=1, log=said.append)
    assert said[0].endswith("ends in a torn line, of an epoch past the checkpoint (trained again): dropped")
    assert capsys.readouterr().err == ""
    assert [r["epoch"] for r in metrics.MetricsLog(log).read()] == [1, 2, 3]
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:2]) + lines[1][:20])  # epoch 3's, torn
    said.clear()
    fit(SMALL.replace(epochs=4), small_data, tmp_path, devices=1, log=said.append)
    assert said[0].endswith("lacks the records of epoch(s) 3 (their records are lost; its torn last line is "
                            "dropped)")
    assert capsys.readouterr().err == ""


def tree_stat(path):
    """Every file's mtime, but the lock's: it is taken (and the pid written) before the plan is made."""
    return sorted((str(p), p.stat().st_mtime_ns) for p in path.rglob("*") if p.name != ".lock")


@pytest.mark.parametrize("config,devices,message", [
    pytest.param(SMALL, 5, "^devices=5: this process has 4", marks=pytest.mark.cpu_devices(4)),
    pytest.param(SMALL.replace(batch_size=18), 4, "batch size 18 is not divisible",
                 marks=pytest.mark.cpu_devices(4)),
    (SMALL.replace(lr=2.0), 1, r"than the one given: lr=2 \(it has 1\)\. Use a new workdir"),
    (SMALL.replace(epochs=2 ** 31 // 13 + 1), 1,           # the step counter is an int32
     r"^epochs=165191050 of 13 steps each is 2147483650 steps; a run takes at most 2\*\*31 - 1\.$"),
])
def test_fit_refuses_before_anything_is_written(small_data, tmp_path, config, devices, message):
    fit(SMALL.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    before = tree_stat(tmp_path)
    data = TimeMachine(config.batch_size, config.num_steps, config.num_train, config.num_val,
                       text=small_text(5000))
    with pytest.raises((ValueError, CheckpointError), match=message):
        fit(config, data, tmp_path, devices=devices)
    assert tree_stat(tmp_path) == before


def test_the_plan_says_a_part_epoch_and_the_runs_that_stopped_before(small_data, tmp_path):
    p = plan(SMALL.replace(epochs=2), small_data, tmp_path)
    done = dataclasses.replace(p, step=30, position=Position(2, 4, [{}], [], [0]))
    assert done.describe().startswith(f"{tmp_path} holds 2 trained epochs and 4 batches of the next "
                                      "(step 30)")
    runs = (SMALL.replace(seed=0), SMALL.replace(seed=1))
    position = Position(1, 4, [{}, {}], [None, "why"])
    resumed = dataclasses.replace(p, step=17, runs=runs, position=position)
    assert resumed.describe().startswith("resuming 2 runs (1 stopped earlier) from step 17 (epoch 2 of 2")


def test_data_made_otherwise_than_the_config_asks_is_refused(small_data, tmp_path):
    """A resume reads config.json and remakes the data from it: data made otherwise (its sizes, its
    preprocessing, its split) would train and validate on other windows."""
    from rnnjax import corpus
    text = small_text(5000)
    cases = [
        (TimeMachine(SMALL.batch_size, SMALL.num_steps, 160, SMALL.num_val, text=text),
         f"160 train and {SMALL.num_val} validation windows, the config asks for {SMALL.num_train} and"),
        (corpus.Corpus(None, SMALL.batch_size, SMALL.num_steps, text=text, preprocess="raw", val_fraction=0,
                       num_train=SMALL.num_train, num_val=SMALL.num_val), "preprocess='raw', the config asks "
                                                                          "for preprocess='d2l'"),
        (corpus.Corpus(None, SMALL.batch_size, SMALL.num_steps, text=text, preprocess="d2l", val_fraction=0.2,
                       num_train=150, num_val=SMALL.num_val), "val_fraction=0.2; .*, the config asks for "
                                                              "val_fraction=0; "),
        (corpus.Corpus(None, SMALL.batch_size, SMALL.num_steps, text=text, min_freq=2, preprocess="d2l",
                       val_fraction=0, num_train=SMALL.num_train, num_val=SMALL.num_val),
         "min_freq=2, the config asks for min_freq=0: "),        # as it has it (0 was shown as 1)
    ]
    for data, message in cases:
        with pytest.raises(ValueError, match=f"made with .*{message}.*train with the config it was loaded "
                                             r"with \(rnnjax.corpus.load\(config, ...\)\)\.$"):
            fit(SMALL, data, tmp_path / "w", devices=1, log=None)
        assert not (tmp_path / "w").exists()
    split = SMALL.replace(val_fraction=0.2, num_train=150)
    data = corpus.Corpus(None, SMALL.batch_size, SMALL.num_steps, text=text, val_fraction=0.2, num_train=140,
                         num_val=SMALL.num_val, preprocess="d2l")
    with pytest.raises(ValueError, match="140 train and .* the config asks for 150 and"):
        plan(split, data, tmp_path / "w", devices=1)
    plan(SMALL.replace(min_freq=1), small_data, tmp_path / "w", devices=1)        # 0 and 1 keep every token


def test_the_batch_order_is_the_config_s_seed_s_whatever_the_data_s(tmp_path):
    """As fit_runs does, and as a resume from config.json would."""
    text = small_text(5000)
    config = SMALL.replace(epochs=1, seed=1)
    data = {s: TimeMachine(SMALL.batch_size, SMALL.num_steps, SMALL.num_train, SMALL.num_val, text=text,
                           seed=s) for s in (0, 1)}
    runs = {s: fit(config, data[s], tmp_path / str(s), devices=1, log=None) for s in (0, 1)}
    assert runs[0].history[0]["train_loss"] == runs[1].history[0]["train_loss"]
    assert data[0].seed == 0                          # the caller's data is as it was


def test_fit_trains_a_plan_only_inside_the_planned_block_that_made_it(small_data, tmp_path, monkeypatch):
    config = SMALL.replace(epochs=1)
    with pytest.raises(ValueError, match="only inside the block of rnnjax.start.planned"):
        fit(config, small_data, tmp_path, devices=1, log=None,
            plan=plan(config, small_data, tmp_path, devices=1))
    with start.planned(config, small_data, tmp_path, devices=1) as p:
        with pytest.raises(ValueError, match=f"another config than fit was given .it trains in {tmp_path}."):
            fit(config.replace(epochs=2), small_data, tmp_path, devices=1, log=None, plan=p)
        with pytest.raises(ValueError, match="another workdir than fit was given"):
            fit(config, small_data, tmp_path / "other", devices=1, log=None, plan=p)
        other = TimeMachine(SMALL.batch_size, SMALL.num_steps, 300, SMALL.num_val, text=small_text(5000))
        with pytest.raises(ValueError, match="made with 300 train"):
            fit(config, other, tmp_path, devices=1, log=None, plan=p)
        monkeypatch.chdir(tmp_path.parent)            # the same workdir, spelled another way
        said = []                                     # what it will do, as fit_runs says it too
        assert fit(config, small_data, tmp_path.name, devices=1, log=said.append, progress=False,
                   plan=p).history[-1]["epoch"] == 1
        assert said == [p.describe()]
    with pytest.raises(ValueError, match="only inside the block"):
        fit(config, small_data, tmp_path, devices=1, log=None, plan=p)
    assert not (tmp_path / "other").exists()


def test_a_failed_save_s_folder_is_removed_before_anything_is_written(small_data, tmp_path, monkeypatch):
    """A disk the run filled: the rerun frees the space of the save that failed before it writes
    metrics.jsonl; only the process that holds the lock removes it."""
    folder = tmp_path / checkpoint.SUBDIR
    leftovers = [folder / "26.orbax-checkpoint-tmp", folder / "39.orbax-checkpoint-tmp-1733400000"]
    for leftover in leftovers:
        (leftover / "state").mkdir(parents=True)
        (leftover / "state" / "d").write_bytes(bytes(1000))
    (folder / "notes.orbax-checkpoint-tmp").mkdir()          # not a save of orbax's: kept
    with monkeypatch.context() as m:
        m.setattr(jax, "process_index", lambda: 1)
        with start.planned(SMALL, small_data, tmp_path, devices=1):
            assert all(p.is_dir() for p in leftovers)

    class Written(Exception):
        """Stops fit at its first write, which found the space."""

    def full_disk(self, epoch):
        if any(p.exists() for p in leftovers):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        raise Written
    monkeypatch.setattr(metrics.MetricsLog, "truncate", full_disk)
    with pytest.raises(Written):
        fit(SMALL, small_data, tmp_path, devices=1, log=None)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.orbax-checkpoint-tmp"]


@pytest.mark.slow
@pytest.mark.cpu_devices(2)
def test_a_resume_that_computes_otherwise_says_it_is_not_bit_for_bit(small_data, tmp_path):
    """The kernel that trained (auto's pick) and the devices are in every meta; a resume on others is the
    same math at float round-off, not the unbroken run's bits, and its plan says so."""
    fit(SMALL.replace(kernel="plain", epochs=1), small_data, tmp_path, devices=2, log=None)
    saved = checkpoint.restore(tmp_path).meta
    assert (saved["kernel"], saved["platform"], saved["num_devices"]) == ("plain", "cpu", 2)
    assert plan(SMALL, small_data, tmp_path, devices=1).describe().startswith(
        "resuming from step 13 (epoch 2 of 3, batch 0) on 1 CPU device(s), fused loss (rnnjax.fused: the "
        f"recurrence and the output layer), float32 matmuls; writing to {tmp_path}; 1 epoch asked for "
        "before, 3 now; trained with the plain "
        "kernel on 2 CPU device(s) until step 13, continued with fused on 1 CPU device(s): results may "
        "differ from an unbroken run's at float round-off")
    assert "round-off" not in plan(SMALL.replace(kernel="plain"), small_data, tmp_path, devices=2).describe()
    fit(SMALL.replace(epochs=2), small_data, tmp_path, devices=2, log=None)      # auto: fused, on a CPU
    assert checkpoint.restore(tmp_path).meta["kernel"] == "fused"
    assert plan(SMALL.replace(kernel="fused"), small_data, tmp_path, devices=2).describe().endswith(
        "; computed otherwise since step 13 (a resume changed its kernel, devices or matmul precision): "
        "results may differ from an unbroken run's at float round-off")        # every later resume says so
    assert "; trained on 2 CPU device(s) until step 26, continued on 1 CPU device(s): results" in plan(
        SMALL, small_data, tmp_path, devices=1).describe()


def test_a_run_failing_after_it_moved_an_earlier_one_aside_leaves_its_own_config(
        small_data, tmp_path, monkeypatch):
    """config.json went aside with the records, then the checkpoint manager failed: the workdir had none,
    and ``--workdir W`` took the d2l preset."""
    import shutil

    from rnnjax import loop
    fit(SMALL.replace(epochs=1), small_data, tmp_path, devices=1, log=None)
    shutil.rmtree(tmp_path / "checkpoints")

    def fails(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(loop.checkpoint, "manager", fails)
    with pytest.raises(OSError):
        fit(SMALL.replace(epochs=1, lr=0.5), small_data, tmp_path, devices=1, log=None)
    assert json.loads((tmp_path / "config.json").read_text())["config"]["lr"] == 0.5
    assert json.loads((tmp_path / "config.1.json").read_text())["config"]["lr"] == SMALL.lr


@pytest.mark.slow
@pytest.mark.cpu_devices(2)
def test_a_resume_with_dropout_on_another_device_count_continues_the_run_to_round_off(small_data, tmp_path):
    """A row's mask follows its index in the global batch: 2 devices resumed on 1 train on as 2 do. Each
    device drew its own masks, and the run was told its results differ from an unbroken run's."""
    config = SMALL.replace(num_layers=2, dropout=0.5, kernel="plain", epochs=1)
    fit(config, small_data, tmp_path / "resumed", devices=2, log=None)
    assert plan(config.replace(epochs=2), small_data, tmp_path / "resumed", devices=1).describe().endswith(
        "; trained on 2 CPU device(s) until step 13, continued on 1 CPU device(s): results may differ from "
        "an unbroken run's at float round-off")
    resumed = fit(config.replace(epochs=2), small_data, tmp_path / "resumed", devices=1, log=None)
    unbroken = fit(config.replace(epochs=2), small_data, tmp_path / "unbroken", devices=2, log=None)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
                 resumed.state.params, unbroken.state.params)
