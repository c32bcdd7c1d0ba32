"""The benchmark script runs end to end (with tiny repetition counts: no timing is checked here), and its
report reads right."""

import dataclasses
import importlib.abc
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from conftest import SUITE_XLA_FLAGS, small_text
from experiments import benchmark, stopping
from experiments.benchmark import arguments, measure, outputs, sizes, torch_contenders
from experiments.benchmark.contenders import Contender, Rnnjax, Setting, xla_step_mb
from experiments.benchmark.measure import machine_info, measure_steps
from experiments.benchmark.report import busy, ratio_lines, sizes_table, torch_said
from rnnjax import kernels
from rnnjax.data import TimeMachine
from rnnjax.stops import Interrupted
from rnnjax.lock import LOCKFILE, lock


# measure_compile_cache's fresh processes, without JAX: "compiled" in 2 s, 0.5 s where the cache folder holds
# an entry (the real script runs once, in its own test).
NO_JAX_COMPILE = """
import sys, pathlib
cache = None if sys.argv[1] == "-" else pathlib.Path(sys.argv[1])
print(0.5 if cache and any(cache.iterdir()) else 2.0)
if cache:
    (cache / "entry").touch()
"""


@pytest.mark.slow
def test_benchmark_smoke(real_text_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(measure, "_COMPILE", NO_JAX_COMPILE)
    out = tmp_path / "bench.json"
    assert benchmark.main(["--data", real_text_path, "--rounds", "1", "--steps", "2", "--recipe-rounds", "0",
                           "--devices", "1", "--runs", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    names = set(result["contenders"])
    torch = {"torch d2l", "torch lean"}
    assert {"rnnjax", "flax"} <= names and (torch <= names) == benchmark.torch_available()
    for r in result["contenders"].values():
        assert r["ms_per_step"] > 0 and r["tokens_per_s"] > 0 and r["gflops"] > 0 and r["compile_s"] > 0
    assert result["ratio_step_vs_flax"] > 0
    assert ("ratio_step_vs_torch_lean" in result) == benchmark.torch_available()
    assert result["machine"]["backend"] == jax.default_backend() and result["machine"]["versions"]["jaxlib"]
    assert result["generation"]["ratio"] > 1
    assert result["compile_cache"] == {"no_cache_s": 2.0, "cold_cache_s": 2.0, "warm_cache_s": 0.5}
    runs = result["runs"]                                    # --runs 2: two seeds in one program
    assert runs["num_runs"] == 2 and runs["ratio_vs_sequential"] > 0 and runs["ms_per_step_all"] > 0
    assert (result["rounds"], result["steps"], result["recipe_rounds"]) == (1, 2, 0)   # what they are of
    assert result["complete"] is True
    mb = {name: r["step_mb"] for name, r in result["contenders"].items()}
    assert mb["rnnjax"] > 0 and mb["flax"] > 0 and result["ratio_memory_vs_flax"] == mb["flax"] / mb["rnnjax"]
    on_cpu = result["machine"]["torch_device"] == "cpu"        # its CPU allocator keeps no peak
    assert all((mb[t] is None) == on_cpu for t in torch & names)
    said = capsys.readouterr().out
    assert f"; written to {out} after each part\n" in said
    assert "warning: 1 round(s) of 2 steps show the command works; its ratios need more to hold" in said
    out = said
    assert "rnnjax's step is" in out and "2 seeds in one program: a step of all of them is" in out
    assert "rnnjax's step allocates" in out and "flax's" in out


STEP = {"ms_per_step": 1.5, "ms_per_step_min": 1.4, "ms_per_step_max": 1.6, "compile_s": 2.0,
        "tokens_per_s": 1e6, "gflops": 3.0}          # measure_steps's fields; no timing is checked

# The parts after the step table, faked: those the tests do not look at.
LATER_PARTS = {"measure_compile_cache": lambda data: {"no_cache_s": 1.0, "cold_cache_s": 1.0,
                                                      "warm_cache_s": 0.5},
               "measure_generation": lambda data: {"num_chars": 1, "compiled_ms": 1.0, "d2l_loop_ms": 2.0,
                                                   "ratio": 2.0, "batch": 1, "batched_ms": 1.0,
                                                   "batched_chars_per_s": 1.0}}


@pytest.fixture
def bench_main(monkeypatch):
    """The benchmark's module (the package exports main()), its measuring failing the test: a refusal
    comes before any. ``faked(...)`` makes it measure made-up figures instead; the data is not read."""
    from experiments.benchmark import command as module

    def measured(*args, **kwargs):
        raise AssertionError("measured before refusing")
    for name in ("TimeMachine", "measure_steps", "run_sizes", "contenders_for", "machine_info"):
        monkeypatch.setattr(module, name, measured)

    def faked(small_data, **parts):
        monkeypatch.setattr(arguments, "timemachine_path", lambda path: "timemachine.txt")
        monkeypatch.setattr(module, "TimeMachine", lambda *a, **k: small_data)
        monkeypatch.setattr(module, "contenders_for", lambda args, one_device_too: [])
        monkeypatch.setattr(module, "machine_info", lambda: {"cpu": "", "cores": 1, "devices": [],
                                                             "device_kind": "", "torch_device": None,
                                                             "versions": {}})
        monkeypatch.setattr(module, "measure_steps", lambda *a: {"rnnjax": dict(STEP)})
        for name, part in parts.items():
            monkeypatch.setattr(module, name, part)
    module.faked = faked
    return module


def refused(argv: list[str], capsys, status: int = 1) -> str:
    """``main(argv)``'s one line on stderr, which it exits ``status`` with (2: the parser's)."""
    if status == 2:
        with pytest.raises(SystemExit) as e:
            benchmark.main(argv)
        assert e.value.code == 2
    else:
        assert benchmark.main(argv) == status
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv,says", [
    (["--devices", "0"], "--devices must be at least 1, got 0"),
    (["--sizes", "small", "--devices", "-1"], "--devices must be at least 1, got -1"),
    (["--recipe-rounds", "-1", "--runs", "-3"], "--recipe-rounds must be at least 0, got -1"),
    (["--recipe-rounds", "0", "--runs", "-3"], "--runs must be at least 0, got -3"),
    (["--runs", "1001"], "--runs must be at most 1,000, got 1,001"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--sizes", "small", "--runs", "2"], "--runs is for d2l's recipe, which --sizes does not run"),
    (["--sizes", "small", "--sweep"], "--sweep is for d2l's recipe, which --sizes does not run"),
    (["--sizes", "small", "--runs", "0"], "--runs is for d2l's recipe"),        # 0 is typed too
    (["--num-layers", "0"], "--num-layers must be at least 1, got 0"),
    (["--num-layers", "100000"], "--num-layers must be at most 64, got 100,000")])
def test_counts_out_of_range_are_refused_in_one_line_with_status_1(bench_main, tmp_path, monkeypatch, capsys,
                                                                   argv, says):
    """Status 2 is the parser's (a flag it does not know, a value not a number), as in every command."""
    monkeypatch.chdir(tmp_path)
    said = refused(argv, capsys)
    assert says in said and "--help" not in said
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv,says", [
    (["--devices", "99"], "--devices 99: this process has 4 local device(s)"),
    (["--devices", "3", "--recipe-rounds", "0", "--runs", "0"], "3 devices cannot split the batch of 1024"),
    (["--sizes", "small", "--devices", "3"], "3 devices cannot split the batch of 64 evenly; give --devices "
                                             "2 or 1"),
    (["--data", ""], "--data is empty"),
    (["--data", "."], "is a directory"),
    (["--data", "missing.txt"], "No such file: missing.txt"),
    (["--data", "notes.txt"], "it is not d2l's timemachine.txt")])
