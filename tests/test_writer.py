import functools
import math

import jax

import numpy as np

from conftest import TINY
from rnnjax import checkpoint, loop, start, train
from rnnjax.runs import create_run_states
from rnnjax.diverging import StoppedRuns
from rnnjax.writer import Writer, open_workdir, step_name, trained_by

CONFIGS = [TINY.replace(seed=s) for s in (0, 1)]


def test_an_epoch_of_runs_stops_one_that_diverged_logs_its_last_record_and_saves_each_run_s_val(
        small_data, tmp_path):
    said = []
    with start.planned(CONFIGS[0], small_data, tmp_path, devices=1, runs=CONFIGS) as p:
        manager, log = open_workdir(p, small_data, keep=3)
        stops = StoppedRuns(CONFIGS, [], said.append, True)
        out = Writer(p, small_data, manager, log, stops, small_data.num_batches(True))
        sums = [{"loss_sum": 2.0 * 100, "count": 100.0}, {"loss_sum": 1000.0 * 100, "count": 100.0}]
        val = {"loss_sum": np.array([210.0, 900.0]), "count": np.array([100.0, 100.0])}
        records = out.records(0, 13, sums, val, 1.0)
        assert [r["run"] for r in records] == [0] and stops.live == [0]
        assert said == [f"run 1 (seed 1) stopped: {stops.why[1]}; 1 run(s) train on."]
        assert [(r["run"], r["stopped"]) for r in log.read()] == [(1, stops.why[1])]   # run 0's: the loop's
        out.save(p.dp.replicate(create_run_states(CONFIGS, len(small_data.vocab))), 0, 0, [{}, {}],
                 records + [{"run": 1, "val_ppl": math.inf}])
        checkpoint.check_saved(manager)
        manager.close()
    meta = checkpoint.read_meta(tmp_path, 0)
    assert meta["run_val_ppls"] == [math.exp(2.1), None] and out.saved == 0
    assert meta["position"]["batch"] == 0 and meta["position"]["stopped"] == stops.why


def test_a_resume_by_another_step_than_the_checkpoint_s_says_so_and_every_meta_keeps_which_trained_when(
        small_data, tmp_path):
    """A workdir trained by a step of one's own and resumed by fit (the command line) switched silently."""
    def my_step(state, tokens, windows, axis_name=None):
        return train.train_windows(state, tokens, windows, axis_name)

    def own(epochs):
        with start.planned(TINY.replace(epochs=epochs), small_data, tmp_path) as p:
            state = train.create_train_state(TINY, len(small_data.vocab)) if p.state is None else p.state
            loop.run(p, small_data, state, my_step, train.eval_steps, log=said.append)

    def trained_by():
        return checkpoint.read_meta(tmp_path, max(checkpoint.steps(tmp_path)))["trained_by"]

    said, mine, E = [], f"{__name__}.{my_step.__qualname__}", small_data.num_batches(True)
    own(1)
    assert said == [] and trained_by() == [[0, mine]]
    train.fit(TINY.replace(epochs=2), small_data, tmp_path, log=said.append)
    assert said[1] == (f"warning: the run was trained by the step {mine} until step {E}; it trains on with "
                       "rnnjax.train.train_windows (a step of one's own trains on with rnnjax.loop.run)")
    assert trained_by() == [[0, mine], [E, "rnnjax.train.train_windows"]]
    said.clear()
    train.fit(TINY.replace(epochs=3), small_data, tmp_path, log=said.append)        # the same step: unsaid
    assert not any("warning" in line for line in said)
    assert trained_by()[-1] == [E, "rnnjax.train.train_windows"]
    own(4)                                                                          # and back
    assert said[-1].startswith(f"warning: the run was trained by the step rnnjax.train.train_windows until "
                               f"step {3 * E}; it trains on with {mine}") and "loop.run" not in said[-1]
    assert trained_by()[-1] == [3 * E, mine]


def test_a_step_that_trained_nothing_is_not_kept_as_having_trained():
    """Steps in the meta are in order, each once: a resume stopped as it began left two at one step."""
    from types import SimpleNamespace as Plan
    assert trained_by(Plan(trained_by=[[0, "a.f"], [26, "b.g"]], step=26), "c.h") == (
        [[0, "a.f"], [26, "c.h"]], "warning: the run was trained by the step a.f until step 26; it trains on "
                                   "with c.h")
    assert trained_by(Plan(trained_by=[[0, "a.f"], [26, "b.g"]], step=26), "a.f") == ([[0, "a.f"]], "")
    assert trained_by(Plan(trained_by=[[26, "b.g"]], step=26), "c.h") == ([[26, "c.h"]], "")
    assert trained_by(Plan(trained_by=None, step=None), "c.h") == ([[0, "c.h"]], "")
    said = trained_by(Plan(trained_by=[[0, "a\nf\x1b[31m"]], step=26), "c." + "h" * 300)[1]
    assert said.isprintable() and "'a\\nf\\x1b[31m'" in said and len(said) < 400     # a name hand-edited


def test_a_step_is_named_by_its_function_through_partials_and_a_callable_s_class():
    class Step:
        def __call__(self, state, tokens, windows, axis_name=None):
            return train.train_windows(state, tokens, windows, axis_name)

    assert step_name(functools.partial(functools.partial(train.train_windows, rng=None))) == \
        "rnnjax.train.train_windows"
    jitted = jax.jit(functools.partial(train.train_windows, rng=None), static_argnames="axis_name")
    assert step_name(jitted) == "rnnjax.train.train_windows"        # not functools.train_windows
    assert step_name(Step()) == f"{__name__}.{Step.__qualname__}"
