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
