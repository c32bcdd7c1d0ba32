"""The epoch loop (``rnnjax.loop``): metrics a dict summed per key, the gradient norm before clipping logged,
and workdirs saved before the loop was one (checkpoint format 2) resumed as they were."""

import functools
import json
import os
import re
import signal
import textwrap
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnnjax import agree, checkpoint, loop, meta as meta_lib, metrics, runs, stops, train, workdir
from rnnjax.data import TimeMachine
from rnnjax.objective import targets
from rnnjax.start import planned
from rnnjax.state import create_train_state
from rnnjax.train import STEPS_PER_CALL, Interrupted, fit, train_step

from conftest import TWO_CALLS as TINY, small_text


E = 23          # steps an epoch: two calls


@pytest.fixture(scope="module")
def data():
    """``TINY``'s data: ``E`` steps an epoch (the last batch ragged)."""
    data = TimeMachine(TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val, text=small_text(5000))
    assert data.num_batches() == E
    return data


@pytest.mark.slow
def test_the_gradient_norm_before_clipping_is_logged_as_its_epoch_mean(data, tmp_path):
    config = TINY.replace(epochs=1, clip=0.05)               # clipped at every step
    result = fit(config, data, tmp_path, devices=1, log=None)
    state = create_train_state(config, len(data.vocab))
    step = jax.jit(train_step)
    windows = list(data.train_windows(0, 0))
    norms = []
    for k, w in enumerate(windows):
        batch = w.batch(data.tokens)
        if k == 0:      # the reference: plain autodiff of the mean cross-entropy, unclipped
            def mean_loss(params):
                logits = state.apply_fn({"params": params}, batch.X)
                ce = optax.softmax_cross_entropy(logits, targets(batch.Y, len(data.vocab)))
                return (ce * batch.mask[:, None]).sum() / (batch.mask.sum() * batch.X.shape[1])
            expected = optax.tree.norm(jax.grad(mean_loss)(state.params))
        state, m = step(state, batch)
        norms.append(float(m["grad_norm"]))
    assert norms[0] == pytest.approx(float(expected), rel=1e-5) and min(norms) > config.clip
    [record] = result.history
    assert record["grad_norm"] == pytest.approx(np.mean(norms), rel=1e-5)
    assert json.loads((tmp_path / metrics.FILENAME).read_text())["grad_norm"] == record["grad_norm"]


def test_a_metric_a_step_adds_is_logged_as_its_mean_over_the_epoch(data, tmp_path, monkeypatch):
    """What a researcher adding a metric changes: ``train_step``'s dict, nothing else."""
    plain = train.train_step

    def with_tokens(*args, **kwargs):
        state, m = plain(*args, **kwargs)
        return state, {**m, "tokens": m["count"]}
    monkeypatch.setattr(train, "train_step", with_tokens)
    seen = []
    [record] = fit(TINY.replace(epochs=1), data, tmp_path, devices=1, log=None,
                   progress=lambda done, total, r: r and seen.append(r)).history
    windows = list(data.train_windows(0, 0))
    tokens = [float(w.mask.sum()) * TINY.num_steps for w in windows]
    assert record["tokens"] == pytest.approx(np.mean(tokens)) and min(tokens) < max(tokens)   # a padded batch
    assert seen == [record]                 # progress is given the epoch's record whole, as it is logged


class Enough(Exception):
    pass


@pytest.mark.parametrize("at, step, several, Enough", [
    ("epoch", 2 * E, False, Enough), ("call", E + 10, False, Enough),
    pytest.param("epoch", E, True, Enough, marks=pytest.mark.slow),  # over 3 s: the fast loop keeps one run
    *[pytest.param(*case, marks=pytest.mark.slow)       # these lost every epoch; the fast loop has the others
      for case in (("epoch", E, False, SystemExit), ("call", E + 10, True, KeyboardInterrupt))]])
