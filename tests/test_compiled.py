"""A run's compiled steps (``rnnjax.compiled``): a next run of the same step and settings in a process reuses
the latest runs', and a process training run after run keeps no more than theirs."""

import functools
import gc
import os

import jax
import jax.flatten_util
import numpy as np
import pytest

from rnnjax import loop, runs, train
from rnnjax.data import TimeMachine
from rnnjax.start import planned
from rnnjax.state import create_train_state
from rnnjax.train import fit

from conftest import TWO_CALLS as TINY, small_text


@pytest.fixture(scope="module")
def data():
    return TimeMachine(TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val, text=small_text(5000))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="counts the memory maps Linux lists")
@pytest.mark.parametrize("devices", [pytest.param(n, marks=pytest.mark.cpu_devices(n)) for n in (1, 2)])
def test_a_process_training_run_after_run_keeps_the_programs_of_its_latest_runs_only(data, tmp_path, devices):
    # Each run's compiled programs hold hundreds of memory maps, and the kernel allows a process 65530: a
    # process that kept them (pmap's cache, one of the step, one compiled step for every rate) crashed in
    # XLA after a few hundred runs.
    def maps():
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    def train(lr):
        fit(TINY.replace(epochs=1, lr=lr), data, tmp_path / str(lr), devices=devices, log=None)
        gc.collect()
    for lr in (1.0, 2.0, 3.0, 4.0, 5.0):        # the latest four kept (_kept), for a next run of each
        train(lr)
    before = maps()
    for lr in (6.0, 7.0):
        train(lr)
    assert maps() - before < 150        # kept, two runs' programs add about 700


def counted_traces(monkeypatch) -> list:
    """A list that grows by one as JAX traces train_windows' step (``train.train_step``, replaced)."""
    traced, plain = [], train.train_step

    def counted(*args, **kwargs):
        traced.append(1)
        return plain(*args, **kwargs)
    monkeypatch.setattr(train, "train_step", counted)
    return traced


@pytest.mark.slow
def test_a_next_fit_of_the_same_settings_reuses_its_compiled_steps(data, tmp_path, monkeypatch):
    traced = counted_traces(monkeypatch)

    def run(config, where):
        return fit(config, data, tmp_path / where, devices=1, log=None)
    config = TINY.replace(epochs=1)
    first = run(config, "a")
    assert traced
    count = len(traced)
    again = run(config.replace(seed=1), "b")            # another seed: the same programs
    resumed = run(config.replace(seed=1, epochs=2), "b")     # a resume
    assert len(traced) == count
    other = run(config.replace(lr=0.5), "c")            # another optimizer: its own
    assert len(traced) > count
    count = len(traced)
    jax.clear_caches()                                  # as JAX's own: traced afresh
    run(config, "e")
    assert len(traced) > count
    count = len(traced)
    with jax.threefry_partitionable(not jax.config.jax_threefry_partitionable):   # a flag of JAX's: its own
        run(config, "f")
    assert len(traced) > count
    monkeypatch.undo()
    jax.clear_caches()
    alone = fit(config.replace(seed=1, epochs=2), data, tmp_path / "d", devices=1, log=None)

    def flat(result):
        return jax.flatten_util.ravel_pytree(result.state.params)[0]
    assert not np.array_equal(flat(first), flat(again))
    np.testing.assert_array_equal(flat(resumed), flat(alone))    # as a run compiled for itself
    assert not np.array_equal(flat(other), flat(first))


@pytest.mark.slow
@pytest.mark.cpu_devices(2)
def test_runs_with_dropout_of_another_seed_reuse_the_program_their_key_its_input(data, tmp_path, monkeypatch):
    """The dropout key was a constant of the program: each seed compiled its own, in the process and past
    JAX's persistent cache."""
    traced = counted_traces(monkeypatch)
    config = TINY.replace(epochs=1, num_layers=2, dropout=0.3)

    def one(seed, where):
        return fit(config.replace(seed=seed), data, tmp_path / where, devices=2, log=None)

    def together(seeds, where):
        return runs.fit_runs([config.replace(seed=s) for s in seeds], data, tmp_path / where, devices=2,
                             log=None)
    first, count = one(1, "1"), len(traced)
    second = one(2, "2")
    assert len(traced) == count
    pair, count = together((1, 2), "12"), len(traced)
    other_pair = together((3, 4), "34")
    assert len(traced) == count
    monkeypatch.undo()
    jax.clear_caches()

    def flat(params):
        return jax.flatten_util.ravel_pytree(params)[0]
    assert not np.array_equal(flat(first.state.params), flat(second.state.params))
    np.testing.assert_array_equal(flat(second.state.params), flat(one(2, "2 alone").state.params))
    alone = together((3, 4), "34 alone")
    np.testing.assert_array_equal(flat(other_pair.state.params), flat(alone.state.params))
    assert not np.array_equal(flat(pair.state.params), flat(other_pair.state.params))


@pytest.mark.cpu_devices(2)
def test_a_partial_of_train_windows_with_a_typed_key_trains_as_with_its_raw_key(data, tmp_path):
    """A raw key is an argument of the program, placed on each device; a typed one (``jax.random.key``),
    which NumPy cannot hold, stays closed over."""
    config = TINY.replace(epochs=1, num_layers=2, dropout=0.5)
    trained = []
    for where, key in (("raw", jax.random.PRNGKey(3)), ("typed", jax.random.key(3))):
        with planned(config, data, tmp_path / where, devices=2) as p:
            state = create_train_state(config, len(data.vocab))
            step = functools.partial(train.train_windows, rng=key)
            result = loop.run(p, data, state, step, train.eval_steps)
        trained.append(jax.flatten_util.ravel_pytree(result.state.params)[0])
    np.testing.assert_array_equal(*trained)


_config = []


def global_dropout_step(state, tokens, windows, axis_name=None):
    """loop.run's docstring's step: its dropout key from a config it is not given."""
    return train.train_windows(state, tokens, windows, axis_name, train.dropout_key(_config[-1]))


@pytest.mark.slow
def test_a_step_of_ones_own_is_compiled_for_its_run_alone(data, tmp_path):
    """It may read what it is not given (a global config's dropout key, the seed of a sweep's run)."""
    def run(seed):
        config = TINY.replace(epochs=1, num_layers=2, dropout=0.3, seed=seed)
        _config.append(config)
        with planned(config, data, tmp_path / str(len(_config)), devices=1) as p:
            state = create_train_state(config, len(data.vocab))
            result = loop.run(p, data, state, global_dropout_step, train.eval_steps, log=None)
        return jax.flatten_util.ravel_pytree(result.state.params)[0]
    run(1)
    second = run(2)
    jax.clear_caches()
    np.testing.assert_array_equal(second, run(2))
