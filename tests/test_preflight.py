"""What loop.run is given is checked before it writes anything (through fit and loop.run, as a researcher
meets the checks)."""

import os
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from conftest import TINY, small_text
from rnnjax import checkpoint, loop, metrics, preflight, runs, stored, train
from rnnjax.data import Batch, TimeMachine
from rnnjax.state import create_train_state
from rnnjax.train import fit


@pytest.fixture(scope="module")
def data():
    return TimeMachine(TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val, text=small_text(5000))


@pytest.mark.parametrize("returned, said", [
    (lambda m: {**m, "ppl": m["count"]},
     r"^An evaluation's own metrics are logged as val_<key> \(a <key>_sum as val_<key>, per token\), "
     r"and 'ppl' would be rnnjax's val_ppl: "),
    (lambda m: {**m, "per_batch": jnp.ones(3)}, r"one number an epoch .* 'per_batch' \(shape \(3,"),
    (lambda m: m["loss_sum"], r"^An evaluation must return a dict of 'loss_sum' and 'count' .* not a "),
    (lambda m: {**m, "nested": {"a": m["count"]}, "none": None},
     r"'nested' \(a dict\), 'none' \(None\) are not"),
    (lambda m: {**m, "pair": (m["count"], m["count"])}, r"'pair' \(a tuple\) is not"),
    (lambda m: {**m, 1: m["count"]},
     r"^An evaluation's metrics are named by strings, the keys of each epoch's record; 1 is not\."),
    (lambda m: {**m, "loss_sum": jnp.stack([m["loss_sum"]] * 2)}, r"'loss_sum' \(shape \(2,\)\) is not"),
])
def test_an_evaluation_returning_what_cannot_be_logged_is_refused_before_any_step(
        data, tmp_path, monkeypatch, returned, said):
    plain = train.eval_steps
    monkeypatch.setattr(train, "eval_steps", lambda *args, **kwargs: returned(plain(*args, **kwargs)))
    with pytest.raises(ValueError, match=said):
        fit(TINY.replace(epochs=1), data, tmp_path, devices=1, log=None)
    assert not (tmp_path / metrics.FILENAME).exists() and checkpoint.steps(tmp_path) == []


def test_an_eval_step_named_by_anything_but_strings_is_one_sentence_as_it_is_traced(data, monkeypatch):
    """The key added to eval_step, as a researcher adds one (fit traces eval_steps before any step): JAX's
    own sentence was of sorting dict keys."""
    plain = train.eval_step
    monkeypatch.setattr(train, "eval_step", lambda *args, **kwargs: {**plain(*args, **kwargs), 1: 0.0})
    state = create_train_state(TINY, len(data.vocab))
    batches = jax.tree.map(lambda *x: np.stack(x), *data.val_batches())
    with pytest.raises(ValueError, match=r"^eval_step's metrics are named by strings, the keys of each "
                                         r"epoch's record; 1 is not\."):
        # A function of its own: JAX would reuse a trace of eval_steps an earlier test in the process made.
        jax.eval_shape(lambda *args: train.eval_steps(*args), state, batches)


def test_a_step_s_metrics_must_each_be_one_number():
    preflight.check_step({"loss_sum": np.float32(1.0), "count": np.array(4.0), "grad_norm": 0.5})
    with pytest.raises(ValueError, match=r"; 'norms' \(shape \(3,\)\), 'g' \(shape \(1, 1\)\) are not: "):
        preflight.check_step({"loss_sum": np.float32(1.0), "norms": np.ones(3), "g": np.ones((1, 1))})


@pytest.mark.parametrize("name", ["step", "epoch", "lr", "train_loss", "seconds", "val_acc", "ppl_sum",
                                  "_sum"])
def test_a_step_s_metric_may_not_take_a_name_of_the_record_s_own(name):
    preflight.check_step({"loss_sum": np.float32(1.0), "count": np.array(4.0), "acc": 0.5, "step_size": 0.1,
                          "acc_sum": 1.0})
    logged = {"ppl_sum": " \\(as train_ppl\\)", "_sum": " \\(as train_\\)"}.get(name, "")
    with pytest.raises(ValueError, match=rf"^train_step's metrics are logged by their names in each "
                                         rf"epoch's record \(a <key>_sum as train_<key>, per token\), and "
                                         rf"'{name}'{logged} is the record's own \(epoch, "
                                         r"step, run, seed, lr, clip, stopped, seconds, train_loss, "
                                         r"train_ppl, train_bpc, val_\*\): name it otherwise\.$"):
        preflight.check_step({"loss_sum": np.float32(1.0), name: np.float32(1.0)})
    with pytest.raises(ValueError, match=r", and 'train_acc' and 'acc_sum' would both be train_acc: rename"):
        preflight.check_step({"train_acc": 1.0, "acc_sum": 1.0})