def test_an_exception_from_progress_saves_its_step_and_the_same_fit_goes_on_from_there(
        data, tmp_path, at, step, several, Enough):
    """Early stopping as fit's docstring says (and a closed pipe under a printing progress, sys.exit in a
    script): ``progress`` raises at an epoch's record or after a call, between checkpoints; that step is
    saved before it propagates, and fit again resumes from it to what a straight run gives."""
    def enough(done, total, record):
        if (record is not None) == (at == "epoch") and done == step:
            raise Enough
    configs = [TINY.replace(epochs=3, seed=s) for s in (0, 1)]
    train_ = (lambda d, **kw: runs.fit_runs(configs, data, d, devices=1, log=None, **kw)) if several else (
        lambda d, **kw: fit(configs[0], data, d, devices=1, log=None, **kw))
    w = tmp_path / "early"
    with pytest.raises(Enough) as raised:
        train_(w, progress=enough)
    assert checkpoint.steps(w) == [step] and (raised.value.saved_step, raised.value.saved_in) == (step, w)
    resumed, straight = train_(w), train_(tmp_path / "straight")
    seconds = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    assert seconds(resumed.history) == seconds(straight.history)
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state)):
        np.testing.assert_array_equal(a, b)


def test_what_log_raises_is_raised_once_the_epoch_is_saved_and_the_same_fit_goes_on(data, tmp_path):
    """A closed pipe under a ``log`` that prints which run stopped: the epoch that trained is saved first
    (it was lost, the checkpoint due only at the end), then the error raised; a resume ends as a straight
    run does."""
    configs = [TINY.replace(epochs=2, lr=1.0), TINY.replace(epochs=2, lr=1e6)]       # run 1 diverges

    def closed(line):
        if "stopped" in line:
            raise BrokenPipeError(32, "Broken pipe")
    with pytest.raises(BrokenPipeError) as raised:
        runs.fit_runs(configs, data, tmp_path / "w", devices=1, log=closed, checkpoint_every=2)
    assert checkpoint.steps(tmp_path / "w") == [E] and raised.value.saved_step == E
    resumed = runs.fit_runs(configs, data, tmp_path / "w", devices=1, log=None)
    straight = runs.fit_runs(configs, data, tmp_path / "straight", devices=1, log=None)
    assert resumed.stopped == straight.stopped and resumed.stopped[1] is not None
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.cpu_devices(2)
def test_a_metric_an_evaluation_adds_is_logged_as_val_key_of_a_run_and_of_runs(data, tmp_path, monkeypatch):
    """What a researcher adding a validation metric changes: ``eval_step``'s dict (a batch's sum), nothing
    else: it is summed over batches and devices as ``loss_sum`` is (a ``<key>_sum`` then divided by
    ``count``, a mean per token, as ``val_loss``)."""
    plain = train.eval_step

    def with_tokens(*args, **kwargs):
        m = plain(*args, **kwargs)
        return {**m, "tokens": m["count"] / 2, "half_sum": m["count"] / 2}
    monkeypatch.setattr(train, "eval_step", with_tokens)
    plain_step = train.train_step

    def with_half(*args, **kwargs):         # the same on the training side: train_half, per token
        state, m = plain_step(*args, **kwargs)
        return state, {**m, "half_sum": m["count"] / 2}
    monkeypatch.setattr(train, "train_step", with_half)
    [record] = fit(TINY.replace(epochs=1), data, tmp_path / "one", devices=2, log=None).history
    tokens = sum(float(b.mask.sum()) for b in data.val_batches()) * TINY.num_steps
    logged = json.loads((tmp_path / "one" / metrics.FILENAME).read_text())
    assert record["val_tokens"] == logged["val_tokens"] == tokens / 2
    assert record["val_half"] == logged["val_half"] == record["train_half"] == 0.5
    together = runs.fit_runs([TINY.replace(epochs=1, seed=s) for s in (0, 1)], data, tmp_path / "two",
                             devices=1, log=None)
    logged = [(r["val_tokens"], r["val_half"], r["train_half"]) for r in together.history]
    assert logged == [(tokens / 2, 0.5, 0.5)] * 2


