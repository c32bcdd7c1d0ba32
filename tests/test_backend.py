import gc
import os
import platform
import re
import subprocess
import sys

import pytest

from rnnjax import backend

CHILD = """
import sys, jax, jax.numpy as jnp
from rnnjax import backend
backend.enable_compilation_cache(sys.argv[1])
print(float(jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((64, 64))).sum()))
"""


@pytest.mark.slow
def test_compilation_cache_is_written_then_reused(tmp_path, fresh_env):
    cache = tmp_path / "jax-cache"
    env = fresh_env()
    run = lambda: subprocess.run([sys.executable, "-c", CHILD, str(cache)], env=env, capture_output=True,
                                 text=True, timeout=120, check=True).stdout
    first = run()
    entries = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert any("jit" in name for name in entries)
    assert run() == first
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == entries     # read, not rewritten
    # An entry cut short (a full disk, a kill): JAX warned at every later run, as it never writes over one.
    [entry] = [p for p in cache.iterdir() if p.name.startswith("jit__lambda") and p.name.endswith("-cache")]
    entry.write_bytes(entry.read_bytes()[:100])
    child = subprocess.run([sys.executable, "-c", CHILD, str(cache)], env=env, capture_output=True, text=True,
                           timeout=120, check=True)
    assert child.stdout == first and child.stderr.startswith(f"warning: JAX's compilation cache in {cache} "
                                                             "held an entry it cannot read (")
    assert child.stderr.endswith("); removed 1 cut short: it compiles afresh.\n")
    assert child.stderr.count("\n") == 1
    assert len(entry.read_bytes()) > 100                 # written again, whole
    assert run() == first


DEVICES_CHILD = """
import sys, jax
from rnnjax import backend
devices = int(sys.argv[2]) if len(sys.argv) > 2 else None
print(backend.use_cpu_cores(int(sys.argv[1]), devices), jax.local_device_count(), backend.use_cpu_cores(64))
"""


@pytest.mark.slow
def test_one_cpu_device_per_core_dividing_the_batch(fresh_env):
    cores = len(os.sched_getaffinity(0))
    expected = max(n for n in range(1, cores + 1) if 1024 % n == 0)
    # Set once, before JAX starts; a second call after that leaves it alone.
    assert _devices(fresh_env(), 1024) == [str(expected), str(expected), "None"]
    prime = 1031                       # no divisor but 1 up to any core count below it
    assert _devices(fresh_env(), prime) == ["1", "1", "None"]


@pytest.mark.slow
def test_the_devices_asked_for_are_made_where_the_cores_allow_even_if_they_do_not_divide_the_batch(fresh_env):
    """``--devices 2 --batch-size 7``: two devices, so that the run says 7 is not divisible by 2."""
    cores = len(os.sched_getaffinity(0))
    asked = min(2, cores)
    assert _devices(fresh_env(), 7, asked) == [str(asked), str(asked), "None"]
    assert _devices(fresh_env(), 7, cores + 1) == ["1", "1", "None"]      # more than the cores: as unasked


@pytest.mark.slow
def test_an_explicit_device_count_wins(fresh_env):
    assert _devices(fresh_env(JAX_NUM_CPU_DEVICES="3"), 1024) == ["None", "3", "None"]
    flags = fresh_env(XLA_FLAGS="--xla_force_host_platform_device_count=3")
    assert _devices(flags, 1024) == ["None", "3", "None"]


@pytest.mark.parametrize("batch_size, devices, name", [
    ("x", None, "batch_size"), (0, None, "batch_size"), (-1, None, "batch_size"), (True, None, "batch_size"),
    (2.0, None, "batch_size"), (8, 0, "devices"), (8, -1, "devices"), (8, "2", "devices")])
def test_use_cpu_cores_refuses_what_is_not_a_whole_number_of_at_least_one(batch_size, devices, name):
    typed = repr(batch_size if name == "batch_size" else devices)
    with pytest.raises(ValueError, match=rf"^use_cpu_cores: {name} must be a whole number >= 1, got "
                                         rf"{re.escape(typed)}\.$"):
        backend.use_cpu_cores(batch_size, devices)


