"""``rnnjax.agree``: the processes of a multi-host run compare what they would train through
jax.distributed's key-value store (here a dict standing in for it, as process 0 of two); the real two
processes are in test_parallel.py."""

import contextlib
import json
import time

import jax
import numpy as np
import pytest

from conftest import TINY
from rnnjax import agree, loop, runs, start, train
from rnnjax.spelling import flag_spelling
from rnnjax.start import plan


class Store(dict):
    """The calls of jax.distributed's client that ``rnnjax.agree`` makes."""

    def key_value_set(self, key, value):
        assert key not in self, key          # JAX's store refuses a key set twice
        self[key] = value

    def key_value_try_get(self, key):
        if key not in self:
            raise jax.errors.JaxRuntimeError(f"NOT_FOUND: Config key {key} not found.")
        return self[key]


@pytest.fixture
def process_0_of_2(monkeypatch):
    """``(store, shutdowns)``: the store process 1 writes in (its keys under ``rnnjax/agree/0/``), and
    jax.distributed.shutdown's calls."""
    from jax._src import distributed
    store, shutdowns = Store(), []
    jax.devices()          # the backend started first: started with the store, it would take it for gloo's
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    monkeypatch.setattr(distributed.global_state, "client", store)
    monkeypatch.setattr(jax.distributed, "shutdown", lambda: shutdowns.append(1))
    monkeypatch.setattr(agree, "_made", [0])
    monkeypatch.setattr(agree, "_left", set())
    return store, shutdowns


def given(store, settings, read=True):
    store["rnnjax/agree/0/given/1"] = json.dumps(settings)
    if read:
        store["rnnjax/agree/0/read/1"] = ""


def test_the_same_settings_agree_once_each_has_read_the_others(process_0_of_2):
    store, shutdowns = process_0_of_2
    given(store, {"epochs": 3, "seed": [0, 1]})
    agree.check_agreed({"epochs": 3, "seed": [0, 1]})
    assert json.loads(store["rnnjax/agree/0/given/0"]) == {"epochs": 3, "seed": [0, 1]}
    assert "rnnjax/agree/0/read/0" in store and not shutdowns and agree._made == [1]


def test_the_first_setting_that_differs_is_named_with_both_values_and_every_process_leaves_the_run(
        process_0_of_2):
    store, shutdowns = process_0_of_2
    given(store, {"epochs": 3, "seed": [0, 1, 2], "run": 1})
    with pytest.raises(ValueError, match=r"^The processes of this multi-host run were given other settings: "
                                         r"seed 0,1 here \(process 0\), seed 0,1,2 in process 1; give every "
                                         r"process the same settings and the same workdir path\.$"):
        agree.check_agreed({"epochs": 3, "seed": [0, 1], "run": None})
    assert shutdowns == [1]             # else process 0, exiting first, aborts the others in C++


@pytest.mark.parametrize("ours, theirs, python, flags", [
    ({"batch_size": 16}, {"batch_size": 32}, "batch_size=16 here (process 0), batch_size=32 in process 1",
     "--batch-size 16 here (process 0), --batch-size 32 in process 1"),
    ({"run 1's lr": 1.0}, {"run 1's lr": 2.0}, "run 1's lr=1 here (process 0), run 1's lr=2 in process 1",
     "run 1's --lr 1 here (process 0), run 1's --lr 2 in process 1"),
    ({"bidirectional": True}, {"bidirectional": False},
     "bidirectional=True here (process 0), bidirectional=False in process 1",
     "--bidirectional here (process 0), --no-bidirectional in process 1"),
    ({"devices": 2}, {"devices": 1}, "devices=2 here (process 0), devices=1 in process 1",
     "--devices 2 here (process 0), --devices 1 in process 1"),
    ({"the text's tokens": "5 (CRC-32 1)"}, {"the text's tokens": "5 (CRC-32 2)"},
     "the text's tokens 5 (CRC-32 1) here (process 0), 5 (CRC-32 2) in process 1", None),
    ({"checkpoint resumed": "step 26"}, {"checkpoint resumed": "none (a new run)"},     # not the settings
     "checkpoint resumed step 26 here (process 0), none (a new run) in process 1; every process must see one "
     "workdir folder, shared by every host (a network file system), not a copy.", None)])
def test_a_setting_that_differs_is_named_as_its_user_gave_it(process_0_of_2, monkeypatch, ours, theirs,
                                                             python, flags):
    """As fit's arguments and Config's fields from Python, as the command's flags within flag_spelling."""
    for spelling, says in ((contextlib.nullcontext, python), (flag_spelling, flags or python)):
        store, _ = process_0_of_2
        monkeypatch.setattr(agree, "_made", [0])
        store.clear()
        given(store, theirs)
        with pytest.raises(ValueError) as e, spelling():
            agree.check_agreed(ours)
        said = str(e.value)
        whole = says.endswith(".")          # with its advice, else up to it
        assert said.startswith(f"The processes of this multi-host run were given other settings: {says}"
                               + ";" * (not whole)) and (said.endswith(says) or not whole)