@pytest.mark.parametrize("extra, said", [
    (lambda m: {"norms": jnp.stack([m["grad_norm"], m["count"]])},
     r"^train_step's metrics must each be one number a step \(their epoch means are logged\); 'norms' "
     r"\(shape \(2,\)\) is not: "),
    (lambda m: {"step": m["count"]},
     r"^train_step's metrics are logged by their names in each epoch's record \(a <key>_sum as train_<key>, "
     r"per token\), and 'step' is the record's "),
])
def test_a_step_metric_that_is_not_one_number_or_takes_a_records_name_is_refused_before_any_step(
        data, tmp_path, monkeypatch, extra, said):
    """Not numpy's TypeError once the first epoch is over (its steps lost), nor a record whose epoch or step
    is the metric's (metrics.jsonl unreadable at the next resume)."""
    plain = train.train_step

    def with_extra(*args, **kwargs):
        state, m = plain(*args, **kwargs)
        return state, {**m, **extra(m)}
    monkeypatch.setattr(train, "train_step", with_extra)
    with pytest.raises(ValueError, match=said):
        fit(TINY.replace(epochs=1), data, tmp_path, devices=1, log=None)
    assert not (tmp_path / metrics.FILENAME).exists() and checkpoint.steps(tmp_path) == []


def _as_format_2(workdir, step):
    """Rewrites the checkpoint at ``step`` as format 2 saved it: a ``[loss_sum, count]`` pair per batch done
    (here the sums, then zero pairs), a single run's sums and streak not in a list of runs."""
    path = workdir / checkpoint.SUBDIR / str(step) / "meta" / "metadata"
    meta = json.loads(path.read_text())
    position, several = meta["position"], "runs" in meta

    def pairs(sums):
        return [[sums["loss_sum"], sums["count"]]] + [[0.0, 0.0]] * (position["batch"] - 1) if sums else []
    partial = position["partial"]
    position["partial"] = [pairs(s) for s in partial] if several else pairs(partial[0])
    position["high"] = position["high"] if several else position["high"][0]
    meta["format"] = 2
    path.write_text(json.dumps(meta_lib.seal({k: v for k, v in meta.items() if k != meta_lib.CHECKSUM})))


@pytest.mark.parametrize("several", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_workdir_of_format_2_stopped_mid_epoch_resumes_as_if_never_stopped(data, tmp_path, several):
    configs = [TINY.replace(epochs=2, seed=s) for s in (0, 1)]

    def train(workdir, **kwargs):
        if several:
            return runs.fit_runs(configs, data, workdir, devices=1, log=None, **kwargs)
        return fit(configs[0], data, workdir, devices=1, log=None, **kwargs)

    def interrupt(done, total, record):
        if done == E + STEPS_PER_CALL:                  # mid-epoch 2
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(Interrupted):
        train(tmp_path / "split", progress=interrupt)
    [step] = [s for s in checkpoint.steps(tmp_path / "split") if s % E]
    _as_format_2(tmp_path / "split", step)
    assert meta_lib.problem(checkpoint.read_meta(tmp_path / "split", step), step) is None
    resumed, straight = train(tmp_path / "split"), train(tmp_path / "straight")

    def same(records):       # the resumed epoch has no grad_norm: format 2 did not keep its sums
        return [{k: v for k, v in r.items() if k not in ("seconds", "grad_norm")} for r in records]
    assert same(resumed.history) == same(straight.history)
    assert all("grad_norm" not in r for r in resumed.history if r["epoch"] == 2)
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state)):
        np.testing.assert_array_equal(a, b)


def test_a_signal_a_peer_catches_in_validation_stops_this_one_after_that_epoch(data, tmp_path, monkeypatch):
    """A multi-host run's processes agree on a signal after each call and after validation, as a
    single-process run stops on one caught then. Simulated in one process: the peer's SIGTERM comes with
    the agreement after epoch 1's validation (the third: two calls an epoch, then validation's; the
    epoch's progress agrees fourth)."""
    gathers = []

    def stop_by_any(own, raised=False):
        gathers.append(own)
        return (signal.SIGTERM if len(gathers) == 3 else own), None
    monkeypatch.setattr(agree, "spans_processes", lambda: True)
    monkeypatch.setattr(agree, "stop_by_any", stop_by_any)
    with pytest.raises(Interrupted, match=r"\(SIGTERM\), caught by another process of the multi-host run, in "
                                          rf"epoch 1 after batch {E}/{E}; saved step {E}"):
        fit(TINY.replace(epochs=3), data, tmp_path, devices=1, log=None)
    assert gathers == [None] * 4 and checkpoint.restore(tmp_path).step == E       # the epoch's progress too
    assert [r["epoch"] for r in metrics.MetricsLog(tmp_path / metrics.FILENAME).read()] == [1]
    gathers.clear()                 # after the last epoch's validation: nothing is left to resume
    with pytest.raises(Interrupted, match=rf"in epoch 1 after batch {E}/{E}; saved step {E} in .*\. Nothing "
                                          r"is left to train\.$"):
        fit(TINY.replace(epochs=1), data, tmp_path / "one", devices=1, log=None)
    gathers.clear()                 # as the last saves finish (the fifth): the same
    monkeypatch.setattr(agree, "stop_by_any", lambda own, raised=False: gathers.append(own) or (
        signal.SIGTERM if len(gathers) == 5 else own, None))
    with pytest.raises(Interrupted, match=r"caught by another process of the multi-host run, in epoch 1 "
                                          rf"after batch {E}/{E}; saved step {E} in .*\. Nothing is left"):
        fit(TINY.replace(epochs=1), data, tmp_path / "end", devices=1, log=None)
    assert gathers == [None] * 5 and checkpoint.restore(tmp_path / "end").step == E


