"""Numerical precision: the matmuls' operand dtype (mixed precision), in one place.

``dot(a, b, dtype)`` is ``a @ b`` with both operands cast to ``dtype`` and the
products accumulated and returned in float32: bfloat16 as researchers use it on
accelerators, parameters, optimizer state and the loss staying float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dot(a: jax.Array, b: jax.Array, dtype=jnp.float32) -> jax.Array:
    """``a @ b``, operands in ``dtype``, accumulated in float32."""
    if jnp.dtype(dtype) == jnp.float32:
        return a @ b
    return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)
