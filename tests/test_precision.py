import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.precision import dot


def test_dot_in_bfloat16_rounds_the_operands_and_accumulates_in_float32():
    a = jax.random.normal(jax.random.key(0), (8, 64))
    b = jax.random.normal(jax.random.key(1), (64, 5))
    exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    np.testing.assert_allclose(dot(a, b), exact, rtol=1e-5, atol=1e-5)
    half = dot(a, b, jnp.bfloat16)
    assert half.dtype == jnp.float32
    rounded = np.asarray(a.astype(jnp.bfloat16), np.float64) @ np.asarray(b.astype(jnp.bfloat16), np.float64)
    np.testing.assert_allclose(half, rounded, rtol=1e-5, atol=1e-4)
    assert np.abs(np.asarray(half) - exact).max() > 1e-3