@pytest.mark.parametrize("at, step", [(1, 10), (4, E)])
def test_a_peer_whose_progress_raised_stops_this_one_at_the_same_step_saved(
        data, tmp_path, monkeypatch, at, step):
    """An early stop raised from one process's progress (process 0's alone, say) hung a multi-host run for
    300 s: that process entered a save the others never came to. Simulated in one process: the peer's
    raise comes with the first call's agreement (mid-epoch), or with epoch 1's progress (the fourth)."""
    gathers = []

    def stop_by_any(own, raised=False):
        gathers.append(raised)
        return own, (1 if len(gathers) == at else None)
    monkeypatch.setattr(agree, "spans_processes", lambda: True)
    monkeypatch.setattr(agree, "stop_by_any", stop_by_any)
    said = (rf"^Process 1 of the multi-host run stopped early at step {step} \(its progress raised; it says "
            r"why\): this one saved that step and stops too\.$")
    with pytest.raises(stops.StoppedByAnother, match=said):
        fit(TINY.replace(epochs=3), data, tmp_path, devices=1, log=None)
    assert len(gathers) == at and not any(gathers) and checkpoint.restore(tmp_path).step == step


def test_this_process_s_progress_raising_is_agreed_on_before_its_save_and_raised_as_its_own(
        data, tmp_path, monkeypatch):
    gathers = []
    monkeypatch.setattr(agree, "spans_processes", lambda: True)
    monkeypatch.setattr(agree, "stop_by_any", lambda own, raised=False: gathers.append(raised) or (
        own, 0 if raised else None))

    def early_stop(done, total, record):
        if done == 10:
            raise StopIteration("enough")
    with pytest.raises(StopIteration, match="^enough$"):
        fit(TINY.replace(epochs=3), data, tmp_path, devices=1, log=None, progress=early_stop)
    assert gathers == [True] and checkpoint.restore(tmp_path).step == 10


def test_a_peer_gone_at_an_agreement_stops_this_process_in_one_sentence(data, tmp_path, monkeypatch):
    """The collective that agrees on a stop fails when another process is gone (a second signal, a crash):
    this one stops at once, saying so, not in a traceback and JAX's heartbeat's abort about 100 s later."""
    from jax.experimental import multihost_utils

    def gone(x):
        raise jax.errors.JaxRuntimeError("UNKNOWN: Gloo AllGather failed: Connection closed by peer\nmore")
    monkeypatch.setattr(agree, "spans_processes", lambda: True)
    monkeypatch.setattr(multihost_utils, "process_allgather", gone)
    said = r"^Another process of the multi-host run stopped or failed \(UNKNOWN: Gloo AllGather failed: " \
           r"Connection closed by peer\); this one stops too; start every process again to resume\.$"
    with pytest.raises(stops.LostProcess, match=said):
        fit(TINY.replace(epochs=1), data, tmp_path, devices=1, log=None)