def test_metrics_named_by_anything_but_strings_are_one_sentence_not_jax_s():
    """Keys of mixed types made JAX's "Comparator raised exception while sorting pytree dictionary keys"."""
    with pytest.raises(ValueError, match=r"^train_step's metrics are named by strings, the keys of each "
                                         r"epoch's record; 1, None are not\.$"):
        preflight.check_step({"loss_sum": np.float32(1.0), 1: np.float32(1.0), None: np.float32(1.0)})


def test_an_evaluation_s_metrics_must_each_be_one_number_of_a_name_of_its_own():
    one = np.float32(1.0)
    preflight.check_evaluated({"loss_sum": one, "count": one, "hits": one, "right_sum": one})
    preflight.check_evaluated({"hits": np.ones(2)}, shape=(2,))                  # two runs trained together
    with pytest.raises(ValueError, match=r"one number an epoch \(logged as val_<key>\); 'hits' \(shape \(2,"):
        preflight.check_evaluated({"hits": np.ones(2)})
    with pytest.raises(ValueError, match=r", and 'ppl_sum', 'bpc' would be rnnjax's val_ppl: name them "
                                         r"otherwise\.$"):
        preflight.check_evaluated({"ppl_sum": one, "hits": one, "bpc": one})
    for name, logged in (("count_sum", "val_count"), ("_sum", "val_"), ("", "val_")):     # its count; none
        with pytest.raises(ValueError, match=rf", and '{name}' would be rnnjax's {logged}: name it "):
            preflight.check_evaluated({name: one})
    with pytest.raises(ValueError, match=r", and 'hits' and 'hits_sum' would both be val_hits: rename one"):
        preflight.check_evaluated({"hits": one, "hits_sum": one})


@pytest.mark.cpu_devices(2)
def test_an_evaluation_over_devices_is_checked_as_it_runs_with_their_axis(data, tmp_path, monkeypatch):
    """A metric summed over the devices (as eval_steps sums its own) is checked and logged as pmap runs it."""
    plain = train.eval_steps
    monkeypatch.setattr(train, "eval_steps", lambda state, batches, axis_name=None: {
        **plain(state, batches, axis_name), "devices": jax.lax.psum(1.0, axis_name)})
    [record] = fit(TINY.replace(epochs=1), data, tmp_path, devices=2, log=None).history
    assert record["val_devices"] == 2.0


