"""Data parallelism on simulated CPU devices (conftest.py makes four).

Tolerance: the global loss and gradient are the same sums taken in a different
order (per device, then ``pmean``/``psum``), so runs on 1, 2 and 4 devices agree
to float32 round-off: about 1e-7 relative per step, compounding over a few
dozen SGD steps. We allow 1e-5.
"""

import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import TINY as SMALL, free_port
from rnnjax import checkpoint, compiled, xla
from rnnjax.spelling import flag_spelling, said
from rnnjax.data import Batch
from rnnjax.metrics import MetricsLog
from rnnjax.parallel import DataParallel, check_distributed
from rnnjax.state import create_train_state
from rnnjax.train import fit, train_step

RTOL = 1e-5


def assert_close_trees(a, b, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=atol)


def assert_close_histories(a, b):
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for key in ("train_ppl", "val_ppl"):
        np.testing.assert_allclose([r[key] for r in a], [r[key] for r in b], rtol=RTOL)


@pytest.mark.slow
@pytest.mark.cpu_devices(4)
def test_one_two_and_four_devices_train_alike(small_data, tmp_path):
    runs = {n: fit(SMALL, small_data, tmp_path / str(n), devices=n) for n in (1, 2, 4)}
    # With batch 16 on 4 devices the last batch's 8 real rows all sit on the first two.
    for n in (2, 4):
        assert_close_histories(runs[n].history, runs[1].history)
        assert_close_trees(runs[n].state.params, runs[1].state.params)
    assert runs[4].history[-1]["val_ppl"] < runs[4].history[0]["val_ppl"]


@pytest.mark.cpu_devices(2)
def test_one_and_two_devices_train_alike_with_dropout(small_data, tmp_path):
    """Each row's dropout mask is drawn by its index in the global batch: before, each device drew its own
    masks and the runs differed from the first step (params 0.28 apart after 2 epochs, against 1e-6)."""
    config = SMALL.replace(num_layers=2, dropout=0.5, epochs=2)
    runs = {n: fit(config, small_data, tmp_path / str(n), devices=n, log=None) for n in (1, 2)}
    assert_close_histories(runs[2].history, runs[1].history)
    assert_close_trees(runs[2].state.params, runs[1].state.params)
    without = fit(config.replace(dropout=0.0), small_data, tmp_path / "without", devices=1, log=None)
    assert without.history[0]["train_ppl"] != runs[1].history[0]["train_ppl"]      # dropout was on


@pytest.mark.cpu_devices(2)
def test_dropout_draws_threefrys_masks_whatever_prng_jax_defaults_to(small_data, tmp_path):
    """Under ``JAX_DEFAULT_PRNG_IMPL=rbg`` a run's masks followed its device count (train ppl 8.12 on one
    device, 8.04 on two), and a resume under the other drew others."""
    config = SMALL.replace(num_layers=2, dropout=0.5, epochs=1)
    params = create_train_state(config, len(small_data.vocab)).params
    threefry = fit(config, small_data, tmp_path / "threefry", params=params, devices=1, log=None)
    jax.clear_caches()          # the programs traced under one default, and the other's
    try:
        jax.config.update("jax_default_prng_impl", "rbg")
        runs = {n: fit(config, small_data, tmp_path / f"rbg{n}", params=params, devices=n, log=None)
                for n in (1, 2)}
    finally:
        jax.config.update("jax_default_prng_impl", "threefry2x32")
        jax.clear_caches()
    assert_close_histories(runs[1].history, threefry.history)
    assert_close_histories(runs[2].history, runs[1].history)
    assert_close_trees(runs[2].state.params, threefry.state.params)


@pytest.mark.cpu_devices(4)
def test_shard_stack_stacks_each_devices_shards():
    batches = [Batch(np.arange(16 * 8).reshape(16, 8) + 1000 * i, np.zeros((16, 8), np.int32),
                     np.ones(16, np.float32)) for i in range(3)]
    for n in (1, 2, 4):
        dp = DataParallel.create(n)
        stacked = dp.shard_stack(batches)
        for i, b in enumerate(batches):
            if n == 1:
                np.testing.assert_array_equal(stacked.X[i], b.X)
            else:
                np.testing.assert_array_equal(stacked.X[:, i], dp.shard(b).X)


