import copy
import functools
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY as SMALL
from rnnjax import loop, runs, state as state_lib, train
from rnnjax.config import Config
from rnnjax.data import Batch, TimeMachine
from rnnjax.parallel import DataParallel
from rnnjax.state import create_train_state
from rnnjax.train import (NonFiniteLoss, eval_step, eval_steps, fit, train_step, train_steps,
                          train_windows)


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.mark.parametrize("scale", [0.01, 100.0])
def test_clip_is_d2l_formula(scale):
    """optax's chain equals d2l's ``g * min(1, clip / ||g||)`` followed by SGD."""
    grads = {"a": jnp.arange(6.0).reshape(2, 3) * scale, "b": jnp.ones(4) * scale}
    params = jax.tree.map(jnp.zeros_like, grads)
    config = Config(lr=0.5, clip=1.0)
    tx = state_lib.make_optimizer(config)
    updates, _ = tx.update(grads, tx.init(params), params)
    norm = math.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads)))
    factor = min(1.0, config.clip / norm)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
        np.testing.assert_allclose(u, -config.lr * g * factor, rtol=1e-6)


def test_train_step_is_pure_and_deterministic(small_data):
    state = create_train_state(SMALL, len(small_data.vocab))
    before = host(state)
    batch = next(small_data.train_batches(0))
    step = jax.jit(train_step)
    s1, m1 = step(state, batch)
    s2, m2 = step(state, batch)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(host(state))):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves((s1, m1)), jax.tree.leaves((s2, m2))):
        np.testing.assert_array_equal(a, b)
    assert int(s1.step) == 1
    assert not np.array_equal(s1.params["output_layer"]["kernel"], before.params["output_layer"]["kernel"])