def test_a_signal_as_the_last_saves_finish_says_the_run_is_whole_and_ended_says_when_it_is(
        data, tmp_path, monkeypatch):
    """A signal caught after the last check of the loop, as it waits for its saves, is not lost: the run
    stops there, saying nothing is left to train. ``stops.ended()``: a run that trained (or had trained) to
    its end, none caught, for the caller's handlers of the signals that come after."""
    check_saved, save, waits, saving = checkpoint.check_saved, checkpoint.save, [], []

    def signalled_as_it_waits(manager):
        if not saving and not waits:          # the first wait for the saves outside a save: the loop's last
            waits.append(os.kill(os.getpid(), signal.SIGTERM))
        return check_saved(manager)

    def marked_save(*args, **kwargs):
        saving.append(True)
        try:
            return save(*args, **kwargs)
        finally:
            saving.pop()
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "check_saved", signalled_as_it_waits)
        m.setattr(checkpoint, "save", marked_save)
        with pytest.raises(Interrupted, match=rf"\(SIGTERM\) in epoch 2 after batch {E}/{E}; saved step "
                                              rf"{2 * E} in .*\. Nothing is left to train\.$"):
            fit(TINY.replace(epochs=2), data, tmp_path, devices=1, log=None)
    assert not stops.ended() and stops.stopping()
    assert [r["epoch"] for r in metrics.MetricsLog(tmp_path / metrics.FILENAME).read()] == [1, 2]
    assert checkpoint.restore(tmp_path).step == 2 * E
    stops.stop_handled()
    assert fit(TINY.replace(epochs=2), data, tmp_path, devices=1, log=None).history     # trained to its end
    assert stops.ended() and not stops.stopping()
    stops.stop_handled()
    assert not stops.ended()
    fit(TINY.replace(epochs=1), data, tmp_path / "new", devices=1, log=None)
    assert stops.ended()
    stops.stop_handled()


@pytest.mark.parametrize("nohup", [False, True])
def test_a_closed_terminal_s_sighup_saves_and_stops_the_run_unless_nohup_ignores_it(data, tmp_path, nohup):
    """SIGHUP killed the run, losing the epochs since its last checkpoint; now it stops as SIGTERM does.
    Under ``nohup`` (SIGHUP ignored) it stays ignored: the run trains on."""
    def hang_up(done, total, record):
        if done == STEPS_PER_CALL:
            os.kill(os.getpid(), signal.SIGHUP)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN if nohup else signal.SIG_DFL)
    try:
        if nohup:
            assert fit(TINY.replace(epochs=1), data, tmp_path, devices=1, log=None, progress=hang_up).history
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            return
        with pytest.raises(Interrupted, match=r"Stopped by signal 1 \(SIGHUP\) in epoch 1 after batch "
                                              rf"{STEPS_PER_CALL}/{E}; saved step {STEPS_PER_CALL}") as e:
            fit(TINY.replace(epochs=1), data, tmp_path, devices=1, log=None, progress=hang_up)
        assert e.value.signum == signal.SIGHUP and checkpoint.steps(tmp_path) == [STEPS_PER_CALL]
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL             # put back
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_run_whose_workdir_is_moved_stops_before_writing_again(data, tmp_path):
    """It wrote on at the old path: a new workdir of a stray metrics.jsonl, and a save that failed."""
    def move(done, total, record):
        if done == E + STEPS_PER_CALL:                  # mid-epoch 2, once epoch 1's checkpoint is whole
            for _ in range(400):                        # (orbax saves in the background)
                if checkpoint.steps(tmp_path / "w") == [E]:
                    break
                time.sleep(0.01)
            (tmp_path / "w").rename(tmp_path / "moved")
    moved = rf"writing nothing more \(its last checkpoint: step {E}\)"
    with pytest.raises(workdir.WorkdirError, match=moved):
        fit(TINY.replace(epochs=3), data, tmp_path / "w", devices=1, log=None, progress=move,
            checkpoint_every=1)
    assert not (tmp_path / "w").exists() and checkpoint.steps(tmp_path / "moved") == [E]
    assert [r["epoch"] for r in metrics.MetricsLog(tmp_path / "moved" / metrics.FILENAME).read()] == [1]


