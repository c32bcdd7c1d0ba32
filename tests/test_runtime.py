import os
import subprocess
import sys

CHILD = """
import sys, jax, jax.numpy as jnp
from rnnjax import runtime
runtime.enable_compilation_cache(sys.argv[1])
print(float(jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((64, 64))).sum()))
"""


def test_compilation_cache_is_written_then_reused(tmp_path):
    cache = tmp_path / "jax-cache"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    run = lambda: subprocess.run([sys.executable, "-c", CHILD, str(cache)], env=env, capture_output=True,
                                 text=True, timeout=120, check=True).stdout
    first = run()
    entries = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert any("jit" in name for name in entries)
    assert run() == first
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == entries     # read, not rewritten


DEVICES_CHILD = """
import sys, jax
from rnnjax import runtime
print(runtime.use_cpu_cores(int(sys.argv[1])), jax.local_device_count(), runtime.use_cpu_cores(64))
"""


def _devices(batch_size: int, **env_overrides: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(env_overrides, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", DEVICES_CHILD, str(batch_size)], env=env,
                          capture_output=True, text=True, timeout=120, check=True).stdout.split()


def test_one_cpu_device_per_core_dividing_the_batch():
    cores = len(os.sched_getaffinity(0))
    expected = max(n for n in range(1, cores + 1) if 1024 % n == 0)
    # Set once, before JAX starts; a second call after that leaves it alone.
    assert _devices(1024) == [str(expected), str(expected), "None"]
    prime = 1031                       # no divisor but 1 up to any core count below it
    assert _devices(prime) == ["1", "1", "None"]


def test_an_explicit_device_count_wins():
    assert _devices(1024, JAX_NUM_CPU_DEVICES="3") == ["None", "3", "None"]
    assert _devices(1024, XLA_FLAGS="--xla_force_host_platform_device_count=3") == ["None", "3", "None"]