def test_train_steps_is_train_step_in_sequence(small_data):
    state = create_train_state(SMALL, len(small_data.vocab))
    batches = list(small_data.train_batches(0))[-3:]              # the last one padded
    scanned, stacked_metrics = jax.jit(train_steps)(state, DataParallel.create(1).shard_stack(batches))
    step = jax.jit(train_step)
    for i, batch in enumerate(batches):
        state, m = step(state, batch)
        for key in m:
            np.testing.assert_allclose(stacked_metrics[key][i], m[key], rtol=1e-6)
    assert int(scanned.step) == int(state.step) == 3
    for a, b in zip(jax.tree.leaves(scanned.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_train_windows_cut_on_the_device_train_as_the_batches(small_data):
    state = create_train_state(SMALL, len(small_data.vocab))
    dp = DataParallel.create(1)
    windows = list(small_data.train_windows(1))[-3:]              # the last one padded
    got = jax.jit(train_windows)(state, dp.replicate(small_data.tokens), dp.shard_stack(windows))
    want = jax.jit(train_steps)(state, dp.shard_stack(list(small_data.train_batches(1))[-3:]))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


def test_first_step_metrics(small_data):
    """Golden first step: at init the logits are small, so the loss is about log V."""
    state = create_train_state(SMALL, len(small_data.vocab))
    batch = next(small_data.train_batches(0))
    _, m = jax.jit(train_step)(state, batch)
    loss = float(m["loss_sum"]) / float(m["count"])
    assert float(m["count"]) == SMALL.batch_size * SMALL.num_steps
    assert abs(loss - math.log(len(small_data.vocab))) < 0.2
    assert 0 < float(m["grad_norm"]) < 10


def test_padding_rows_change_nothing(small_data):
    state = create_train_state(SMALL, len(small_data.vocab))
    full = next(small_data.train_batches(0))
    mask = np.r_[np.ones(5), np.zeros(11)].astype(np.float32)
    garbage = np.random.default_rng(0).integers(0, len(small_data.vocab), full.X.shape).astype(np.int32)
    padded = Batch(np.where(mask[:, None] > 0, full.X, garbage), np.where(mask[:, None] > 0, full.Y, garbage),
                   mask)
    real = Batch(full.X[:5], full.Y[:5], np.ones(5, np.float32))
    s_pad, m_pad = jax.jit(train_step)(state, padded)
    s_real, m_real = jax.jit(train_step)(state, real)
    assert float(m_pad["count"]) == float(m_real["count"]) == 5 * SMALL.num_steps
    np.testing.assert_allclose(m_pad["loss_sum"], m_real["loss_sum"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s_pad.params), jax.tree.leaves(s_real.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    e_pad, e_real = eval_step(state, padded), eval_step(state, real)
    np.testing.assert_allclose(e_pad["loss_sum"], e_real["loss_sum"], rtol=1e-6)


def test_eval_steps_sums_eval_step_over_a_stack_of_batches(small_data):
    state = create_train_state(SMALL, len(small_data.vocab))
    batches = list(small_data.val_batches())          # 50 windows: 4 batches, the last one padded
    got = jax.jit(eval_steps)(state, DataParallel.create(1).shard_stack(batches))
    each = [jax.jit(eval_step)(state, b) for b in batches]
    assert float(got["count"]) == SMALL.num_val * SMALL.num_steps
    np.testing.assert_allclose(got["loss_sum"], sum(float(e["loss_sum"]) for e in each), rtol=1e-6)


@pytest.mark.parametrize("name, mine, called", [
    ("train_step", lambda state, batch, axis_name=None: None, "train_step(state, batch, axis_name, rng)"),
    ("train_step", functools.wraps(train.train_step)(lambda state, batch, axis_name=None: None),
     "train_step(state, batch, axis_name, rng)"),      # its signature read, not the one it wraps
    ("eval_step", lambda state: None, "eval_step(state, batch)")])
def test_a_step_of_ones_own_that_cannot_be_called_as_rnnjax_calls_it_is_one_sentence(
        small_data, tmp_path, monkeypatch, name, mine, called):
    """As the module's docstring had it, without rng: a TypeError from deep inside the trace."""
    monkeypatch.setattr(train, name, mine)
    for f in (fit, lambda *a, **k: runs.fit_runs([SMALL, SMALL.replace(seed=1)], *a[1:], **k)):
        with pytest.raises(TypeError, match=rf"^rnnjax\.train\.{name}, one's own, is called as "
                                            rf"{re.escape(called)}, which {mine.__name__} cannot take "
                                            r"\(.*\): take the arguments of rnnjax's own\.$"):
            f(SMALL, small_data, tmp_path / "w", devices=1, log=None)
    assert not (tmp_path / "w").exists()


def test_fit_needs_validation_windows(make_text, tmp_path):
    data = TimeMachine(16, 8, 200, 0, text=make_text(5000))
    with pytest.raises(ValueError, match="num_val >= 1"):
        fit(SMALL, data, tmp_path, devices=1)
    assert not any(tmp_path.iterdir())


def test_fit_is_deterministic_under_a_seed(small_data, make_text, tmp_path):
    a = fit(SMALL, small_data, tmp_path / "a", devices=1)
    b = fit(SMALL, small_data, tmp_path / "b", devices=1)
    assert [r["val_ppl"] for r in a.history] == [r["val_ppl"] for r in b.history]
    assert [r["train_ppl"] for r in a.history] == [r["train_ppl"] for r in b.history]
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
        np.testing.assert_array_equal(x, y)
    other = SMALL.replace(seed=1)
    data1 = TimeMachine(16, 8, 200, 50, text=make_text(5000), seed=1)
    c = fit(other, data1, tmp_path / "c", devices=1)
    assert [r["val_ppl"] for r in c.history] != [r["val_ppl"] for r in a.history]


def test_fit_writes_one_metrics_record_per_epoch(small_data, tmp_path):
    result = fit(SMALL, small_data, tmp_path, devices=1)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    for r in result.history:
        assert {"epoch", "step", "train_ppl", "val_ppl", "seconds"} <= set(r) and "run" not in r
        assert (r["seed"], r["lr"], r["clip"]) == (SMALL.seed, SMALL.lr, SMALL.clip)     # as runs' records
        assert math.isclose(r["val_ppl"], math.exp(r["val_loss"]))
        assert math.isclose(2 ** r["val_bpc"], r["val_ppl"])
        assert math.isclose(2 ** r["train_bpc"], r["train_ppl"])
    assert result.history[-1]["step"] == 3 * small_data.num_batches(True) == int(result.state.step)


def test_non_finite_loss_stops_with_epoch_and_step(small_data, tmp_path):
    params = create_train_state(SMALL, len(small_data.vocab)).params
    params["output_layer"]["bias"] = params["output_layer"]["bias"].at[3].set(jnp.nan)
    said = (r"^The training loss is nan at epoch 1, step 1 of 13, the run's first, of its starting "
            r"parameters: the parameters it starts from \(fit's params, or the cell's initialization\) or "
            r"the cell's step give it, not the learning rate; it stopped without saving\.$")   # "smaller lr"
    with pytest.raises(NonFiniteLoss, match=said):
        fit(SMALL, small_data, tmp_path, devices=1, params=params)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_short_real_run_beats_unigram(real_text_path, tmp_path):
    data = TimeMachine(1024, 32, path=real_text_path)
    counts = np.bincount(data.corpus[:10000 + 32], minlength=len(data.vocab)) + 1e-9
    p = counts / counts.sum()
    unigram_ppl = math.exp(-(p * np.log(p)).sum())
    assert 14 < unigram_ppl < 20
    result = fit(Config(epochs=15), data, tmp_path, devices=1)
    ppl = [r["val_ppl"] for r in result.history]
    assert ppl[-1] < 0.75 * unigram_ppl
    assert ppl[-1] < ppl[0]


def test_fit_starts_from_given_params_and_leaves_them_valid(small_data, tmp_path):
    vocab_size = len(small_data.vocab)
    params = create_train_state(SMALL, vocab_size).params
    before = jax.tree.map(jnp.copy, params)   # no host view: one would keep XLA from donating params
    default = fit(SMALL, small_data, tmp_path / "default", devices=1)
    given = fit(SMALL, small_data, tmp_path / "given", params=params, devices=1)
    assert [r["val_ppl"] for r in given.history] == [r["val_ppl"] for r in default.history]
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(params)):   # fit donated a copy
        assert not b.is_deleted()
        np.testing.assert_array_equal(a, b)
    halved = fit(SMALL, small_data, tmp_path / "halved", devices=1,
                 params=jax.tree.map(lambda p: p / 2, params))
    assert halved.history[0]["train_ppl"] != default.history[0]["train_ppl"]


def test_fit_rejects_params_of_another_model(small_data, tmp_path):
    other = create_train_state(Config(num_hiddens=8), len(small_data.vocab)).params
    with pytest.raises(ValueError, match=r"do not fit the config \(cell 'rnn', num_hiddens=16"):
        fit(SMALL, small_data, tmp_path, params=other, devices=1)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("cast,message", [
    (jnp.bfloat16, r"\['output_layer'\]\['bias'\] is bfloat16, expected float32; keep float32 parameters: "
                   r"Config.compute_dtype='bfloat16' casts them for the matmuls\.$"),
    (jnp.int32, r"is int32, expected float32")], ids=["bfloat16", "int32"])
def test_fit_refuses_params_of_another_dtype_before_anything_is_written(small_data, tmp_path, cast, message):
    params = jax.tree.map(lambda x: x.astype(cast), create_train_state(SMALL, len(small_data.vocab)).params)
    with pytest.raises(ValueError, match=message):
        fit(SMALL, small_data, tmp_path / "w", params=params, devices=1, log=None)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("kwargs,message", [
    ({"checkpoint_every": 0}, r"^checkpoint_every must be a whole number of epochs, at least 1, got 0\.$"),
    ({"checkpoint_every": 2.0}, "checkpoint_every must be a whole number of epochs, at least 1, got 2.0"),
    ({"checkpoint_every": True}, "checkpoint_every must be a whole number of epochs, at least 1, got True"),
    ({"keep": -1}, r"^keep must be a whole number of checkpoints, at least 1, got -1\.$"),
    ({"keep": 0}, "keep must be a whole number of checkpoints, at least 1, got 0"),
    ({"keep": "3"}, "keep must be a whole number of checkpoints, at least 1, got '3'"),
    ({"keep": np.bool_(True)}, "keep must be a whole number of checkpoints, at least 1, got np.True_")])
def test_fit_refuses_checkpoint_every_or_keep_before_any_work(small_data, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit(SMALL, small_data, tmp_path / "w", devices=1, log=None, **kwargs)
    assert not (tmp_path / "w").exists()


def test_keep_as_a_0_d_array_keeps_that_many(small_data, tmp_path):
    """Taken as the int it holds: orbax's policy got the array, and failed the second save."""
    from rnnjax import checkpoint
    fit(SMALL.replace(epochs=2), small_data, tmp_path, devices=1, log=None, checkpoint_every=jnp.array(1),
        keep=jnp.array(1))
    assert checkpoint.steps(tmp_path) == [26]


def test_params_given_to_a_run_that_resumes_are_not_used_and_its_log_says_so(small_data, tmp_path):
    first = fit(SMALL.replace(epochs=1), small_data, tmp_path, devices=1, log=None,
                checkpoint_every=np.int64(1), keep=jnp.int32(2))        # NumPy's and JAX's integers
    zeros = jax.tree.map(jnp.zeros_like, first.state.params)
    lines = []
    resumed = fit(SMALL.replace(epochs=2), small_data, tmp_path, devices=1, params=zeros, log=lines.append)
    unused = ("; the params given are not used: the run resumes from its checkpoint (a new workdir starts "
              "from them)")
    assert lines[0].startswith("resuming from step ") and lines[0].endswith(unused)
    assert resumed.history[0] == first.history[0] and resumed.state.step == 2 * first.state.step
    lines.clear()
    fit(SMALL.replace(epochs=3), small_data, tmp_path, devices=1, log=lines.append)
    assert lines[0].startswith("resuming from step ") and "params given" not in lines[0]


FAMILY = {"lstm": SMALL.replace(cell="lstm", epochs=1),
          "deep gru, dropout": SMALL.replace(cell="gru", num_layers=2, dropout=0.3, epochs=1)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILY))
@pytest.mark.cpu_devices(2)
def test_every_cell_and_depth_trains_resumes_exactly_and_restores(name, small_data, tmp_path):
    from rnnjax import checkpoint
    config = FAMILY[name]
    straight = fit(config.replace(epochs=2), small_data, tmp_path / "straight", devices=2, log=None)
    assert straight.history[-1]["train_ppl"] < straight.history[0]["train_ppl"]
    fit(config, small_data, tmp_path / "resumed", devices=2, log=None)
    resumed = fit(config.replace(epochs=2), small_data, tmp_path / "resumed", devices=2, log=None)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(resumed.history) == strip(straight.history)                    # bit for bit
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state), strict=True):
        np.testing.assert_array_equal(a, b)
    run = checkpoint.restore(tmp_path / "resumed")
    assert run.config == config.replace(epochs=2)
    from rnnjax.generate import predict
    from rnnjax.state import make_model
    model = make_model(run.config, len(small_data.vocab))
    assert run.predict("the", 12) == predict(model, straight.state.params, small_data.vocab, "the", 12)


@pytest.mark.slow
def test_dropout_changes_training_and_is_off_for_validation(small_data, tmp_path):
    config = SMALL.replace(cell="gru", num_layers=2, epochs=1)
    without = fit(config, small_data, tmp_path / "a", devices=1, log=None)
    with_dropout = fit(config.replace(dropout=0.5), small_data, tmp_path / "b", devices=1, log=None)
    assert with_dropout.history[0]["train_loss"] != without.history[0]["train_loss"]
    state = with_dropout.state
    batches = DataParallel.create(1).shard_stack(small_data.val_batches())
    first, second = jax.jit(eval_steps)(state, batches), jax.jit(eval_steps)(state, batches)
    np.testing.assert_array_equal(first["loss_sum"], second["loss_sum"])
    np.testing.assert_allclose(float(first["loss_sum"]) / float(first["count"]),
                               with_dropout.history[0]["val_loss"], rtol=1e-6)


def test_a_dropout_key_of_another_kind_is_one_sentence(small_data):
    """``rng=0`` or three words failed in JAX's words, naming its PRNG implementations' internals."""
    config = SMALL.replace(num_layers=2, dropout=0.3)
    state = create_train_state(config, len(small_data.vocab))
    batch = next(small_data.train_batches(0))
    for key in (jax.random.PRNGKey(0), jax.random.key(0), train.dropout_key(config)):
        jax.eval_shape(functools.partial(train_step, rng=key), state, batch)
    for key, said in ((0, "int of shape ()"), (jnp.zeros(3, jnp.uint32), "uint32 of shape (3,)"),
                      (np.zeros(2, np.int32), "int32 of shape (2,)")):
        with pytest.raises(ValueError, match=r"^train_step's rng is a dropout key \(rnnjax\.train\."
                                             r"dropout_key\(config\), jax\.random\.PRNGKey\(seed\)\): two "
                                             rf"uint32 words, not {re.escape(said)}\."):
            jax.eval_shape(functools.partial(train_step, rng=key), state, batch)


def test_bidirectional_language_model_is_refused_before_anything_is_written(small_data, tmp_path):
    with pytest.raises(ValueError, match=r"bidirectional RNN \(bidirectional=True\) cannot be trained as a "
                                         "language model: its reverse direction reads the characters it is "
                                         "asked to predict"):
        fit(SMALL.replace(cell="gru", bidirectional=True), small_data, tmp_path / "run", devices=1)
    assert not (tmp_path / "run").exists()


def test_fit_and_fit_runs_refuse_an_empty_workdir_and_write_nothing(small_data, tmp_path, monkeypatch):
    """It trained into the current folder (which restore('') refuses to read)."""
    monkeypatch.chdir(tmp_path)
    said = r"^workdir is empty \(''\); give the run a folder of its own \('\.' for this one\)\.$"
    with pytest.raises(ValueError, match=said):
        fit(SMALL, small_data, "", devices=1, log=None)
    with pytest.raises(ValueError, match=said):
        runs.fit_runs([SMALL, SMALL.replace(seed=1)], small_data, "", devices=1, log=None)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("config, data, workdir, message", [
    (SMALL, "data", None, r"^workdir must be a path \(str or os.PathLike\), got None\.$"),
    (SMALL.to_json(), "data", "w", r"^config must be an rnnjax.Config \(Config.from_json reads one from "),
    (SMALL, None, "w", r"^data must be an rnnjax.data.WindowedText"),
])
def test_fit_refuses_arguments_of_the_wrong_type_before_any_work(config, data, workdir, message, small_data,
                                                                 tmp_path, monkeypatch):
    """``arguments.check_types``' sentences (test_arguments.py), first: before the params are checked against
    data."""
    monkeypatch.chdir(tmp_path)
    params = create_train_state(SMALL, len(small_data.vocab)).params
    with pytest.raises(TypeError, match=message):
        fit(config, small_data if data == "data" else data, workdir, devices=1, log=None, params=params)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("progress, log, message", [
    (3, None, r"^progress must be a function or None, got an int\.$"),
    (None, "print", r"^log must be a function or None, got a str\.$"),
    (lambda record: None, None,
     r"^progress is called as progress\(done_steps, total_steps, record_or_None\); <lambda>\(record\) cannot "
     r"take that\.$"),
    (None, lambda: None, r"^log is called as log\(line\); <lambda>\(\) cannot take that\.$")])
def test_fit_and_fit_runs_refuse_callbacks_that_are_not_functions_before_the_workdir(small_data, tmp_path,
                                                                                     progress, log, message):
    """Found at the first call before, with the workdir made (``log``: holding only its lock file; a
    ``progress`` of another signature after the first call had trained)."""
    with pytest.raises(TypeError, match=message):
        fit(SMALL, small_data, tmp_path / "one", devices=1, progress=progress, log=log)
    with pytest.raises(TypeError, match=message):
        runs.fit_runs([SMALL], small_data, tmp_path / "runs", devices=1, progress=progress, log=log)
    assert not os.listdir(tmp_path)
    off = fit(SMALL.replace(epochs=1), small_data, tmp_path / "off", devices=1, progress=False, log=False)
    assert len(off.history) == 1                          # False is off, as None is


def test_data_whose_ids_leave_its_vocabulary_is_refused_before_the_workdir(small_data, tmp_path):
    """Each id past the vocabulary one-hots to nothing: the loss turned NaN and the run said it diverged."""
    for bad in (len(small_data.vocab), -1):
        data = copy.copy(small_data)
        data.corpus = small_data.corpus.copy()
        data.corpus[5] = bad
        with pytest.raises(ValueError, match=rf"^data\.tokens holds the id {bad}, outside its vocabulary's "
                                             rf"{len(small_data.vocab)} tokens \(ids 0 to "):
            fit(SMALL, data, tmp_path / "w", devices=1, log=None)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("short", [0, SMALL.num_val])
def test_data_whose_windows_run_past_its_tokens_is_refused_before_the_workdir(small_data, tmp_path, short):
    """A WindowedText of one's own: it was an IndexError after the workdir (a gather on a device clamps)."""
    data = copy.copy(small_data)
    data.corpus = small_data.corpus[:len(small_data.tokens) - 1 - short]
    need = SMALL.num_train + SMALL.num_val + SMALL.num_steps
    with pytest.raises(ValueError, match=rf"^data\.tokens has {need - 1 - short} tokens, and its windows of "
                                         rf"num_steps \+ 1 = {SMALL.num_steps + 1} \(num_train "
                                         rf"{SMALL.num_train} and the validation windows\) need {need}\.$"):
        fit(SMALL, data, tmp_path / "w", devices=1, log=None)
    data = copy.copy(small_data)
    data.val_starts = lambda: np.array([-3, 5])                 # would wrap around to the text's end
    with pytest.raises(ValueError, match=r"^val_starts\(\) holds -3: a window starts at 0 or later\.$"):
        fit(SMALL, data, tmp_path / "w", devices=1, log=None)
    assert not os.listdir(tmp_path)


def test_epoch_lines_log_a_tenth_of_the_epochs_and_the_last():
    said = []
    line = train.epoch_lines(said.append, 25)
    for epoch in range(1, 26):
        line(epoch * 4, 100, None)                       # a call's: no record, no line
        line(epoch * 4, 100, {"epoch": epoch, "train_ppl": 9.876, "val_ppl": 1.5e6})
    assert said == [f"epoch {e}/25  step {4 * e}/100  train ppl 9.88  val ppl 1.5e+06"
                    for e in (2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25)]


def test_epoch_lines_of_runs_say_their_lowest_to_highest_perplexities():
    """Their mean was the line: one diverging run's 2.4e+47, three runs at 25-72 hidden."""
    said = []
    runs_ = [{"train_ppl": p, "val_ppl": v} for p, v in ((25.1, 30.0), (71.9, float("nan")), (2.4e47, None))]
    train.epoch_lines(said.append, 1)(4, 4, {"epoch": 1, "train_ppl": 8e46, "val_ppl": 50.0, "runs": runs_})
    assert said == ["epoch 1/1  step 4/4  train ppl 25.10 to 2.4e+47  val ppl 30.00 to inf  (3 runs)"]
    alike = [{"train_ppl": 9.876, "val_ppl": 10.0}] * 2
    train.epoch_lines(said.append, 1)(4, 4, {"epoch": 1, "train_ppl": 9.876, "val_ppl": 10.0, "runs": alike})
    assert said[-1] == "epoch 1/1  step 4/4  train ppl 9.88  val ppl 10.00  (2 runs)"
    one = {"epoch": 1, "train_ppl": 9.876, "val_ppl": 10.0, "runs": alike[1:]}
    train.epoch_lines(said.append, 1)(4, 4, one)
    assert said[-1].endswith("val ppl 10.00  (1 run)")       # the others stopped


def test_fit_and_fit_runs_log_epoch_lines_unless_given_a_progress_or_false(small_data, tmp_path, monkeypatch):
    """A notebook's fit said its start and nothing more until it returned."""
    config = SMALL.replace(epochs=2)

    def trained(kind, workdir, **kwargs):
        said = []
        if kind == "fit":
            fit(config, small_data, workdir, devices=1, log=said.append, **kwargs)
        else:
            runs.fit_runs([config, config.replace(seed=1)], small_data, workdir, devices=1, log=said.append,
                          **kwargs)
        return said
    for kind in ("fit", "runs"):
        said = trained(kind, tmp_path / kind)
        assert "new run" in said[0] and len(said) == 3
        assert [re.sub(r"  step .*", "", s) for s in said[1:]] == ["epoch 1/2", "epoch 2/2"]
    given, mine = [], (lambda done, total, record: None)
    monkeypatch.setattr(loop, "run", lambda *args, progress=None, **kwargs: given.append(progress))
    for kind in ("fit", "runs"):
        for k, progress in enumerate((False, mine)):      # passed on as they are, nothing of fit's own
            assert len(trained(kind, tmp_path / f"{kind}{k}", progress=progress)) == 1
    assert given == [False, mine] * 2