@pytest.mark.cpu_devices(4)
def test_bad_settings_are_refused_in_one_line_before_any_measuring(bench_main, real_text_path, tmp_path,
                                                                   monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my notes")
    assert says in refused(argv if "--data" in argv else ["--data", real_text_path, *argv], capsys)
    assert [f.name for f in tmp_path.iterdir()] == ["notes.txt"]


def test_output_paths_are_checked_before_any_measuring_and_no_file_of_the_users_is_replaced(
        bench_main, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(arguments, "timemachine_path", lambda path: "timemachine.txt")
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "a.png").write_text("a plot")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "bench.json").write_text('{"mine": 1}')
    (tmp_path / "mine.json.tmp").write_text("a file of mine")         # what writing mine.json would remove
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "sweep.png").write_text("my plot")          # no bench.json of ours beside it
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / LOCKFILE).write_text("my lock, not a pid")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for argv, says in [(["--out", ""], "--out is empty"), (["--json", ""], "--json is empty"),
                       (["--json", "new.json", "--out", "/etc"], "--out /etc holds only --sweep's plot when"),
                       (["--json", "notes.txt"], "notes.txt exists and is not the results of an earlier "
                                                 "benchmark"),
                       (["--json", "theirs"], "--json theirs: theirs is a folder"),
                       (["--out", "notes.txt"], "--out notes.txt cannot be made"),
                       (["--json", "notes.txt/b.json"], "--json notes.txt/b.json cannot be made"),
                       (["--out", "theirs"], "--out theirs holds a.png, which the benchmark did not write"),
                       (["--out", "other"], "other/bench.json exists and is not the results of an earlier"),
                       (["--json", "new.json", "--sweep", "--out", "theirs"], "--out theirs holds"),
                       (["--json", "notes.txt.x/"], "--json notes.txt.x/ names a folder"),
                       (["--json", "mine.json"], "mine.json.tmp exists, which writing mine.json would"),
                       (["--out", "plots"], "--out plots holds sweep.png, which the benchmark did not write"),
                       (["--out", "locked"], "--out locked holds .lock, which the benchmark did not write")]:
        assert says in refused(argv, capsys), argv
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "notes.txt").read_text() == "my notes"
    (tmp_path / "cut").mkdir()          # a stop killed as it first wrote bench.json: its own, whole
    (tmp_path / "cut" / "bench.json.tmp").write_text(json.dumps({"machine": {}, "ratio_meaning": ""}))
    assert outputs.check_outputs(None, "cut", False) == (Path("cut/bench.json"), Path("cut"))
    (tmp_path / "cut" / "bench.json.tmp").write_text('{"machine": ')
    with pytest.raises(ValueError, match="holds bench.json.tmp, which the benchmark did not write"):
        outputs.check_outputs(None, "cut", False)