@pytest.mark.parametrize("typed", ["abc", "0", "-1", "-2", "", "1.5", "2049"])
def test_a_jax_num_cpu_devices_that_jax_would_fail_on_or_take_as_one_is_refused(typed, monkeypatch):
    """JAX fails on 0 as it starts its CPU backend and takes -2 as one device; ``abc`` fails JAX's import,
    so here it is set after that (``experiments.stopping.load_jax`` says it in a fresh process)."""
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", typed)
    with pytest.raises(ValueError, match=rf"^\$JAX_NUM_CPU_DEVICES must be a whole number from 1 to 2048 "
                                         rf"\(the CPU devices JAX makes\), got {re.escape(repr(typed))}\.$"):
        backend.use_cpu_cores(8)
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", " 2")          # as JAX reads it: refused by nothing
    assert backend.use_cpu_cores(8) is None                  # this session's count, chosen
    # XLA's flag of the same: 0 was JAX's traceback, "abc" XLA's abort with its usage (hostile pass)
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES")
    flags = f"--xla_cpu_use_thunk_runtime=true --xla_force_host_platform_device_count={typed}"
    monkeypatch.setenv("XLA_FLAGS", flags)
    said = (rf"^\$XLA_FLAGS's --xla_force_host_platform_device_count must be a whole number from 1 to 2048 "
            rf"\(the CPU devices JAX makes\), got {re.escape(repr(typed))}\.$")
    with pytest.raises(ValueError, match=said):
        backend.start()
    # Each one given counts (XLA parses them all), as XLA reads it: quoted and signed are numbers, 1_0 not
    count = "--xla_force_host_platform_device_count="
    monkeypatch.setenv("XLA_FLAGS", f"{count}{typed} {count}4")
    with pytest.raises(ValueError, match=said):
        backend.check_cpu_device_count()
    for taken in ('"4"', "'4'", "+4", '"4'):
        monkeypatch.setenv("XLA_FLAGS", count + taken)
        backend.check_cpu_device_count()
    for refused in ("1_0", "٤"):           # Python's int() takes them, XLA aborts
        monkeypatch.setenv("XLA_FLAGS", count + refused)
        with pytest.raises(ValueError, match=f"got '{refused}'"):
            backend.check_cpu_device_count()


def test_use_cpu_cores_after_jax_started_warns_that_it_changed_nothing(monkeypatch):
    import jax
    jax.devices()                   # started (it is, in this session)
    before = jax.config.jax_num_cpu_devices
    monkeypatch.setattr(backend, "cpu_device_count_chosen", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"left the CPU device count as it is: JAX has already started"):
        assert backend.use_cpu_cores(8) is None
    assert jax.config.jax_num_cpu_devices == before


@pytest.mark.parametrize("count", ["0", "999999"])
def test_the_cli_refuses_a_jax_num_cpu_devices_of_0_or_a_million_in_one_line(
        tmp_path, monkeypatch, capsys, count):
    """A million: no word, a CPU busy for minutes and deaf to SIGTERM until memory ran out."""
    from experiments import timemachine
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", count)
    assert timemachine.main(["--preset", "tiny", "--epochs", "1", "--workdir", str(tmp_path / "w")]) == 1
    assert capsys.readouterr().err == ("error: $JAX_NUM_CPU_DEVICES must be a whole number from 1 to 2048 "
                                       f"(the CPU devices JAX makes), got '{count}'.\n")
    assert not (tmp_path / "w").exists()


def test_every_command_that_starts_jax_refuses_a_cpu_device_count_jax_fails_on(tmp_path, monkeypatch, capsys,
                                                                               real_text_path):
    """sine started JAX without the check: JAX_NUM_CPU_DEVICES=0 was a 40-line traceback of JAX's; the
    device check ran its seven parts to failure."""
    from experiments import device_check, sine
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "0")
    said = ("error: $JAX_NUM_CPU_DEVICES must be a whole number from 1 to 2048 (the CPU devices JAX makes), "
            "got '0'.\n")
    with pytest.raises(ValueError, match=r"^\$JAX_NUM_CPU_DEVICES must be a whole number"):
        backend.start()
    assert sine.main(["--workdir", str(tmp_path / "s"), "--seeds", "0"]) == 1
    assert capsys.readouterr().err == said and not (tmp_path / "s").exists()
    with pytest.raises(SystemExit) as e:
        device_check.parse_args(["--out", str(tmp_path / "check"), "--data", real_text_path])
    assert e.value.code == 1 and capsys.readouterr().err == said and not (tmp_path / "check").exists()


