"""What stops a run from outside: signals (also test_checkpoint, test_faults)."""

import logging
import os

import pytest


def test_a_second_signal_stops_at_once_naming_it_and_a_third_is_ignored():
    import signal

    from rnnjax.stops import Interrupted, catch_signals
    with catch_signals() as flag:                    # the handler, called as the signals would call it
        flag(signal.SIGTERM, None)                   # the first: a flag the loop reads
        assert flag.signum == signal.SIGTERM
        with pytest.raises(Interrupted, match=r"second signal 15 \(SIGTERM\): the workdir keeps its last "
                                              r"complete checkpoint, the first signal's where its "
                                              r"save finished") as info:
            flag(signal.SIGTERM, None)
        assert info.value.signum == signal.SIGTERM   # the CLI exits 143, not 130
        assert str(info.value).endswith("(one cut short is never listed). Train again in the same workdir to "
                                        "resume.")
        flag(signal.SIGINT, None)                    # while that unwinds: nothing more


def test_a_second_signal_to_a_process_of_a_multi_host_run_says_to_stop_the_others(monkeypatch):
    """The others waited on its collectives, silent for 90 s, then aborted (hostile pass): said."""
    import signal

    from jax._src import distributed

    from rnnjax.stops import Interrupted, catch_signals
    monkeypatch.setattr(distributed.global_state, "client", object())         # joined
    with catch_signals() as flag:
        flag(signal.SIGINT, None)
        said = (r"\(one cut short is never listed\)\. The other processes of the multi-host run may wait for "
                r"this one \(its collectives\): stop them too, then start every process again to resume\.$")
        with pytest.raises(Interrupted, match=said):
            flag(signal.SIGINT, None)


def test_a_second_signal_inside_held_stops_once_the_block_has_run():
    import signal

    from rnnjax.stops import Interrupted, catch_signals, held
    ran = []
    with catch_signals() as flag:
        flag(signal.SIGINT, None)
        with pytest.raises(Interrupted, match=r"second signal 2 \(SIGINT\)"):
            with held():
                flag(signal.SIGINT, None)            # held: the block runs on
                flag(signal.SIGTERM, None)           # a third: ignored, the second is already coming
                ran.append("the rest of the block")
        assert ran == ["the rest of the block"]
        flag(signal.SIGINT, None)                    # while that unwinds: nothing more
    with held():                                     # no run catching signals: a plain block
        ran.append("again")
    assert ran[-1] == "again"


def test_a_second_signal_raised_in_a_gc_callback_is_delivered_again_not_dropped(
        monkeypatch, signal_in_a_gc_callback):
    import signal
    import sys
    import time

    from rnnjax.stops import Interrupted, catch_signals
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    with pytest.raises(Interrupted, match=r"second signal 15 \(SIGTERM\)"):
        with catch_signals() as flag:
            flag(signal.SIGTERM, None)               # the first: a flag the loop reads
            signal_in_a_gc_callback(signal.SIGTERM)  # the second, inside the callback: sent again
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:       # it lands here, a moment later
                time.sleep(0.01)
    assert dropped == []
    import gc                                        # another exception Python drops goes where it went

    def callback(phase, info):
        raise ValueError("a callback's own")
    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert [type(u.exc_value) for u in dropped] == [ValueError, ValueError]      # at its start and stop


def test_a_dropped_second_signal_is_not_sent_again_once_its_run_has_stopped(
        monkeypatch, signal_in_a_gc_callback):
    """The run stopped (on the first) before the second came again: nothing more reaches the caller."""
    import signal
    import sys
    import time

    from rnnjax.stops import catch_signals
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(LookupError):
            with catch_signals() as flag:
                flag(signal.SIGTERM, None)
                signal_in_a_gc_callback(signal.SIGTERM)      # dropped: to be sent again in 50 ms
                raise LookupError("the run stops on the first, as the loop would")
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == []


def test_two_signals_as_a_run_ends_the_second_dropped_pass_the_first_on(monkeypatch,
                                                                        signal_in_a_gc_callback):
    """The block runs to its end just after a second signal was dropped: the first is passed on to the
    handler put back, as an unheeded one is, and the run is not left stopping."""
    import signal
    import sys
    import time

    from rnnjax import stops
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with stops.catch_signals() as flag:
            flag(signal.SIGTERM, None)
            signal_in_a_gc_callback(signal.SIGTERM)          # dropped; its run ends before it comes again
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, previous)
        stops.stop_handled()
    assert seen == [signal.SIGTERM]


def test_the_unraisable_hooks_wrap_once_however_often_they_are_installed(monkeypatch):
    import signal
    import sys

    from rnnjax import orbax_logs
    from rnnjax.stops import hooked, raised_by_a_handler
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    for _ in range(3):
        raised_by_a_handler(KeyboardInterrupt(), signal.SIGINT)
        orbax_logs.quiet()
    depth, hook = 0, sys.unraisablehook
    while hook is not sys.__unraisablehook__:
        depth, hook = depth + 1, hook.previous
    assert depth == 2 and hooked(type(sys.unraisablehook))


def test_a_deferred_signal_is_the_next_run_s_first():
    import signal

    from rnnjax.stops import catch_signals, defer
    assert defer(signal.SIGTERM)                     # kept (a multi-host run's start-up)
    assert not defer(signal.SIGINT)                  # a second: the caller stops at once
    passed_on = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: passed_on.append(signum))
    try:
        with catch_signals() as flag:
            assert flag.signum == signal.SIGTERM     # its loop stops at the first step
        assert passed_on == [signal.SIGTERM]         # (a block that ends, not stopping: passed on)
        with catch_signals() as flag:
            assert flag.signum is None               # taken once
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_the_block_never_read_again_is_passed_on_as_it_ends():
    """One caught after the run's last look at the flag (as its checkpoint manager closes) is not lost: the
    handler put back gets it. One the block stopped on (it raised) is not passed on."""
    import signal

    from rnnjax import stops
    passed_on = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: passed_on.append(signum))
    try:
        with stops.catch_signals() as flag:
            flag(signal.SIGINT, None)
        assert passed_on == [signal.SIGINT] and stops.ended() and not stops.stopping()
        with pytest.raises(stops.Interrupted):
            with stops.catch_signals() as flag:
                flag(signal.SIGINT, None)
                raise stops.Interrupted("stopped at the flag", signal.SIGINT)
        assert passed_on == [signal.SIGINT] and not stops.ended() and stops.stopping()
        with stops.catch_signals():
            pass
        assert passed_on == [signal.SIGINT] and stops.ended() and not stops.stopping()
        absl = logging.getLogger("absl")
        remove = absl.removeFilter
        with pytest.MonkeyPatch.context() as m:         # one as the block is torn down: not lost either
            m.setattr(absl, "removeFilter", lambda f: (os.kill(os.getpid(), signal.SIGINT), remove(f)))
            with stops.catch_signals():
                pass
        assert passed_on == [signal.SIGINT] * 2 and stops.ended()
    finally:
        signal.signal(signal.SIGINT, previous)
        stops.stop_handled()