@pytest.mark.slow
def test_a_loop_of_ones_own_with_dropout_key_trains_as_fit_does(data, tmp_path):
    """The README's "a loop of your own" (loop.run's docstring): fit's step is ``train_windows`` with
    ``rng=dropout_key(config)`` (without it the same loop trained without dropout, whatever the config
    said)."""
    config = TINY.replace(epochs=1, num_layers=2, dropout=0.5)
    assert train.dropout_key(config.replace(dropout=0.0)) is None

    def own(workdir, rng):
        with planned(config, data, workdir, devices=1) as p:
            state = create_train_state(config, len(data.vocab))
            return loop.run(p, data, state, functools.partial(train.train_windows, rng=rng), train.eval_steps)
    fitted, same = fit(config, data, tmp_path / "fit", devices=1, log=None), own(tmp_path / "own",
                                                                                 train.dropout_key(config))
    np.testing.assert_array_equal(*(jax.flatten_util.ravel_pytree(r.state.params)[0] for r in (fitted, same)))
    assert same.history[0]["train_loss"] == fitted.history[0]["train_loss"]


def test_a_step_or_evaluation_of_another_signature_or_a_closed_plan_is_one_sentence(data, tmp_path):
    """rnnjax.train's per-batch functions given to loop.run raised JAX's TypeError from inside pmap (leaving
    the workdir made) or an unpacking error from inside the model; a plan whose block had ended said the
    workdir "was moved, removed or emptied"."""
    config = TINY.replace(epochs=1)
    state = create_train_state(config, len(data.vocab))
    step_is = (r"^loop.run calls its step as step\(state, tokens, windows, axis_name\), and "
               r"rnnjax.train.train_step is not that: give rnnjax.train.train_windows\.$")
    evaluate_is = (r"^loop.run calls its evaluate as evaluate\(state, batches, axis_name\), a stack of "
                   r"batches, and rnnjax.train.eval_step is not that: give rnnjax.train.eval_steps\.$")
    for step, evaluate, message in [
            (train.train_step, train.eval_steps, step_is),
            (functools.partial(train.train_steps, rng=None), train.eval_steps, "train_steps is not that"),
            (train.train_windows, train.eval_step, evaluate_is)]:
        with planned(config, data, tmp_path / "w", devices=1) as p:
            with pytest.raises(ValueError, match=message):
                loop.run(p, data, state, step, evaluate)
    assert not any((tmp_path / "w" / name).exists() for name in (checkpoint.SUBDIR, metrics.FILENAME))
    with pytest.raises(ValueError, match=r"^loop.run trains a plan only inside the block of rnnjax.start."
                                         r"planned that made it, which holds the workdir's lock\.$"):
        loop.run(p, data, state, train.train_windows, train.eval_steps)


@pytest.mark.parametrize("devices", [pytest.param(n, marks=pytest.mark.cpu_devices(n)) for n in (1, 2)])
def test_a_step_of_ones_own_whose_metrics_cannot_be_logged_is_one_sentence_before_any_step(data, tmp_path,
                                                                                           devices):
    """A metric of two numbers a step, or metrics in a list, failed in Python after the epoch's steps,
    nothing saved; a step without axis_name, over two devices, failed inside pmap."""
    config = TINY.replace(epochs=1)

    def pair(state, tokens, windows, axis_name=None):
        state, m = train.train_windows(state, tokens, windows, axis_name)
        return state, {**m, "norms": jnp.stack([m["grad_norm"], m["grad_norm"]], -1)}

    def listed(state, tokens, windows, axis_name=None):
        state, m = train.train_windows(state, tokens, windows, axis_name)
        return state, [m["loss_sum"], m["count"]]

    def summed(state, tokens, windows, axis_name=None):     # over the call: it failed after the epoch too
        state, m = train.train_windows(state, tokens, windows, axis_name)
        return state, jax.tree.map(jnp.sum, m)

    def param_norm(state, tokens, windows, axis_name=None):     # of the state returned: one for the call
        state, m = train.train_windows(state, tokens, windows, axis_name)
        return state, {**m, "param_norm": optax.tree.norm(state.params)}

    def state_only(state, tokens, windows, axis_name=None):     # over devices: a TypeError as it was checked
        return train.train_windows(state, tokens, windows, axis_name)[0]

    def single(state, tokens, windows):
        return train.train_windows(state, tokens, windows)
    n = STEPS_PER_CALL          # a call's steps, on each device
    cases = [(pair, rf"^The step's metrics must each be one number a step, the call's steps on a first axis "
                    rf"as train_windows stacks them \(their epoch means are logged\); 'norms' \(shape \({n}, "
                    r"2\)\) is not: one a step"),
             (summed, r"^The step's metrics must each be one number a step, .*\); 'count' \(shape \(\)\), "
                      r"'grad_norm' \(shape \(\)\), 'loss_sum' \(shape \(\)\) are not: .* own key\."),
             (param_norm, r"'param_norm' \(shape \(\)\) is not: one a step, .* or given its own key \(one "
                          r"number for the call, as of the state it returns: "
                          r"jnp\.full_like\(metrics\['loss_sum'\], x\) gives it each step\)\."),
             (listed, r"^loop.run's step returns \(state, metrics\), metrics a dict holding loss_sum and "
                      r"count a step \(as rnnjax.train.train_step's\); its metrics are a list\."),
             (state_only, r"^loop.run's step returns \(state, metrics\), .*; it returns a TrainState\.")]
    cases += [(single, r"^loop.run calls its step as step\(state, tokens, windows, axis_name\), over "
                       r"several devices with an axis_name .* and single takes no axis_name\.$")]
    cases = cases if devices > 1 else cases[:5]
    for step, message in cases:
        called = []
        with planned(config, data, tmp_path / step.__name__, devices=devices) as p:
            state = create_train_state(config, len(data.vocab))
            with pytest.raises(ValueError, match=message):
                loop.run(p, data, state, step, train.eval_steps, progress=lambda *a: called.append(a))
        assert called == [] and checkpoint.steps(tmp_path / step.__name__) == []