def _devices(env: dict[str, str], batch_size: int, devices: int | None = None) -> list[str]:
    asked = [] if devices is None else [str(devices)]
    return subprocess.run([sys.executable, "-c", DEVICES_CHILD, str(batch_size), *asked],
                          env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                          timeout=120, check=True).stdout.split()


MALLOC_CHILD = """
import ctypes, resource, sys
from rnnjax import backend
took = backend.keep_freed_memory() if sys.argv[1] == "keep" else None
libc, size = ctypes.CDLL(None), 48 << 20   # above the largest block glibc's heap serves by default
libc.malloc.restype = ctypes.c_void_p
def fill_and_free():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(ctypes.c_void_p(block))
fill_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill_and_free()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
def test_keep_freed_memory_reuses_freed_blocks_without_page_faults(fresh_env):
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc only")
    pages = (48 << 20) // os.sysconf("SC_PAGE_SIZE")
    run = lambda mode: subprocess.run([sys.executable, "-c", MALLOC_CHILD, mode], env=fresh_env(),
                                      capture_output=True, text=True, timeout=120, check=True).stdout.split()
    took, faults = run("keep")
    assert took == "True" and int(faults) < pages // 10
    _, faults = run("default")         # the second 48 MB block is mapped and faulted in afresh
    assert int(faults) > pages // 2


@pytest.mark.slow
def test_the_suite_sets_only_the_xla_flags_this_xla_knows():
    """XLA aborts a process on a flag it does not know (conftest.py's flags for a fast compile)."""
    from conftest import known_xla_flags
    known = "--xla_backend_optimization_level=0"
    assert known_xla_flags((known, "--xla_cpu_no_such_flag=true")) == [known]


def test_a_compilation_cache_that_cannot_be_written_is_an_oserror_and_left_off(tmp_path, monkeypatch):
    import jax
    before = jax.config.jax_compilation_cache_dir
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="Not a directory"):          # $RNNJAX_CACHE a file
        backend.enable_compilation_cache(tmp_path / "file" / "jax")
    monkeypatch.setattr(backend.os, "access", lambda path, mode: False)      # a read-only home, as root too
    with pytest.raises(OSError, match=r"it cannot be written: '.*ro'"):
        backend.enable_compilation_cache(tmp_path / "ro")
    # Bytes that are not UTF-8 ($RNNJAX_CACHE, $XDG_CACHE_HOME): XLA's options failed at the first compile.
    with pytest.raises(OSError, match=r"its path is not UTF-8: '.*/x\\\\xff/jax'$"):
        backend.enable_compilation_cache(tmp_path / os.fsdecode(b"x\xff") / "jax")
    assert not (tmp_path / os.fsdecode(b"x\xff")).exists()
    assert jax.config.jax_compilation_cache_dir == before


def test_the_cli_warns_in_one_line_and_trains_without_it(make_text, tmp_path, monkeypatch, capsys):
    from experiments import timemachine
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("RNNJAX_CACHE", str(tmp_path / "file"))
    (tmp_path / "t.txt").write_text(make_text(3000))
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        assert timemachine.main(["--text", str(tmp_path / "t.txt"), "--preset", "tiny", "--epochs", "1",
                                 "--workdir", str(tmp_path / "w"), "--devices", "1", "--no-progress"]) == 0
        assert gc.get_threshold() == (700, 10, 10)      # main called from Python leaves it as it was
    finally:
        gc.set_threshold(*before)
    err = capsys.readouterr().err
    assert err.startswith("warning: no compilation cache (") and "each run compiles afresh" in err
    assert len(err.strip().splitlines()) == 1