def test_a_process_that_never_comes_is_a_timeout_and_one_coming_late_stops_too(process_0_of_2):
    store, shutdowns = process_0_of_2
    with pytest.raises(TimeoutError, match=r"^Process 1 of the multi-host run did not reach the point this "
                                           r"one did within 0\.2 s \(is it running another command\?\); this "
                                           r"one stops\.$"):
        agree.check_agreed({"epochs": 3}, timeout_s=0.2)
    assert "rnnjax/agree/0/gave-up/0" in store and not shutdowns       # read by a late one: it stops
    store["rnnjax/agree/1/given/1"] = json.dumps({"epochs": 3})        # the next check, process 1 late
    store["rnnjax/agree/1/gave-up/1"] = ""
    with pytest.raises(TimeoutError, match=r"^Process 1 of the multi-host run stopped waiting for this one"):
        agree.check_agreed({"epochs": 3})


def test_a_check_one_process_makes_after_the_other_ended_its_program_stops_at_once(process_0_of_2,
                                                                                   monkeypatch):
    """A second fit in process 0 alone, process 1 at its exit (waiting at JAX's shutdown): both waited out
    the check's 300 s. A process that made a check says, as its program ends, that it has ended."""
    store, _ = process_0_of_2
    at_exit = []
    monkeypatch.setattr(agree.atexit, "register", lambda f, *args: at_exit.append((f, args)))
    given(store, {"epochs": 3})
    agree.check_agreed({"epochs": 3})              # the first: said at exit, before JAX's shutdown
    [(say, args)] = at_exit
    say(*args)
    assert "rnnjax/agree/ended/0" in store
    store["rnnjax/agree/ended/1"] = ""             # process 1's, ended after the run both trained
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"^Process 1 of the multi-host run has ended its program, and waits "
                                         r"for this one to end: every process runs the same training, or "
                                         r"none does; this one stops\.$"):
        agree.check_agreed({"epochs": 5})
    assert time.monotonic() - t0 < 5


def test_a_process_stopped_by_an_error_of_its_own_stops_the_others_at_their_check(process_0_of_2):
    store, shutdowns = process_0_of_2
    store["rnnjax/agree/0/left/1"] = ""
    with pytest.raises(ValueError, match=r"^Process 1 of the multi-host run stopped \(it says why\); this "
                                         r"one stops too\.$"):
        agree.check_agreed({"epochs": 3})
    assert "rnnjax/agree/0/read-left/0" in store and shutdowns == [1]


def test_leaving_tells_the_next_check_and_leaves_together_only_with_those_who_read_it(process_0_of_2):
    store, shutdowns = process_0_of_2
    agree.leave(wait_s=0.1)             # nobody waits at a check: it just exits
    assert "rnnjax/agree/0/left/0" in store and not shutdowns
    agree.leave(wait_s=0.1)             # again before the next check: nothing (the store takes a key once)
    assert not shutdowns
    agree._left.clear()
    store.clear()
    store["rnnjax/agree/0/read-left/1"] = ""
    agree.leave(wait_s=0.1)
    assert shutdowns == [1]


def test_processes_that_all_left_on_errors_leave_together_at_once(process_0_of_2):
    """None waits at a check (each stopped on its own error, as a NaN stops every process): no wait_s."""
    store, shutdowns = process_0_of_2
    store["rnnjax/agree/0/left/1"] = ""
    began = time.monotonic()
    agree.leave(wait_s=30)
    assert shutdowns == [1] and time.monotonic() - began < 5


def test_an_error_once_the_block_made_its_check_leaves_the_run_as_it_is(process_0_of_2):
    """The others are past the check (an early stop raised in every process): none waits to be told, and
    shutting jax.distributed down would end a program that goes on."""
    store, shutdowns = process_0_of_2
    given(store, {"epochs": 3})
    with pytest.raises(RuntimeError), agree.leaving_on_error():
        agree.check_agreed({"epochs": 3})
        raise RuntimeError("an early stop")
    assert not [k for k in store if "left" in k] and not shutdowns


def _block_raises(small_data, tmp_path):
    with start.planned(TINY, small_data, tmp_path):
        raise RuntimeError("the user's own loop failed")


def _closed_plan(small_data, tmp_path):
    with start.planned(TINY, small_data, tmp_path) as p:
        pass
    loop.run(p, small_data, None, train.train_windows, train.eval_steps)


@pytest.mark.parametrize("call", [
    lambda data, path: train.fit(TINY, data, path, progress=3),
    lambda data, path: runs.fit_runs([TINY, TINY.replace(seed=1)], data, path, progress=3),
    _block_raises, _closed_plan], ids=["fit", "fit_runs", "planned", "loop.run"])