def _shards_step(step, n, small_data):
    """One pmapped step over ``n`` devices on shards that hold different data."""
    dp = DataParallel.create(n)
    state = create_train_state(SMALL, len(small_data.vocab))
    batch = next(small_data.train_batches(0))
    new_state, _ = jax.pmap(step, axis_name="batch", devices=dp.devices)(dp.replicate(state), dp.shard(batch))
    full, _ = jax.jit(train_step)(state, batch)
    return jax.device_get(new_state.params), jax.device_get(full.params)


@pytest.mark.cpu_devices(2)
def test_gradients_are_averaged_with_pmean(small_data):
    """Replicas stay identical and equal one device on the whole batch only if gradients are averaged."""
    replicas, full = _shards_step(lambda s, b: train_step(s, b, axis_name="batch"), 2, small_data)
    for leaf, ref in zip(jax.tree.leaves(replicas), jax.tree.leaves(full)):
        np.testing.assert_array_equal(leaf[0], leaf[1])
        np.testing.assert_allclose(leaf[0], ref, rtol=RTOL, atol=1e-6)

    # The same step without its collectives: each replica follows its own shard.
    local, _ = _shards_step(lambda s, b: train_step(s, b), 2, small_data)
    kernel = local["output_layer"]["kernel"]
    assert np.abs(kernel[0] - kernel[1]).max() > 1e-4


@pytest.mark.cpu_devices(2)
def test_one_all_reduce_per_step(small_data):
    """Gradients, loss sum and token count travel together: each collective is a rendezvous."""
    dp = DataParallel.create(2)
    state = dp.replicate(create_train_state(SMALL, len(small_data.vocab)))
    step = jax.pmap(lambda s, b: train_step(s, b, axis_name="batch"), axis_name="batch", devices=dp.devices)
    hlo = step.lower(state, dp.shard(next(small_data.train_batches(0)))).as_text()
    assert hlo.count("all_reduce") == 1


YNN = "xla_cpu_experimental_ynn_fusion_type"
YNN_ONLY_REDUCE = {YNN: "LIBRARY_FUSION_TYPE_REDUCE"}


@pytest.mark.cpu_devices(2)
def test_compiler_options_reach_xla_and_change_no_result(small_data):
    """``pmap`` takes no XLA options; ``compile`` builds the pmapped step with them itself."""
    dp = DataParallel.create(2)
    state = dp.replicate(create_train_state(SMALL, len(small_data.vocab)))
    batch = dp.shard(next(small_data.train_batches(0)))
    plain = dp.compile(train_step)
    tuned = dp.compile(train_step, compiler_options=YNN_ONLY_REDUCE)
    assert "ynn_fusion" in plain.lower(state, batch).compile().as_text()   # XLA's default: YNNPACK dots
    assert "ynn_fusion" not in tuned.executable(state, batch).as_text()
    assert_close_trees(tuned(state, batch), plain(state, batch), atol=1e-6)
    tuned(state, batch)
    assert len(tuned.executables) == 1                                     # compiled once per shapes