def test_a_backend_jax_platforms_asks_for_and_cannot_start_is_one_sentence(monkeypatch, tmp_path, capsys):
    """``JAX_PLATFORMS=abc`` (or cuda on a machine without it) ended in a traceback as training started."""
    from experiments import sine, timemachine

    def raising(error):
        def start():
            raise error
        return start

    fails = raising(RuntimeError("Unable to initialize backend 'abc': Backend 'abc' is not in the list of "
                                 "known backends: ['cpu']. (set JAX_PLATFORMS='' to automatically choose)"))
    no_plugin = raising(AssertionError())        # JAX_PLATFORMS=cuda without jax's CUDA plugin
    no_libtpu = raising(RuntimeError("Unable to initialize backend 'tpu': no libtpu"))

    monkeypatch.setattr(backend, "_installed_backends", lambda: ["cpu", "tpu"])
    fix = r"\); leave it unset to take the one this machine has\.$"
    cuda = r"this JAX has no CUDA plugin: pip install 'jax\[cuda13\]' adds it"
    for asked, error, why in (
            ("abc", fails, r"Unable to initialize backend 'abc': .*\['cpu'\]"),       # JAX's own
            ("cuda", no_plugin, cuda), (" CUDA,cpu", no_plugin, cuda),
            ("gpu", fails, r"this JAX has neither its CUDA nor its ROCm plugin: 'jax\[cuda13\]' adds CUDA's"),
            ("rocm", fails, "this JAX has no ROCm plugin"),
            ("tpu", no_libtpu, "Unable to initialize backend 'tpu': no libtpu")):
        monkeypatch.setattr(backend.jax, "default_backend", error)
        monkeypatch.setenv("JAX_PLATFORMS", asked)
        with pytest.raises(ValueError, match=rf"^\$JAX_PLATFORMS={re.escape(repr(asked))} asks for a backend "
                                             rf"JAX cannot start here \({why}{fix}"):
            backend.start()
    monkeypatch.setattr(backend, "_installed_backends", lambda: ["cpu", "cuda", "tpu"])   # no GPU here
    monkeypatch.setattr(backend.jax, "default_backend", fails)
    for asked, why in (("gpu", "Unable to initialize backend 'abc'"), ("rocm", "this JAX has no ROCm")):
        monkeypatch.setenv("JAX_PLATFORMS", asked)
        with pytest.raises(ValueError, match=rf"here \({why}"):
            backend.start()
    monkeypatch.setattr(backend, "_installed_backends", lambda: [])     # JAX's table moved: its own text
    monkeypatch.setattr(backend.jax, "default_backend", fails)
    monkeypatch.setenv("JAX_PLATFORMS", "abc")
    with pytest.raises(ValueError, match=r"here \(Unable to initialize backend 'abc': .*\['cpu'\]\); leave"):
        backend.start()
    for main in (timemachine.main, sine.main):
        assert main(["--workdir", str(tmp_path / "w")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: $JAX_PLATFORMS='abc'") and err.count("\n") == 1
        assert not (tmp_path / "w").exists()
    monkeypatch.delenv("JAX_PLATFORMS")
    with pytest.raises(RuntimeError):             # not the user's setting: JAX's own error, as it was
        backend.start()


def test_jaxs_cache_warnings_are_one_line_once_and_others_pass_through(tmp_path, capsys):
    passed, at_exit = [], []
    show = backend._cache_warnings(tmp_path, lambda message, *args, **kwargs: passed.append(str(message)),
                                   at_exit=lambda *call: at_exit.append(call))
    (tmp_path / "jit_f-abc-cache").write_bytes(b"\x78\x9c cut short")      # a zlib stream's first bytes
    (tmp_path / "jit_f-abc-atime").write_bytes(b"12345678")
    for _ in range(2):                      # a full disk: each write fails; removed once, at exit
        show(UserWarning("Error writing persistent compilation cache entry for 'jit_f': OSError: [Errno 28] "
                         "No space left on device"), UserWarning, "compiler.py", 833)
    show(UserWarning("something else"), UserWarning, "x.py", 1)
    assert passed == ["something else"] and at_exit == [(backend.remove_damaged_entries, tmp_path)]
    assert capsys.readouterr().err == (
        f"warning: JAX's compilation cache in {tmp_path} cannot be written (OSError: [Errno 28] No space "
        "left on device); entries cut short are removed as this process ends.\n")
    assert backend.remove_damaged_entries(tmp_path) == 1 and list(tmp_path.iterdir()) == []


def test_collect_less_freezes_what_is_loaded_and_collects_its_youngest_far_less_often():
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        put_back = backend.collect_less()
        assert gc.get_threshold() == (100_000, 50, 100) and gc.get_freeze_count() > 0
        put_back()
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)
