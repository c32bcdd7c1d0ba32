"""``rnnjax.agree``: the processes of a multi-host run compare what they would train through
jax.distributed's key-value store (here a dict standing in for it, as process 0 of two); the real two
processes are in test_parallel.py."""

import itertools
import json

import jax
import pytest

from conftest import TINY
from rnnjax import agree
from rnnjax.start import plan


class Store:
    """The calls of jax.distributed's client that ``check_agreed`` makes."""

    def __init__(self, given: dict):
        self.values = dict(given)

    def key_value_set(self, key, value):
        assert key not in self.values, key          # JAX's store refuses a key set twice
        self.values[key] = value

    def key_value_try_get(self, key):
        if key not in self.values:
            raise jax.errors.JaxRuntimeError(f"NOT_FOUND: Config key {key} not found.")
        return self.values[key]


@pytest.fixture
def two_processes(monkeypatch):
    """Process 0 of two, the other's settings given as ``other`` (None: never given); ``shutdowns`` counts
    jax.distributed.shutdown's calls."""
    from jax._src import distributed
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    shutdowns = []
    monkeypatch.setattr(jax.distributed, "shutdown", lambda: shutdowns.append(1))

    def given(other: dict | None) -> Store:
        n = next(agree._CALLS)          # the key the next check uses, read ahead
        monkeypatch.setattr(agree, "_CALLS", itertools.count(n))
        store = Store({} if other is None else {f"rnnjax/agree/{n}/1": json.dumps(other)})
        monkeypatch.setattr(distributed.global_state, "client", store)
        return store
    return given, shutdowns


def test_the_same_settings_agree_and_are_given_to_the_others(two_processes):
    given, shutdowns = two_processes
    store = given({"--epochs": 3, "--seed": [0, 1]})
    agree.check_agreed({"--epochs": 3, "--seed": [0, 1]})
    assert json.loads(store.values[next(k for k in store.values if k.endswith("/0"))]) == {
        "--epochs": 3, "--seed": [0, 1]} and not shutdowns


def test_the_first_setting_that_differs_is_named_with_both_values_and_every_process_leaves_the_run(
        two_processes):
    given, shutdowns = two_processes
    given({"--epochs": 3, "--seed": [0, 1, 2], "--predict": "it"})
    with pytest.raises(ValueError, match=r"^The processes of this multi-host run were given other settings: "
                                         r"--seed 0,1 here \(process 0\), 0,1,2 in process 1; give every "
                                         r"process the same flags and the same --workdir path\.$"):
        agree.check_agreed({"--epochs": 3, "--seed": [0, 1], "--predict": None})
    assert shutdowns == [1]             # else process 0, exiting first, aborts the others in C++
    given({"--predict": "it"})
    with pytest.raises(ValueError, match=r"--predict not given here \(process 0\), it in process 1"):
        agree.check_agreed({"--predict": None})


def test_a_process_that_never_gives_its_settings_is_a_timeout_in_one_sentence(two_processes):
    given, shutdowns = two_processes
    given(None)
    with pytest.raises(TimeoutError, match=r"^Process 1 of the multi-host run did not reach the point this "
                                           r"one did within 0\.2 s \(is it running another command\?\); this "
                                           r"one stops\.$"):
        agree.check_agreed({"--epochs": 3}, timeout_s=0.2)
    assert not shutdowns


def test_a_single_process_checks_nothing(small_data, tmp_path):
    agree.check_agreed({"anything": 1})           # no store to reach: it would raise
    assert agree.of_run(plan(TINY, small_data, tmp_path), small_data, 1, 3) == {}


def test_a_run_is_what_its_configs_workdir_checkpoint_text_devices_and_saving_make_it(small_data, tmp_path,
                                                                                      monkeypatch):
    p = plan(TINY, small_data, tmp_path / "w", devices=1)
    runs = plan(TINY, small_data, tmp_path / "r", devices=1, runs=(TINY, TINY.replace(seed=1)))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    what = agree.of_run(p, small_data, 1, 3)
    assert {k: what[k] for k in ("epochs", "seed", "cell")} == {"epochs": 3, "seed": 0, "cell": "rnn"}
    assert what["workdir"] == str((tmp_path / "w").absolute()) and what["checkpoint resumed"] == \
        "none (a new run)"
    assert (what["devices of each process"], what["checkpoint_every"], what["keep"]) == (1, 1, 3)
    other = small_data.__class__.__new__(small_data.__class__)
    other.__dict__.update(small_data.__dict__, corpus=small_data.corpus[::-1].copy())   # another text
    assert agree.of_run(p, other, 1, 3)["the text's tokens"] != what["the text's tokens"]
    assert agree.of_run(runs, small_data, 1, 3)["run 1's seed"] == 1