def test_an_error_in_one_process_before_the_check_stops_the_others_at_it(process_0_of_2, small_data,
                                                                         tmp_path, call):
    """Raised in fit, fit_runs, a planned block or loop.run before the run's check, the others waiting there
    stop at once; before, they waited out its timeout (300 s), as a library's fit did not leave."""
    store, shutdowns = process_0_of_2
    store["rnnjax/agree/0/read-left/1"] = ""        # process 1, at the check, reads that this one left
    with pytest.raises(Exception):
        call(small_data, tmp_path)
    assert "rnnjax/agree/0/left/0" in store and shutdowns == [1]


def test_a_single_process_checks_nothing(small_data, tmp_path):
    agree.check_agreed({"anything": 1})           # no store to reach: it would raise
    agree.leave()
    assert agree.of_run(plan(TINY, small_data, tmp_path), small_data, None, 1, 3) == {}


def test_a_run_is_its_configs_workdir_checkpoint_start_text_devices_and_saving(small_data, tmp_path,
                                                                               process_0_of_2):
    from rnnjax.state import create_train_state
    p = plan(TINY, small_data, tmp_path / "w")          # over every local device, as across processes
    params = create_train_state(TINY, len(small_data.vocab)).params
    what = agree.of_run(p, small_data, params, 1, 3)
    assert {k: what[k] for k in ("epochs", "seed", "cell")} == {"epochs": 3, "seed": 0, "cell": "rnn"}
    assert what["workdir"] == str((tmp_path / "w").absolute()) and what["checkpoint resumed"] == \
        "none (a new run)"
    assert (what["devices"], what["checkpoint_every"], what["keep"]) == (
        len(jax.local_devices()), 1, 3)
    other = small_data.__class__.__new__(small_data.__class__)
    other.__dict__.update(small_data.__dict__, corpus=small_data.corpus[::-1].copy())   # another text
    assert agree.of_run(p, other, params, 1, 3)["the text's tokens"] != what["the text's tokens"]
    seeded = create_train_state(TINY.replace(seed=1), len(small_data.vocab)).params    # fit(params=...)
    assert agree.of_run(p, small_data, seeded, 1, 3)["the parameters it starts from"] != \
        what["the parameters it starts from"]
    assert agree.of_configs([TINY, TINY.replace(seed=1)], True)["run 1's seed"] == 1


def test_processes_that_stopped_at_the_same_call_leave_through_the_shutdown_barrier(
        process_0_of_2, monkeypatch):
    """Else the one serving the run (process 0) could exit first, and another's client abort (status -6)
    as it exited: the command calls this for a stop every process agreed on, not for a second signal."""
    from rnnjax import loop
    from rnnjax.stops import Interrupted
    store, shutdowns = process_0_of_2
    monkeypatch.setattr(loop.checkpoint, "check_saved", lambda manager: None)
    agreed = loop._stopped(None, 15, 15, 0, 10, 40, 10, "w")
    assert agreed.together and not Interrupted("a second signal", 15).together
    agree.leave_together()
    assert shutdowns == [1]


def test_a_process_that_left_its_run_is_told_so_before_it_trains_again(process_0_of_2, small_data, tmp_path,
                                                                       monkeypatch):
    """After a leave shut jax.distributed down, a retried fit called its (absent) checkpoints damaged."""
    from jax._src import distributed
    monkeypatch.setattr(distributed.global_state, "client", None)          # as jax.distributed.shutdown
    with pytest.raises(ValueError, match=r"^This process has left its multi-host run \(process 0 of 2, after "
                                         r"an error\): start every process of the run again\.$"):
        train.fit(TINY, small_data, tmp_path / "w", log=None)
    assert not (tmp_path / "w").exists()


def test_ctrl_c_before_the_check_stops_the_others_at_it(process_0_of_2):
    """A KeyboardInterrupt in one process left the others waiting 300 s, then aborting in C++."""
    store, shutdowns = process_0_of_2
    store["rnnjax/agree/0/read-left/1"] = ""
    with pytest.raises(KeyboardInterrupt), agree.leaving_on_error():
        raise KeyboardInterrupt
    assert "rnnjax/agree/0/left/0" in store and shutdowns == [1]


def test_a_stop_is_the_lowest_process_s_signal_and_the_first_process_whose_progress_raised(monkeypatch):
    from jax.experimental import multihost_utils
    rows = {0: [[0, 0], [0, 0], [0, 0]], 1: [[0, 0], [15, 1], [2, 1]], 2: [[0, 1], [0, 0], [0, 0]]}
    for case, want in ((0, (None, None)), (1, (15, 1)), (2, (None, 0))):
        monkeypatch.setattr(multihost_utils, "process_allgather", lambda mine: np.array(rows[case], np.int32))
        assert agree.stop_by_any(None, False) == want