def test_a_rerun_replaces_only_an_earlier_benchmarks_results_and_says_so(bench_main, small_data, tmp_path,
                                                                         capsys):
    def recipes(contenders, rounds):
        raise AssertionError("--recipe-rounds 0 runs none")
    bench_main.faked(small_data, measure_recipes=recipes, **LATER_PARTS)
    (tmp_path / "bench.json").write_text(json.dumps({"machine": {}, "ratio_meaning": "", "old": 1}))
    (tmp_path / "sweep.png").write_text("the earlier run's plot")
    assert outputs.is_ours(tmp_path / "bench.json")
    assert benchmark.main(["--recipe-rounds", "0", "--runs", "0", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"replacing {tmp_path / 'bench.json'}, an earlier benchmark's")
    kept = json.loads((tmp_path / "bench.json").read_text())
    assert kept["contenders"] == {"rnnjax": STEP} and "old" not in kept
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCKFILE, "bench.json"]      # not the old plot


def test_sizes_remove_an_earlier_plot_at_their_first_save_not_before(
        bench_main, small_data, tmp_path, capsys):
    """A stop before any size is measured leaves the folder as it was, plot and all."""
    (tmp_path / "bench.json").write_text(json.dumps({"machine": {}, "ratio_meaning": ""}))
    (tmp_path / "sweep.png").write_text("the earlier run's plot")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    bench_main.faked(small_data, run_sizes=stopped)
    assert benchmark.main(["--sizes", "small", "--out", str(tmp_path)]) == 130
    assert "(" + str(tmp_path / "bench.json") + " is as it was)" in capsys.readouterr().err
    assert (tmp_path / "sweep.png").read_text() == "the earlier run's plot"

    def one_size(name, data, json_path, *args, saved, **kwargs):
        json_path.write_text(json.dumps({"machine": {}, "ratio_meaning": "", "sizes": []}))
        saved()
    bench_main.faked(small_data, run_sizes=one_size)
    assert benchmark.main(["--sizes", "small", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "sweep.png").exists()


def test_one_run_writes_a_folder_at_a_time_and_a_full_stdout_is_one_line(bench_main, small_data, tmp_path,
                                                                         capsys, monkeypatch):
    bench_main.faked(small_data, measure_compile_cache=lambda data: pytest.fail("measured"))
    argv = ["--recipe-rounds", "0", "--runs", "0", "--out", str(tmp_path / "out")]
    with lock(tmp_path / "out"):            # another benchmark writing there
        err = refused(argv, capsys)
    assert err.startswith(f"error: --out {tmp_path / 'out'} is in use by ") and err.rstrip().endswith(
        "or use another --out.")
    full = OSError(28, "No space left on device")

    class Full:
        def write(self, text):
            raise full

        def flush(self):
            raise full
    monkeypatch.setattr(sys, "stdout", Full())
    assert benchmark.main(argv) == 1
    assert capsys.readouterr().err == ("Stopped: No space left on device (writing the output); nothing was "
                                       "written.\n")
    full = BrokenPipeError(32, "Broken pipe")       # the reader of a pipe exited: what was kept, too
    monkeypatch.setattr(stopping, "drop_output", lambda: None)
    assert benchmark.main(argv) == 128 + signal.SIGPIPE
    assert capsys.readouterr().err == ("Stopped: the output was closed (the reader of a pipe exited); "
                                       "nothing was written.\n")


def test_the_sweeps_plot_is_written_whole(bench_main, small_data, tmp_path):
    row = {"contender": "rnnjax", "num_hiddens": 32, "batch_size": 64, "num_steps": 32, "tokens_per_s": 1e5}
    bench_main.faked(small_data, run_sweep=lambda args, data_path, rows, saved: rows.append(row),
                     **LATER_PARTS)
    assert benchmark.main(["--recipe-rounds", "0", "--runs", "0", "--sweep", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCKFILE, "bench.json", "sweep.png"]    # no .tmp
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "bench.json").read_text())["sweep"] == [row]