# XLA's CPU compiler's options (YNNPACK fusions), read in the CPU's HLO: a GPU's XLA knows none of them.
@pytest.mark.parametrize("devices", [pytest.param(n, marks=pytest.mark.cpu_devices(n)) for n in (1, 2)])
def test_options_xla_does_not_know_are_left_out(small_data, devices):
    dp = DataParallel.create(devices)
    state = dp.replicate(create_train_state(SMALL, len(small_data.vocab)))
    batch = dp.shard(next(small_data.train_batches(0)))
    unknown = dp.compile(train_step, compiler_options={"xla_cpu_no_such_option": True})
    bad_value = dp.compile(train_step, compiler_options={YNN: "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE"})
    plain = dp.compile(train_step)
    assert_close_trees(unknown(state, batch), plain(state, batch), atol=0)
    assert_close_trees(bad_value(state, batch), plain(state, batch), atol=0)
    # One unknown option among known ones: only it is left out (jaxlib 0.11 dropped one of ours).
    mixed = dp.compile(train_step, compiler_options={"xla_cpu_no_such_option": True, **YNN_ONLY_REDUCE})
    known = dp.compile(train_step, compiler_options=YNN_ONLY_REDUCE)
    hlo = lambda step: step.executable(state, batch).as_text()
    assert hlo(mixed).count("ynn_fusion") == hlo(known).count("ynn_fusion") \
        != plain.lower(state, batch).compile().as_text().count("ynn_fusion")
    assert mixed.options == YNN_ONLY_REDUCE


@pytest.mark.slow
@pytest.mark.cpu_devices(2)
def test_fit_with_xla_options_trains_as_without(small_data, tmp_path, monkeypatch):
    """Two hiddens give 8 rows per device per hidden unit: all of ``compiler_options`` applies."""
    config = SMALL.replace(num_hiddens=2, epochs=2)
    avx512 = xla._AVX512_VECTORS if xla._cpu_has_avx512() else {}
    expected = {**xla._LLVM_O1, **xla._YNN_CONVOLUTIONS_ONLY, **avx512}
    assert xla.compiler_options(16, 2, 2) == expected
    tuned = fit(config, small_data, tmp_path / "tuned", devices=2)
    monkeypatch.setattr(compiled, "compiler_options", lambda *args: {})
    plain = fit(config, small_data, tmp_path / "plain", devices=2)
    assert_close_histories(tuned.history, plain.history)
    assert_close_trees(tuned.state.params, plain.state.params)


@pytest.mark.slow
@pytest.mark.cpu_devices(4)
def test_checkpoint_from_four_devices_resumes_on_one(small_data, tmp_path):
    straight = fit(SMALL, small_data, tmp_path / "straight", devices=4)
    fit(SMALL.replace(epochs=2), small_data, tmp_path / "moved", devices=4)
    resumed = fit(SMALL, small_data, tmp_path / "moved", devices=1)
    assert checkpoint.restore(tmp_path / "moved").meta["num_devices"] == 1
    assert_close_histories(resumed.history, straight.history)
    assert_close_trees(resumed.state.params, straight.state.params)


@pytest.mark.cpu_devices(4)
def test_batch_size_must_divide_over_devices():
    with pytest.raises(ValueError, match=r"batch size 1022 is not divisible by the number of devices 4; .*"
                                         r"multiple of 4, or train on fewer devices "
                                         r"\(devices=2 or devices=1\)"):
        DataParallel.create(4).check_batch_size(1022)
    with pytest.raises(ValueError, match=r"\(devices=3 or devices=1\)"):
        DataParallel.create(4).check_batch_size(9)
    DataParallel.create(2).check_batch_size(1022)


@pytest.mark.cpu_devices(4)
def test_devices_limits_local_devices():
    assert DataParallel.create(2).num_local == 2 and DataParallel.create(2).pmapped
    assert not DataParallel.create(1).pmapped
    assert DataParallel.create().num_local == len(jax.local_devices()) == 4
    with pytest.raises(ValueError, match=r"^devices=5: this process has 4 local device\(s\) \(cpu\); "
                                         "JAX_NUM_CPU_DEVICES=5 simulates more on a CPU"):
        DataParallel.create(5)
    for asked in (0, -1, 2.0, "2", True):     # a float or a str failed deep inside; True was one device
        with pytest.raises(ValueError, match=rf"^devices={re.escape(said(asked))}: this process has 4 local "
                                             r"device\(s\) \(cpu\); give a whole number from 1 to 4 \(None: "
                                             r"all of them\)\.$"):
            DataParallel.create(asked)