def test_a_state_that_is_not_the_plans_is_refused_before_anything_is_written(data, tmp_path):
    """Another model's parameters would save checkpoints no restore reads; a fresh state in a resumed plan
    would count its steps again from 0 and save over none of the checkpoints it meets (lost training)."""
    from rnnjax.start import planned
    config, V = TINY.replace(epochs=1), len(data.vocab)

    def run_with(workdir, config, state):
        with planned(config, data, workdir, devices=1) as p:
            return loop.run(p, data, state(p), train.train_windows, train.eval_steps)
    new = tmp_path / "new"
    another = r"num_hiddens=16, .*\['output_layer'\]\['kernel'\] has shape \(32, 18\), expected \(16, 18\)\.$"
    with pytest.raises(ValueError, match=another):
        run_with(new, config, lambda p: create_train_state(config.replace(num_hiddens=32), V))
    with pytest.raises(ValueError, match=r"^The state is at step 7, the planned run at 0: a new run starts "
                                         r"at step 0 \(state\.replace\(step=0\)\)\.$"):
        run_with(new, config, lambda p: create_train_state(config, V).replace(step=7))
    with pytest.raises(ValueError, match=r"^loop.run trains a TrainState .*, not a dict\.$"):
        run_with(new, config, lambda p: {"params": create_train_state(config, V).params})
    assert not new.exists()                 # the workdir planned made is gone again, lock file and all

    done = fit(config, data, tmp_path / "old", devices=1, log=None)
    before = stored.steps(tmp_path / "old")
    longer = config.replace(epochs=2)
    with pytest.raises(ValueError, match=rf"^The state is at step 0, the planned run at {done.state.step}: "
                                         r"it resumes from .*old's checkpoint, whose state is the plan's"):
        run_with(tmp_path / "old", longer, lambda p: create_train_state(longer, V))
    assert stored.steps(tmp_path / "old") == before
    assert len((tmp_path / "old" / metrics.FILENAME).read_text().splitlines()) == 1
    two = [config, config.replace(seed=1)]
    with pytest.raises(ValueError, match=r"does not hold 2 runs' parameters stacked"):
        with planned(config, data, tmp_path / "runs", devices=1, runs=two) as p:
            loop.run(p, data, create_train_state(config, V), runs.train_runs, runs.eval_runs)
    # One run's states stacked: sgd's state without each run's lr and clip; the researcher was told to
    # name another optimizer.
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *[create_train_state(c, V) for c in two])
    with pytest.raises(ValueError, match=r"^The state's optimizer state is not the one optimizer='sgd' makes "
                                         r"for runs trained together, .*rnnjax.create_run_states\(configs, "):
        with planned(config, data, tmp_path / "runs", devices=1, runs=two) as p:
            loop.run(p, data, stacked, runs.train_runs, runs.eval_runs)
    adams = [c.replace(optimizer="adam") for c in two]        # runs' states, of another optimizer
    with pytest.raises(ValueError, match=r"^The state's optimizer state is not the one optimizer='sgd' "
                                         r"makes: the run records"):
        with planned(config, data, tmp_path / "runs", devices=1, runs=two) as p:
            loop.run(p, data, rnnjax.create_run_states(adams, V), runs.train_runs, runs.eval_runs)
    with planned(config, data, tmp_path / "runs", devices=1, runs=two) as p:     # as the docstring says
        ran = loop.run(p, data, rnnjax.create_run_states(two, V), runs.train_runs, runs.eval_runs)
    assert [r["seed"] for r in ran.history] == [0, 1]
    shutil.rmtree(tmp_path / "runs")
    assert sorted(os.listdir(tmp_path)) == ["old"]
    resumed = run_with(tmp_path / "old", longer, lambda p: p.state)           # the plan's own state trains on
    assert [r["epoch"] for r in resumed.history] == [1, 2]