def test_a_benchmark_cut_short_keeps_what_it_measured(bench_main, small_data, tmp_path, capsys):
    """bench.json is written after each part: a run stopped in the compile-cache part keeps the step table,
    says so in one line, and exits 128 + signal (fit's stop of a recipe unwinds as Interrupted)."""
    def cut(data):
        raise Interrupted("fit's own line", signal.SIGTERM)
    bench_main.faked(small_data, measure_compile_cache=cut)
    assert benchmark.main(["--recipe-rounds", "0", "--out", str(tmp_path)]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == (f"Stopped by signal 15 (SIGTERM); {tmp_path / 'bench.json'} keeps "
                                       "what was measured before it.\n")
    kept = json.loads((tmp_path / "bench.json").read_text())
    assert kept["contenders"] == {"rnnjax": STEP} and "compile_cache" not in kept
    assert kept["complete"] is False                 # a reader of the file alone can tell


def test_one_benchmark_writes_a_json_at_a_time_and_its_lock_goes_with_it(bench_main, tmp_path, capsys):
    j, held = tmp_path / "r.json", tmp_path / "r.json.lock"
    with outputs.writing(j):
        assert held.exists()
        said = refused(["--sizes", "small", "--json", str(j)], capsys)      # before any measuring
        assert said == (f"error: --json {j}: another benchmark is writing r.json there; wait for it to end, "
                        "or give another --json.\n")
    with outputs.writing(tmp_path / "bench.json"):      # the same file by --out: one lock
        said = refused(["--sizes", "small", "--out", str(tmp_path)], capsys)
        assert said == (f"error: --out {tmp_path}: another benchmark is writing bench.json there; wait for "
                        "it to end, or give another --out.\n")
    assert not held.exists() and not j.exists()
    held.write_text("someone's")
    with pytest.raises(ValueError, match="which the benchmark takes as its lock; move it aside"):
        with outputs.writing(j):
            pass
    assert held.read_text() == "someone's"
    # A signal's exit_now, which unwinds nothing, removes it too, and the results it cut short (which the
    # same command would find there); a --json in a folder not yet made.
    j = tmp_path / "new" / "r.json"
    script = ("import sys; from pathlib import Path; from experiments import stopping; "
              "from experiments.benchmark import outputs\n"
              "with outputs.writing(Path(sys.argv[1])):\n"
              "    Path(sys.argv[1] + '.tmp').write_text('{')\n    stopping.exit_now('stopped', 3)")
    proc = subprocess.run([sys.executable, "-c", script, str(j)], capture_output=True, text=True)
    assert proc.returncode == 3 and proc.stderr == "stopped\n", proc.stderr
    assert sorted(p.name for p in j.parent.iterdir()) == []


@pytest.mark.parametrize("json_in", ["out", "a new folder"])
def test_a_json_in_the_run_folder_or_in_a_folder_not_yet_made_is_written(bench_main, small_data, tmp_path,
                                                                         json_in):
    """The --json's lock, in --out, is not someone's file there (the sweep writes --out too)."""
    row = {"contender": "rnnjax", "num_hiddens": 32, "batch_size": 64, "num_steps": 32, "tokens_per_s": 1e5}
    sweep = lambda args, data_path, rows, saved: rows.append(row)
    bench_main.faked(small_data, run_sweep=sweep, **LATER_PARTS)
    j = tmp_path / "out" / "bench.json" if json_in == "out" else tmp_path / "new" / "results.json"
    assert benchmark.main(["--recipe-rounds", "0", "--runs", "0", "--sweep", "--out", str(tmp_path / "out"),
                           "--json", str(j)]) == 0
    assert json.loads(j.read_text())["sweep"] == [row] and not j.with_name(j.name + ".lock").exists()


@pytest.mark.slow
def test_the_compile_timing_script_compiles_the_training_program_fresh(real_text_path, fresh_env):
    child = subprocess.run([sys.executable, "-c", measure._COMPILE, "-", real_text_path], env=fresh_env(),
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0 and float(child.stdout.split()[-1]) > 0, child.stderr


@pytest.mark.parametrize("script, said", [
    ("import sys; sys.exit('no memory')", "a fresh process failed (exit status 1): no memory"),
    ("import os; os.kill(os.getpid(), 9)", "a fresh process failed (killed by signal 9)"),
])
def test_a_compile_timing_process_that_fails_is_recorded_and_the_later_parts_run(
        bench_main, small_data, tmp_path, capsys, monkeypatch, script, said):
    monkeypatch.setattr(measure, "_COMPILE", script)
    assert measure.measure_compile_cache(None) == {"error": said}
    bench_main.faked(small_data, measure_compile_cache=measure.measure_compile_cache,
                     measure_generation=LATER_PARTS["measure_generation"])
    assert benchmark.main(["--recipe-rounds", "0", "--runs", "0", "--out", str(tmp_path)]) == 0
    assert f"compiling the training program in a fresh process: failed, {said}\n" in capsys.readouterr().out
    kept = json.loads((tmp_path / "bench.json").read_text())
    assert kept["compile_cache"] == {"error": said} and kept["generation"] and kept["complete"] is True


def test_a_sweep_cut_short_keeps_its_points_so_far(bench_main, small_data, tmp_path, capsys):
    row = {"contender": "rnnjax", "num_hiddens": 32, "batch_size": 64, "num_steps": 32, "tokens_per_s": 1e5}

    def sweep(args, data_path, rows, saved):
        rows.append(row)
        saved()
        raise Interrupted("", signal.SIGINT)       # in the second point
    bench_main.faked(small_data, run_sweep=sweep, **LATER_PARTS)
    assert benchmark.main(["--recipe-rounds", "0", "--runs", "0", "--sweep", "--out", str(tmp_path)]) == 130
    kept = json.loads((tmp_path / "bench.json").read_text())
    assert kept["sweep"] == [row] and kept["complete"] is False
    assert "keeps what was measured before it" in capsys.readouterr().err


def test_it_measures_under_handlers_that_stop_it_at_once_in_one_line(bench_main, small_data, tmp_path,
                                                                     monkeypatch):
    seen = {}

    def cut(data):
        seen["handlers"] = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
        raise Interrupted("", signal.SIGINT)
    bench_main.faked(small_data, measure_compile_cache=cut)
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    (tmp_path / "bench.json").write_text(json.dumps({"machine": {}, "ratio_meaning": ""}))
    stop = outputs.Stop(tmp_path / "bench.json")
    assert stop.message(signal.SIGINT) == (f"Stopped by signal 2 (SIGINT); nothing was written "
                                           f"({tmp_path / 'bench.json'} is as it was).")
    assert benchmark.main(["--recipe-rounds", "0", "--out", str(tmp_path)]) == 130
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before
    exits = []
    monkeypatch.setattr(outputs.stopping, "exit_now", lambda message, status: exits.append((message, status)))
    for handler in seen["handlers"]:
        handler(signal.SIGTERM, None)
    said = f"Stopped by signal 15 (SIGTERM); {tmp_path / 'bench.json'} keeps what was measured before it."
    assert exits == [(said, 143)] * 2


@pytest.mark.slow
@pytest.mark.parametrize("signum,when", [(signal.SIGINT, "loading"), (signal.SIGTERM, "measuring")])
def test_a_signal_stops_the_command_with_one_line_and_128_plus_the_signal(real_text_path, tmp_path,
                                                                          fresh_env, signum, when):
    """While JAX loads (0.5 s in: the package's import), or once the first size is written: no
    traceback, and bench.json keeps that size."""
    path = tmp_path / "b.json"
    # No figure is read: the suite's compile flags write the first size sooner.
    proc = subprocess.Popen([sys.executable, "-m", "experiments.benchmark", "--sizes", "small", "--rounds",
                             "1", "--steps", "1", "--devices", "1", "--data", real_text_path, "--json",
                             str(path)], cwd=Path(benchmark.__file__).parents[2],
                            env=fresh_env(**SUITE_XLA_FLAGS), text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + (0.5 if when == "loading" else 240)
    while time.monotonic() < deadline and not path.exists() and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum and "Traceback" not in err and err.count("\n") == 1, err
    if when == "loading":
        assert err == f"Stopped by signal {signum} while starting, before anything was written.\n"
        assert not path.exists()
    else:
        name = signal.Signals(signum).name
        assert err == f"Stopped by signal {signum} ({name}); {path} keeps what was measured before it.\n"
        assert json.loads(path.read_text())["sizes"][0]["label"] == "rnn 32/64/16"


def test_flop_count_matches_the_matmuls():
    H, V = 32, 28
    forward = 2 * H * H + 2 * H * V          # recurrence and output layer, per token
    assert benchmark.model_flops_per_token(H, V) == 3 * forward
    # Two GRU layers: three gates in the first layer's recurrence and in both matmuls of the second.
    assert benchmark.model_flops_per_token(H, V, "gru", 2) == 3 * (2 * 3 * H * H * 3 + 2 * H * V)


def test_a_ratio_below_one_reads_as_slower():
    assert benchmark.speed_words(1.47) == "1.47x faster"
    assert benchmark.speed_words(0.68) == "1.47x slower"
    assert benchmark.speed_words(1.001) == "as fast"
    size = {"label": "lstm 512/512/64", "auto_kernel": "fused",
            "ratios": {"torch lean": 0.5, "flax": 2.0, "rnnjax plain": 0.999}}
    assert ratio_lines(size) == "lstm 512/512/64: rnnjax (fused) is 2.00x slower than torch lean, 2.00x " \
                                "faster than flax, as fast as rnnjax plain"


def test_the_gpu_sizes_are_the_measured_table_the_largest_first():
    """A bench the time cuts keeps the sizes it finished: the 2-layer LSTM 1024 (the GPU targets') and the
    LSTM 512 come first."""
    assert [s.label for s in sizes.settings("gpu")] == [
        "lstm 1024/256/64 x2", "lstm 512/512/64", "rnn 32/1024/32", "gru 32/1024/32", "lstm 32/1024/32",
        "gru 32/1024/32 x2", "rnn 512/1024/32"]
    # The small set has every contender (a GRU's are the RNN's), and depth: the 2-layer LSTM last (a stopped
    # run has the quickest).
    small = sizes.settings("small")
    assert [(s.cell, s.num_layers) for s in small] == [("rnn", 1), ("lstm", 2)]
    assert set(sizes.applicable_kernels(small[0], "cpu")) == set(sizes.applicable_kernels(
        dataclasses.replace(small[0], cell="gru"), "cpu"))
    # bfloat16 at the large LSTMs (and the small set's, so that --quick runs it), each a size of its set.
    assert sizes.BFLOAT16_AT["gpu"] == {"lstm 1024/256/64 x2", "lstm 512/512/64"}
    for name, labels in sizes.BFLOAT16_AT.items():
        assert labels and labels <= {s.label for s in sizes.settings(name)}, name


def test_every_kernel_that_can_train_a_size_contends_and_cudnn_is_a_gpu_lstm_measured_last():
    lstm, gru = Setting(cell="lstm"), Setting(cell="gru", num_layers=2)
    assert sizes.applicable_kernels(lstm, "gpu") == ["plain", "fused", "hoisted", "cudnn"]
    assert sizes.applicable_kernels(lstm, "cpu") == ["plain", "fused", "hoisted"]
    assert sizes.applicable_kernels(gru, "gpu") == ["plain", "fused", "hoisted"]
    torch = ["torch lean", "torch d2l"] if benchmark.torch_available() else []
    names = [c.name for c in sizes.contenders_at(lstm, 1, "gpu")]
    assert names == ["rnnjax plain", "rnnjax fused", "rnnjax hoisted", "flax", *torch, "rnnjax cudnn"]
    bf16 = sizes.contenders_at(lstm, 1, "gpu", bfloat16=True)
    assert [c.name for c in bf16] == names[:3] + [sizes.BF16] + names[3:]
    assert bf16[3].overrides == {"kernel": "hoisted", "compute_dtype": "bfloat16"}
    assert "rnnjax cudnn" not in [c.name for c in sizes.contenders_at(lstm, 1, "cpu", bfloat16=True)]


def test_the_ablations_time_each_kernel_but_the_one_rnnjax_trains_with_once():
    from experiments.benchmark.command import ablation_variants
    s = Setting(cell="lstm")
    auto = kernels.choose(s.config)
    names = [v.name for v in ablation_variants(s, 1)]
    others = [f"rnnjax kernel={k}" for k in sizes.applicable_kernels(s, jax.default_backend()) if k != auto]
    assert names == ["rnnjax", *others, "rnnjax unroll=8", "rnnjax unroll=32"] and len(others) >= 2


def test_bfloat16s_ratio_is_hoisted_float32s_step_over_its_own():
    ms = {"rnnjax plain": 4.0, "rnnjax hoisted": 3.0, sizes.BF16: 2.0, "flax": 6.0}
    size = {"auto_kernel": "hoisted", "contenders": {n: {"ms_per_step": v} for n, v in ms.items()}}
    size["contenders"]["rnnjax cudnn"] = {"error": "NotImplementedError: no"}
    assert sizes.ratios(size) == {"ratios": {"rnnjax plain": 4 / 3, sizes.BF16: 2 / 3, "flax": 2.0},
                                  "bf16_ratio": 1.5}
    size["auto_kernel"] = "fused"      # a CPU's: not measured here, so no ratios against it; bf16's stays
    assert sizes.ratios(size) == {"ratios": {}, "bf16_ratio": 1.5}
    size.update(sizes.ratios(size), label="lstm 48/32/16 x2")
    assert ratio_lines(size).endswith("; rnnjax hoisted in bfloat16 is 1.50x faster than in float32")
    del size["contenders"][sizes.BF16]
    assert "bf16_ratio" not in sizes.ratios(size)


def test_a_steps_memory_is_what_it_allocates_beyond_what_it_is_given():
    """XLA's count: outputs and temporaries, less outputs written over donated arguments. rnnjax's step
    keeps more for the backward of a longer window; more text (an argument it is given) adds nothing."""
    x = jnp.ones((512, 512))                      # 1 MiB
    assert xla_step_mb(jax.jit(lambda x: x + 1).lower(x).compile()) == 1.0
    assert xla_step_mb(jax.jit(lambda x: x + 1, donate_argnums=0).lower(x).compile()) == 0.0

    def step_mb(num_steps: int, num_train: int) -> tuple[float, int]:
        data = TimeMachine(8, num_steps, num_train=num_train, num_val=8, text=small_text(9000))
        rnnjax = Rnnjax(devices=1)
        rnnjax.prepare(Setting(batch_size=8, num_steps=num_steps, num_hiddens=16), data)
        return rnnjax.step_memory_mb(), len(data.tokens)
    (short, chars), (more_text, more_chars) = step_mb(8, 16), step_mb(8, 160)
    assert more_chars > 2 * chars and more_text == short
    assert step_mb(32, 16)[0] > short > 0


@pytest.mark.cpu_devices(2)
def test_a_step_on_two_devices_counts_the_memory_of_both(small_data):
    """Each holds half the batch's activations and a whole copy of the parameters and their gradients."""
    def step_mb(devices: int) -> float:
        rnnjax = Rnnjax(devices=devices)
        rnnjax.prepare(Setting(batch_size=small_data.batch_size, num_steps=small_data.num_steps,
                               num_hiddens=16), small_data)
        return rnnjax.step_memory_mb()
    one = step_mb(1)
    assert one < step_mb(2) < 2 * one


def test_torchs_step_memory_is_its_cuda_allocators_peak_over_a_step():
    said, MB = [], 2**20

    class Cuda:
        allocated = peak = 100 * MB               # what the model and data hold
        synchronize = staticmethod(lambda: said.append("sync"))
        memory_allocated = max_memory_allocated = None

        def reset_peak_memory_stats(self):
            said.append("reset")
            self.peak = self.allocated

    cuda = Cuda()
    cuda.memory_allocated, cuda.max_memory_allocated = lambda: cuda.allocated, lambda: cuda.peak

    def a_step(n):                                # its peak 48 MB above, freed as it ends
        said.append(f"{n} step")
        cuda.peak = cuda.allocated + 48 * MB

    def zero_grad(set_to_none):                   # the last step's gradients, 10 MB, freed: the step's count
        said.append(f"gradients freed: {set_to_none}")
        cuda.allocated -= 10 * MB
    lean = torch_contenders.TorchLean()
    lean.torch, lean.device, lean.steps = SimpleNamespace(cuda=cuda), "cuda", a_step
    lean.model = (None, None, [], SimpleNamespace(zero_grad=zero_grad))
    assert lean.step_memory_mb() == 48.0
    assert said == ["gradients freed: True", "sync", "reset", "1 step"] and cuda.allocated == 90 * MB
    lean.device = "cpu"
    assert lean.step_memory_mb() is None and len(said) == 4


class _Fake(Contender):
    def __init__(self, name, fail=False):
        self.name, self.fail, self.ran = name, fail, 0

    def prepare(self, s, data):
        if self.fail:
            raise RuntimeError("no such kernel on this backend\nmore detail")
        return 0.01

    def steps(self, n):
        self.ran += n


class _FailsInARound(_Fake):
    def steps(self, n):
        super().steps(n)
        if self.ran > 1:             # the warm-up passes
            raise RuntimeError("CUDA_ERROR_ILLEGAL_ADDRESS")


def test_a_contender_that_fails_in_a_round_is_recorded_and_the_others_go_on(small_data):
    good, bad = _Fake("good"), _FailsInARound("bad")
    s = Setting(batch_size=small_data.batch_size, num_steps=small_data.num_steps)
    res = measure_steps([bad, good], s, small_data, rounds=3, steps=2, warmup=1, log=lambda *_: None,
                        keep_going=True)
    assert res["bad"] == {"error": "RuntimeError: CUDA_ERROR_ILLEGAL_ADDRESS"} and bad.ran == 3
    assert good.ran == 1 + 3 * 2 and len(res["good"]["rounds_ms"]) == 3
    with pytest.raises(RuntimeError):
        measure_steps([_FailsInARound("bad")], s, small_data, rounds=1, steps=1, warmup=1,
                      log=lambda *_: None)


class _Uncounted(_Fake):
    def step_memory_mb(self):
        raise RuntimeError("memory_analysis is not implemented\nmore detail")


def test_a_step_whose_memory_cannot_be_counted_is_still_timed(small_data):
    s = Setting(batch_size=small_data.batch_size, num_steps=small_data.num_steps)
    res = measure_steps([_Uncounted("a"), _Fake("b")], s, small_data, rounds=2, steps=1, warmup=1,
                        log=lambda *_: None)
    assert res["a"]["step_mb"] is None and len(res["a"]["rounds_ms"]) == 2
    assert res["a"]["step_mb_error"] == "RuntimeError: memory_analysis is not implemented"
    assert res["b"]["step_mb"] is None and "step_mb_error" not in res["b"]


def test_memory_ratios_are_their_mb_over_the_chosen_kernels_and_read_right():
    mb = {"rnnjax fused": 2.0, "flax": 3.0, "torch lean": 1.0, "torch d2l": None}
    size = {"label": "gru 32/64/16", "auto_kernel": "fused",
            "contenders": {n: {"ms_per_step": 1.0, "step_mb": v} for n, v in mb.items()}}
    size.update(sizes.ratios(size))
    assert size["memory_ratios"] == {"flax": 1.5, "torch lean": 0.5}
    assert ratio_lines(size).endswith("; its step allocates 1.50x less than flax's, 2.00x more than "
                                      "torch lean's")
    rows = sizes_table([size]).splitlines()
    assert rows[2].startswith("MB a step allocates")
    assert rows[3].split() == ["gru", "32/64/16", "2.0", "3.0", "1.0", "-"]
    for r in size["contenders"].values():
        r["step_mb"] = None
    assert "memory_ratios" not in sizes.ratios(size) and len(sizes_table([size]).splitlines()) == 2


class _Cudnn(_Fake):
    """Reads bench.json as it starts: what a crash of cuDNN's binding there would leave."""

    def __init__(self, json_path):
        super().__init__("rnnjax cudnn")
        self.json_path, self.saw = json_path, None

    def prepare(self, s, data):
        self.saw = json.loads(self.json_path.read_text())
        return super().prepare(s, data)


def test_run_sizes_writes_the_others_figures_before_cudnn_runs(small_data, tmp_path, monkeypatch):
    path = tmp_path / "bench.json"
    cudnn = _Cudnn(path)
    fakes = [_Fake("rnnjax hoisted"), _Fake(sizes.BF16), _Fake("flax"), cudnn]
    monkeypatch.setitem(sizes.SIZES, "tiny", [("lstm", 8, small_data.batch_size, small_data.num_steps, 2)])
    monkeypatch.setitem(sizes.ROUNDS, "tiny", (2, 3, 1))
    monkeypatch.setattr(sizes, "TimeMachine", lambda *args, **kwargs: small_data)
    monkeypatch.setattr(sizes, "contenders_at", lambda s, devices, backend, bfloat16: fakes)
    monkeypatch.setattr(sizes.kernels, "choose", lambda config, backend=None: "hoisted")
    out = sizes.run_sizes("tiny", None, path, log=lambda *_: None)
    before = cudnn.saw["sizes"][0]
    assert cudnn.saw["complete"] is False and out["complete"] is True
    assert list(before["contenders"]) == ["rnnjax hoisted", sizes.BF16, "flax"]
    assert set(before["ratios"]) == {sizes.BF16, "flax"} and "bf16_ratio" in before
    after = json.loads(path.read_text())
    assert after == out and list(after["sizes"][0]["contenders"]) == [f.name for f in fakes]
    assert set(after["sizes"][0]["ratios"]) == {sizes.BF16, "flax", "rnnjax cudnn"}
    assert all(f.ran == 1 + 2 * 3 for f in fakes)


def test_the_gpu_sizes_on_a_cpu_warn_first_that_they_take_hours(small_data, tmp_path, monkeypatch):
    """Before, its header alone, then no line for the hours its first size takes on a CPU."""
    said = []
    monkeypatch.setitem(sizes.SIZES, "gpu", [("rnn", 8, small_data.batch_size, small_data.num_steps, 1)])
    monkeypatch.setitem(sizes.ROUNDS, "gpu", (1, 1, 1))
    monkeypatch.setattr(sizes, "TimeMachine", lambda *args, **kwargs: small_data)
    monkeypatch.setattr(sizes, "contenders_at", lambda s, devices, backend, bfloat16: [_Fake("rnnjax")])
    sizes.run_sizes("gpu", None, tmp_path / "bench.json", log=said.append)
    warning = "warning: --sizes gpu holds sizes for an accelerator: on a CPU each takes hours"
    warned = [i for i, line in enumerate(said) if line.startswith(warning)]
    assert warned and warned[0] < len(said) - 2         # before the size's lines
    sizes.run_sizes("small", None, tmp_path / "bench.json", log=said.append)
    assert sum(line.startswith("warning: --sizes") for line in said) == 1


def test_a_broken_torch_is_reported_and_the_bench_goes_on(monkeypatch):
    """Not only ImportError: a torch whose CUDA libraries do not load raises OSError as it is imported."""
    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                raise OSError("libcudnn.so.9: cannot open shared object file")

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    assert torch_contenders.torch_problem() == "OSError: libcudnn.so.9: cannot open shared object file"
    assert not benchmark.torch_available() and torch_contenders.torch_precision() == {}
    info = machine_info()
    assert info["torch_error"].startswith("OSError") and info["torch_device"] is None
    said = torch_said(info)
    if info["versions"]["torch"] is None:                  # no torch here: only the import was made to fail
        assert said == "torch not installed"
    else:
        assert said == "torch not importable (OSError: libcudnn.so.9: cannot open shared object file)"
    absent = {**info, "torch_error": "ModuleNotFoundError: No module named 'torch'",
              "versions": {**info["versions"], "torch": None}}          # what machine_info says without it
    assert torch_said(absent) == "torch not installed"
    names = [c.name for c in sizes.contenders_at(Setting(cell="lstm"), 1, "cpu")]
    assert names == ["rnnjax plain", "rnnjax fused", "rnnjax hoisted", "flax"]


def test_a_busy_machine_and_torch_s_threads_are_said():
    """On a loaded 2-core machine torch's two CPU threads ran 25x slower, JAX's not: ratios of 30x, unsaid."""
    info = {"load_average": 2.9, "cores": 2, "torch_device": "cpu", "torch_threads": 2, "versions": {}}
    assert busy(info).startswith("warning: the machine is busy (load average 2.9 on 2 cores): other work on "
                                 "the cores slows PyTorch's CPU threads far more than JAX's, so the times")
    assert busy({**info, "load_average": 1.0}) == "" and busy({"cores": 2}) == ""
    for elsewhere in (None, "NVIDIA H200"):      # without torch on the CPU the figures move too
        assert "slows each contender's dispatch and compiling unevenly, so the times and ratios are not an " \
               "idle machine's" in busy({**info, "torch_device": elsewhere})
    assert torch_said(info) == "torch on cpu (2 threads)"
    assert torch_said({**info, "torch_device": "NVIDIA H200"}) == "torch on NVIDIA H200"
    measured = machine_info()
    assert measured["load_average"] >= 0
    assert (measured["torch_threads"] is None) == (not benchmark.torch_available())


def test_a_contender_that_fails_is_recorded_and_the_others_are_measured(small_data):
    good, bad = _Fake("good"), _Fake("bad", fail=True)
    s = Setting(batch_size=small_data.batch_size, num_steps=small_data.num_steps)
    res = measure_steps([bad, good], s, small_data, rounds=2, steps=3, warmup=1, log=lambda *_: None,
                        keep_going=True)
    assert res["bad"] == {"error": "RuntimeError: no such kernel on this backend"}
    assert good.ran == 1 + 2 * 3 and len(res["good"]["rounds_ms"]) == 2 and res["good"]["ms_per_step"] >= 0
    with pytest.raises(RuntimeError):
        measure_steps([bad], s, small_data, rounds=1, steps=1, log=lambda *_: None)
    table = sizes_table([{"label": "rnn 32/64/16", "auto_kernel": "fused", "contenders": res}])
    assert "failed" in table and f"{res['good']['ms_per_step']:.2f}" in table