DEEP_QUEUE = """
import tempfile
import numpy as np
from rnnjax.data import TimeMachine
from rnnjax.config import Config
from rnnjax.train import fit
text = "".join(np.random.default_rng(0).choice(list("abcdefghijklmnopqrstuvwxyz  "), 20000))
with tempfile.TemporaryDirectory() as workdir:
    fit(Config(batch_size=64, epochs=20), TimeMachine(64, 32, text=text), workdir)
print("finished")
"""


@pytest.mark.slow
def test_many_steps_per_epoch_on_two_devices_do_not_hang(fresh_env):
    """d2l's model at batch 64, 157 steps an epoch. When fit let every step of an epoch
    queue up, XLA's CPU all-reduce hung this test in 3 runs of 3 (``parallel.MAX_IN_FLIGHT``)."""
    done = subprocess.run([sys.executable, "-c", DEEP_QUEUE], env=fresh_env(JAX_NUM_CPU_DEVICES="2"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "finished" in done.stdout, done.stderr[-2000:]


@pytest.mark.slow
def test_two_processes_of_two_devices_match_one_process_of_four(real_text_path, tmp_path, main_job):
    """Also across a stop: a signal to one process, as they start, stops both at the same call (the
    first), each saving its part of the checkpoint (a save is collective); the same commands resume them."""
    def run(workdir, *extra, devices_per_process):
        return main_job("--workdir", str(workdir), "--epochs", "2", "--batch-size", "256", "--no-progress",
                        *extra, cpu_devices=devices_per_process)

    def multi():
        address = f"127.0.0.1:{free_port()}"
        return address, [run(tmp_path / "multi", "--coordinator", address, "--num-processes", "2",
                             "--process-id", str(i), devices_per_process=2) for i in range(2)]

    single = run(tmp_path / "single", devices_per_process=4)
    out, err = single.communicate(timeout=300)
    assert single.returncode == 0, err

    _, procs = multi()
    for line in procs[0].stdout:               # both joined, neither trains yet
        if line.startswith("new run"):
            break
    procs[1].send_signal(signal.SIGTERM)       # not JAX's preemption notice: rnnjax's own stop
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [143, 143], errs
    saved = [re.search(r"in epoch (\d) after batch (\d+)/40; saved step (\d+)", e).groups() for e in errs]
    assert saved[0] == saved[1] == ("1", "10", "10"), errs
    assert ", caught by another process of the multi-host run, in epoch" in errs[0]
    noted = "Signal 15 noted: the multi-host run stops at its first step, saved, with its other processes"
    stopped = errs[1].removeprefix(errs[1].split("\n")[0] + "\n") if errs[1].startswith(noted) else errs[1]
    assert stopped.startswith("Stopped by signal 15 (SIGTERM) in epoch")      # noted at once where compiling

    address, procs = multi()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert "trained:" in outs[0][0] and "trained:" not in outs[1][0]      # only process 0 reports
    assert outs[1][0].endswith("process 1 of 2: done; process 0 said how the run went and wrote "
                               f"{tmp_path / 'multi'}\n")
    assert all(out.startswith(f"joining the multi-host run at {address}: ") for out, _ in outs)
    assert f"resuming from step {saved[0][2]}" in outs[0][0]

    read = lambda d: MetricsLog(d / "metrics.jsonl").read()
    assert_close_histories(read(tmp_path / "multi"), read(tmp_path / "single"))
    multi, one = checkpoint.restore(tmp_path / "multi"), checkpoint.restore(tmp_path / "single")
    assert multi.step == one.step == 2 * 40 and multi.meta["num_devices"] == 4
    assert_close_trees(multi.params, one.params)


@pytest.mark.slow
def test_processes_of_a_multi_host_run_given_other_settings_stop_in_one_sentence(tmp_path, main_job,
                                                                                 make_text):
    """Other epochs hung both processes in gloo for 30 minutes, deaf to signals; other shapes aborted them in
    C++; another text trained silently. The settings are compared as the processes join, what fit trains
    (the text's tokens, the checkpoint resumed) before its first collective; one stopped by an error of its
    own stops the others there. Nothing is trained, no C++ abort."""
    (tmp_path / "a.txt").write_text(make_text(3000))
    (tmp_path / "b.txt").write_text(make_text(3000, seed=1))      # the same characters, another text
    (tmp_path / "c.txt").write_bytes(b"PK\x03\x04\x00\x00binary")    # a path that passes, not a text
    common = ["--preset", "tiny", "--workdir", str(tmp_path / "w"), "--no-progress"]
    a, b, c = (["--text", str(tmp_path / f"{name}.txt")] for name in "abc")
    differ = "error: The processes of this multi-host run were given other settings: "
    for first, second, says in (
            ([*a, "--epochs", "2"], [*a, "--epochs", "3"],
             [f"{differ}--epochs 2 here (process 0), --epochs 3 in process 1; give every process the same "
              "settings and the same workdir path."]),
            (a, b, [f"{differ}the text's tokens ", "in process 1; give every process the same settings"]),
            (a, [*a, "--num-processes", "3"],     # it trained: process 0's count is the run's
             ["error: Process 1 of the multi-host run stopped (it says why); this one stops too."]),
            (a, c, ["error: Process 1 of the multi-host run stopped (it says why); this one stops too."])):
        address = f"127.0.0.1:{free_port()}"
        procs = [main_job(*common, *extra, *["--num-processes", "2"] * ("--num-processes" not in extra),
                          "--coordinator", address, "--process-id", str(i), cpu_devices=1)
                 for i, extra in enumerate((first, second))]
        errs = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [1, 1], errs
        assert all(err.count("\n") == 1 and err.startswith("error: ") for err in errs), errs
        assert all(said in errs[0] for said in says), errs[0]
        assert not (tmp_path / "w").exists()           # the lock's holder removed the folder it made
        if "--num-processes" in second:
            assert errs[1] == ("error: This process was given --num-processes 3 and joined a multi-host run "
                               "of 2 (process 0's count): give every process the same count.\n")
    assert "looks binary" in errs[1]


@pytest.mark.slow
def test_a_multi_host_run_that_never_starts_stops_with_one_line(tmp_path, main_job, make_text):
    """No process answers: JAX would wait 5 minutes deaf to signals, then abort with a C++ stack dump. Here
    --join-timeout ends the wait with one sentence, and a signal stops it at once; a second process 0 on a
    port in use (JAX's server crashed, or aborted the first) says so; nothing is written."""
    (tmp_path / "input.txt").write_text(make_text())
    args = ["--data", str(tmp_path / "input.txt"), "--num-processes", "2"]
    nobody = f"127.0.0.1:{free_port()}"
    timed_out = main_job("--workdir", str(tmp_path / "a"), *args, "--coordinator", nobody,
                         "--process-id", "1", "--join-timeout", "3", cpu_devices=1)
    port = free_port()
    stopped = main_job("--workdir", str(tmp_path / "b"), *args, "--coordinator", f"127.0.0.1:{port}",
                       "--process-id", "0", cpu_devices=1)
    assert stopped.stdout.readline() == f"joining the multi-host run at 127.0.0.1:{port}: waiting up to " \
                                        "300 s for every process (--join-timeout)\n"
    second = main_job("--workdir", str(tmp_path / "c"), *args, "--coordinator", f"localhost:{port}",
                      "--process-id", "0", cpu_devices=1)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 1 and err == f"error: Port {port} of --coordinator localhost:{port} is in " \
        "use on this machine, where process 0 serves the run: is another run's process 0 here? Choose a " \
        "free port.\n"
    t0 = time.monotonic()
    stopped.send_signal(signal.SIGINT)
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 130 and time.monotonic() - t0 < 5
    assert err.startswith("Stopped by signal 2 (Ctrl-C)") and err.count("\n") == 1
    out, err = timed_out.communicate(timeout=60)
    assert timed_out.returncode == 1 and out.startswith("joining the multi-host run at")
    assert err == f"error: The multi-host run at {nobody} did not start within 3 s: not every one of its " \
                  "processes joined. Check the address and that all of them were started (--join-timeout " \
                  "sets the wait).\n"
    assert not any((tmp_path / d).exists() for d in "abc")


@pytest.mark.parametrize("given,message", [
    ((None, 2, None), "missing --coordinator, --process-id"),
    (("node0:1234", None, None), "missing --num-processes, --process-id"),
    ((None, None, 5), "missing --coordinator, --num-processes"),
    (("node0", 2, 0), "--coordinator must be HOST:PORT"),
    (("node0:http", 2, 0), "--coordinator must be HOST:PORT"),
    (("node0:１２３４", 2, 0), "--coordinator must be HOST:PORT"),      # other digits: JAX's client crashed
    (("node0:²", 2, 0), "--coordinator must be HOST:PORT"), (("node 0:1234", 2, 0), "must be HOST:PORT"),
    (("a\x01b:1234", 2, 0), "must be HOST:PORT"), (("http://node0:1234", 2, 0), "must be HOST:PORT"),
    (("::1:1234", 2, 0), r"an IPv6 address goes in brackets, e.g. \[::1\]:1234, got '::1:1234'"),
    (("localhost:99999", 2, 0),
     r"^--coordinator's port must be from 1 to 65535, got 99999 \(in 'localhost:99999'\)\.$"),
    (("localhost:0", 2, 0), r"^--coordinator's port must be from 1 to 65535, got 0 \(in 'localhost:0'\)\.$"),
    (("node0:1234", 0, 0), r"--num-processes must be from 1 to 65536, got 0"),
    (("node0:1234", 2 ** 31 - 1, 0), r"--num-processes must be from 1 .* got 2147483647\."),   # memory
    (("node0:1234", 2, 2), "--process-id must be from 0 to --num-processes - 1, got 2"),
    (("node0:1234", 2, -1), "got -1"),
    (("node0:1234", 2, 0, False, 0), "--join-timeout must be a number of seconds above 0"),
    (("node0:1234", 2, 0, False, float("nan")), "got nan"),
    (("node0:1234", 2, 0, False, -1.0), "got -1."), (("node0:1234", 2, 0, False, 1e20), "got 1e20."),
])
def test_multi_host_settings_that_cannot_start_are_one_sentence(given, message):
    """Named as the command's flags within flag_spelling, as initialize_distributed's arguments outside."""
    with pytest.raises(ValueError, match=message), flag_spelling():
        check_distributed(*given)
    python = re.sub(r"--([a-z-]+)", lambda m: m[1].replace("-", "_"), message)
    with pytest.raises(ValueError, match=python.replace("join_timeout", "timeout_s")):
        check_distributed(*given)


def test_multi_host_settings_that_can_start():
    check_distributed(None, None, None)
    check_distributed("10.0.0.1:1234", 2, 1)
    check_distributed("localhost:65535", 2, 1)
    check_distributed("[::1]:1", 2, 1)
    check_distributed(None, 2, None, auto=True)        # the cluster gives the rest


@pytest.mark.slow
def test_distributed_with_no_cluster_to_join_is_one_sentence(fresh_env):
    env = {k: v for k, v in fresh_env().items() if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR"))}
    code = """if True:
        import os
        from rnnjax import parallel
        for address in (None, "127.0.0.1:1"):     # no cluster; an address with no count of processes
            if address:
                os.environ["JAX_COORDINATOR_ADDRESS"] = address
            try:
                parallel.initialize_distributed(None, None, None)
            except ValueError as e:
                print(e)
        """
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("JAX found no multi-host run to join") and "give coordinator" in lines[0]
    assert lines[1] == "JAX cannot join the multi-host run: Number of processes must be defined. Give " \
                       "coordinator HOST:PORT, num_processes and process_id, or run where the " \
                       "cluster sets them.", proc.stderr