def test_an_epoch_is_calls_of_steps_per_call_the_last_taking_what_is_left_along():
    """An epoch of under twice ``STEPS_PER_CALL`` steps is one call (one program compiled); a longer one's
    calls have two lengths at most."""
    calls = {n: [len(c) for c in loop._chunks(iter(range(n)), STEPS_PER_CALL)]
             for n in (0, 9, 10, 19, 20, 23, 61)}
    assert calls == {0: [], 9: [9], 10: [10], 19: [19], 20: [10, 10], 23: [10, 13], 61: [10] * 5 + [11]}


@pytest.mark.cpu_devices(2)
def test_the_docstring_s_loop_of_ones_own_runs_as_written_and_trains_as_fit_does(data, tmp_path):
    import rnnjax
    [example] = re.findall(r"::\n\n((?:    .*\n|\n)+)", loop.__doc__)
    config = TINY.replace(epochs=1, num_layers=2, dropout=0.5)
    scope = {"rnnjax": rnnjax, "config": config, "data": data, "workdir": tmp_path / "own"}
    exec(textwrap.dedent(example), scope)
    fitted = fit(config, data, tmp_path / "fit", log=None)
    np.testing.assert_array_equal(*(jax.flatten_util.ravel_pytree(r.state.params)[0]
                                    for r in (fitted, scope["result"])))


@pytest.mark.slow
def test_a_step_giving_train_step_no_rng_under_dropout_says_it_trains_without(data, tmp_path):
    """A run of fit's resumed by loop.run with train_windows bare, or a step of one's own passing no rng,
    trained without dropout, its config.json saying 0.3, and nothing said."""
    config = TINY.replace(epochs=1, num_layers=2, dropout=0.3)

    def said(step, where, config=config, log=True):
        lines = []
        with planned(config, data, tmp_path / where, devices=1) as p:
            state = create_train_state(config, len(data.vocab))
            loop.run(p, data, state, step, train.eval_steps, log=lines.append if log else None)
        return [line for line in lines if "dropout" in line]
    warning = ("warning: the run's dropout is 0.3 and its step gives train_step no rng: it trains without "
               "dropout (rng=rnnjax.train.dropout_key(config) turns it on)")
    assert said(train.train_windows, "bare") == [warning]
    assert said(lambda s, t, w, axis_name=None: train.train_windows(s, t, w, axis_name), "own") == [warning]
    assert said(functools.partial(train.train_windows, rng=train.dropout_key(config)), "keyed") == []
    assert said(train.train_windows, "no dropout", config.replace(dropout=0.0)) == []
    with pytest.warns(UserWarning, match=rf"^{re.escape(warning.removeprefix('warning: '))}\.$"):
        said(train.train_windows, "warned", log=False)