@pytest.mark.cpu_devices(2)
def test_a_count_fixed_as_traced_that_is_one_devices_share_is_warned_of(tmp_path):
    """A count fixed as the step is traced (each device's rows times the steps) logged a perplexity the
    device count's power of the true one (140 for 13). Neither its trace nor its value tells it from a psum
    of a constant that counts a share of the tokens (JAX folds one into a constant): it is warned of, at
    the first call and the first validation, and trains; a count summed from the values is not."""
    from rnnjax import start

    def fixed(state, tokens, windows, axis_name=None):
        new, m = train.train_windows(state, tokens, windows, axis_name=axis_name)
        return new, {**m, "count": jnp.full_like(m["count"], windows.mask.shape[-1] * windows.num_steps)}
    config = TINY.replace(epochs=1, num_train=192, num_val=64)    # whole batches: a constant counts them all
    data = TimeMachine(config.batch_size, config.num_steps, config.num_train, config.num_val,
                       text=small_text(5000))
    half = sum(b.mask.sum() for b in data.val_batches()) * config.num_steps / 2

    def fixed_eval(state, batches, axis_name=None):
        return {**train.eval_steps(state, batches, axis_name), "count": jnp.float32(half)}
    for step, evaluate, said in [
            (fixed, train.eval_steps, r"^loop.run's step counts 64 tokens, a number fixed as it is traced, "
                                      r"where the global batch has 128: if that is one device's tokens, the "
                                      r"perplexity logged is the true one to the power 2; sum the count"),
            (train.train_windows, fixed_eval, r"^loop.run's evaluate counts 256 tokens, a number fixed as it "
                                              r"is traced, where the validation has 512: ")]:
        with start.planned(config, data, tmp_path / step.__name__, devices=2) as p:
            with pytest.warns(UserWarning, match=said) as caught:
                loop.run(p, data, create_train_state(config, len(data.vocab)), step, evaluate)
            assert caught[0].filename == __file__           # said at the caller's line, not rnnjax's
        lines = []
        with start.planned(config.replace(epochs=2), data, tmp_path / step.__name__, devices=2) as p:
            loop.run(p, data, p.state, step, evaluate, log=lines.append)     # resumed: said again, in its log
        assert len(lines) == 1 and lines[0].startswith("warning: loop.run's")

    def second_half(state, tokens, windows, axis_name=None):     # a count of half the tokens, summed
        b = windows.batch(tokens)
        half = b.X.shape[-1] // 2
        return train.train_steps(state, Batch(b.X[..., half:], b.Y[..., half:], b.mask), axis_name)

    def half_the_validation(state, batches, axis_name=None):
        return train.eval_steps(state, jax.tree.map(lambda x: x[:len(x) // 2], batches), axis_name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with start.planned(config, data, tmp_path / "halves", devices=2) as p:
            loop.run(p, data, create_train_state(config, len(data.vocab)), second_half, half_the_validation)


@pytest.mark.cpu_devices(2)
def test_a_step_or_evaluation_that_sums_nothing_over_the_devices_is_refused(data, tmp_path):
    """Each device trained a model of its own (one of them to NaN on a batch of padding alone), and the
    loss and validation logged were one device's, or NaN, with no error. A step is refused unless its
    parameters' updates (some of them: a frozen one needs no sum) and loss_sum and count follow from a sum
    over the devices; rnnjax's own functions are known by identity, not by name."""
    import functools

    from rnnjax import start

    def alone(state, tokens, windows, axis_name=None):           # axis_name not given on
        return train.train_windows(state, tokens, windows)

    def metrics_summed(state, tokens, windows, axis_name=None):
        state, m = train.train_windows(state, tokens, windows)
        return state, jax.tree.map(lambda x: jax.lax.psum(x, axis_name), m)

    def metrics_summed_by_hand(state, tokens, windows, axis_name=None):     # in a scan, as one writes it
        def one(state, batch):
            state, m = train.train_step(state, batch)
            return state, jax.tree.map(lambda x: jax.lax.psum(x, axis_name), m)
        return jax.lax.scan(one, state, windows.batch(tokens))

    def pmean_loss(state, tokens, windows, axis_name=None, summed=False):     # its gradients each device's
        def one(state, batch):
            def objective(params):
                s, count, ce = state.apply_fn({"params": params}, batch.X, batch.Y, batch.mask, method="loss")
                return (s if summed else jax.lax.pmean(s / count, axis_name)), (ce, count)
            (_, (ce, count)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
            m = {"loss_sum": jax.lax.psum(ce, axis_name), "count": jax.lax.psum(count, axis_name)}
            if summed:
                grads = jax.tree.map(lambda g: jax.lax.psum(g, axis_name) / m["count"], grads)
            return state.apply_gradients(grads=grads), m
        return jax.lax.scan(one, state, windows.batch(tokens))

    def by_summed_count(state, tokens, windows, axis_name=None):         # local gradients, global count
        def one(state, batch):
            def objective(params):
                s, count, ce = state.apply_fn({"params": params}, batch.X, batch.Y, batch.mask, method="loss")
                return s / jax.lax.psum(count, axis_name), (ce, count)
            (_, (ce, count)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
            m = {"loss_sum": jax.lax.psum(ce, axis_name), "count": jax.lax.psum(count, axis_name)}
            return state.apply_gradients(grads=grads), m
        return jax.lax.scan(one, state, windows.batch(tokens))

    def bias_of_its_own(state, tokens, windows, axis_name=None):        # a rule of its own, of the batch
        new, m = train.train_windows(state, tokens, windows, axis_name=axis_name)
        dense = new.params["output_layer"]
        dense = {**dense, "bias": dense["bias"] + 1e-3 * jnp.mean(windows.mask)}
        return new.replace(params={**new.params, "output_layer": dense}), m

    def own_eval(state, batches, axis_name=None):
        return train.eval_steps(state, batches)

    def local_metric(state, tokens, windows, axis_name=None):    # logged as the first device's
        new, m = train.train_windows(state, tokens, windows, axis_name=axis_name)
        return new, {**m, "rows": jnp.full_like(m["count"], 1.0) * jnp.sum(windows.mask, axis=-1)}

    def local_eval_metric(state, batches, axis_name=None):
        m = train.eval_steps(state, batches, axis_name)
        return {**m, "rows": jnp.sum(batches.mask)}

    every = "the gradients, loss_sum and count"
    config = TINY.replace(epochs=1)
    for step, evaluate, said in [
            (train.train_windows, own_eval, r"^loop.run's evaluate sums loss_sum and count over none of the "
                                            r"2 devices it runs on \(jax.lax.psum over its axis_name\): the "
                                            r"validation logged would be one device's share"),
            (alone, train.eval_steps, rf"^loop.run's step sums {every} over none of the devices it runs on "
                                      r"\(jax.lax.psum over its axis_name\): each would train a model of its "
                                      r"own, or log its own loss; give axis_name on"),
            (functools.wraps(train.train_windows)(alone), train.eval_steps, every),
            (metrics_summed, train.eval_steps, r"^loop.run's step sums the gradients over none"),
            (metrics_summed_by_hand, train.eval_steps, r"^loop.run's step sums the gradients over none"),
            (by_summed_count, train.eval_steps, r"^loop.run's step sums the gradients over none"),
            (local_metric, train.eval_steps,
             r"^loop.run's step's metric 'rows' is each device's own \(of its part of the batch, through no "
             r"collective\), and the first device's would be logged: combine it over axis_name"),
            (train.train_windows, local_eval_metric, r"^loop.run's evaluate's metric 'rows' is each"),
            (bias_of_its_own, train.eval_steps,
             r"^loop.run's step sums the gradients of \['output_layer'\]\['bias'\] over none of the devices"),
            (pmean_loss, train.eval_steps, r"^loop.run's step sums the gradients over none.* or psum them "
                                           r"\(the gradients: under pmap a pmean-ed loss's are each device's "
                                           r"own\)\.")]:
        with start.planned(config, data, tmp_path, devices=2) as p:
            with pytest.raises(ValueError, match=said):
                loop.run(p, data, create_train_state(config, len(data.vocab)), step, evaluate)
        assert checkpoint.steps(tmp_path) == [] and not (tmp_path / metrics.FILENAME).exists()

    def frozen_bias(state, tokens, windows, axis_name=None):    # of one's own, summed: it trains
        new, m = train.train_windows(state, tokens, windows, axis_name=axis_name)
        params = {**new.params, "output_layer": {**new.params["output_layer"],
                                                 "bias": state.params["output_layer"]["bias"]}}
        return new.replace(params=params), m
    with start.planned(config, data, tmp_path, devices=2) as p:
        state = create_train_state(config, len(data.vocab))
        result = loop.run(p, data, state, frozen_bias, train.eval_steps)
    assert checkpoint.steps(tmp_path) == [data.num_batches(True)]
    np.testing.assert_array_equal(result.state.params["output_layer"]["bias"],
                                  state.params["output_layer"]["bias"])

    with start.planned(config, data, tmp_path / "summed", devices=2) as p:    # its gradients psummed: trains
        summed = loop.run(p, data, state, functools.partial(pmean_loss, summed=True), train.eval_steps)
    plain = fit(config, data, tmp_path / "plain", devices=2, log=None)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
                 summed.state.params, plain.state.params)

    def probe(state, tokens, windows, axis_name=None):          # every parameter frozen: the loss measured
        _, m = train.train_windows(state, tokens, windows, axis_name=axis_name)
        return state.replace(step=state.step + windows.starts.shape[0]), m
    with start.planned(config, data, tmp_path / "probe", devices=2) as p:
        result = loop.run(p, data, state, probe, train.eval_steps)
    jax.tree.map(np.testing.assert_array_equal, result.state.params, state.params)


def test_a_step_returning_a_state_of_other_dtypes_is_refused_as_it_is_traced(data, tmp_path):
    """It failed at the next call, deep in the fused kernel (lax.dynamic_update_slice's dtypes)."""
    from rnnjax import start

    def halving(state, tokens, windows, axis_name=None):
        state, metrics = train.train_windows(state, tokens, windows, axis_name)
        return state.replace(params=jax.tree.map(lambda x: x.astype(jnp.bfloat16), state.params)), metrics
    config = TINY.replace(epochs=1)
    with start.planned(config, data, tmp_path, devices=1) as p:
        said = (r"^loop.run's step returns a state of other shapes or dtypes than it was given "
                r"\(.params\['\w+'\].* float32\[.*\] before, bfloat16\[.*\] after\): keep each as it was")
        with pytest.raises(ValueError, match=said):
            loop.run(p, data, create_train_state(config, len(data.vocab)), halving, train.eval_steps)
    assert checkpoint.steps(tmp_path) == []
