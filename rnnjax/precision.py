"""Numerical precision, in one place: the matmuls' operand dtype (mixed precision) and float32 matmul
precision.

``dot(a, b, dtype)`` is ``a @ b`` with both operands cast to ``dtype`` and the
products accumulated and returned in float32, its gradients likewise: bfloat16
as researchers use it on accelerators, parameters, optimizer state, the
recurrent carry and the loss staying float32 (``Config.compute_dtype``).

``at_precision(fn, precision)`` traces ``fn`` with its float32 matmuls at
``precision`` (``Config.matmul_precision``): ``default`` leaves JAX's choice
(TF32 on recent NVIDIA GPUs, one bfloat16 pass on a TPU, full float32 on a
CPU, or what ``$JAX_DEFAULT_MATMUL_PRECISION`` says), ``highest`` is full
float32 everywhere. ``describe`` says in words what a run's matmuls do.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MATMUL_PRECISIONS = ("default", "high", "highest")


def dot(a: jax.Array, b: jax.Array, dtype=jnp.float32) -> jax.Array:
    """``a @ b``, operands in ``dtype``, accumulated in float32.

    ``a`` is ``(..., K)``, ``b`` is ``(K, N)``. In bfloat16 the backward pass
    does its two matmuls the same way and returns float32 gradients: autodiff
    of the cast would round the weights' gradient (summed over every row) to
    bfloat16, and multiply float32 by bfloat16, which accelerators do in float32.
    """
    if jnp.dtype(dtype) == jnp.float32:
        return a @ b
    if jnp.ndim(b) != 2:
        return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)
    return _low_precision_dot(a, b, jnp.dtype(dtype))


def _matmul(a, b):
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_precision_dot(a, b, dtype):
    return _matmul(a.astype(dtype), b.astype(dtype))


def _low_precision_dot_fwd(a, b, dtype):
    a_low, b_low = a.astype(dtype), b.astype(dtype)
    # Residuals must be arrays: empty ones carry the operands' dtypes, which their gradients take.
    return _matmul(a_low, b_low), (a_low, b_low, jnp.zeros(0, a.dtype), jnp.zeros(0, b.dtype))


def _low_precision_dot_bwd(dtype, residuals, g):
    a_low, b_low, a_like, b_like = residuals
    g_low = g.astype(dtype)
    da = _matmul(g_low, b_low.T)
    db = _matmul(a_low.reshape(-1, a_low.shape[-1]).T, g_low.reshape(-1, g_low.shape[-1]))
    return da.astype(a_like.dtype), db.astype(b_like.dtype)


_low_precision_dot.defvjp(_low_precision_dot_fwd, _low_precision_dot_bwd)


def at_precision(fn: Callable, precision: str) -> Callable:
    """``fn`` traced with its float32 matmuls at ``precision`` (JAX resolves it as it traces each one);
    ``ValueError`` in one sentence where ``default``, JAX's, is one its backend does not compute."""
    if precision == "default":
        check_ambient()
        return fn

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with jax.default_matmul_precision(precision):
            return fn(*args, **kwargs)
    return traced


# What float32 matmuls do at each precision, by platform (jax.lax.Precision's documentation); the
# algorithms that XLA:CPU computes as float32, bit for bit (others it computes otherwise, or refuses).
_CPU_AS_FLOAT32 = {"BF16_BF16_F32", "BF16_BF16_F32_X3", "BF16_BF16_F32_X6", "F32_F32_F32"}
_TPU_PASSES = {"default": "one bfloat16 pass", "high": "3 bfloat16 passes", "highest": "6 bfloat16 passes"}


def _uses_tf32(device) -> bool:
    """An NVIDIA GPU from Ampere on (compute capability 8.0+): what XLA runs float32 dots in TF32 on."""
    try:
        return float(getattr(device, "compute_capability", "0")) >= 8.0
    except ValueError:
        return False


# JAX's other names of a precision (``MATMUL_PRECISIONS`` are the rest), as a Config says them; its other
# values are dot algorithms (jax.lax.DotAlgorithmPreset), which a backend may not compute.
_JAX_NAMES = {None: "default", "fastest": "default", "bfloat16": "default", "tensorfloat32": "high",
              "float32": "highest"}


def check_ambient() -> None:
    """``ValueError`` in one sentence where JAX's default float32 matmul precision
    (``$JAX_DEFAULT_MATMUL_PRECISION``) is a dot algorithm its default backend does not compute: it failed
    at the run's first matmul, naming neither. Starts the backend."""
    ambient = jax.config.jax_default_matmul_precision
    if ambient in _JAX_NAMES or ambient in MATMUL_PRECISIONS:
        return
    x = jax.ShapeDtypeStruct((1, 1), jnp.float32)
    try:
        jax.jit(jnp.matmul).lower(x, x)
    except ValueError as e:
        set_by = os.environ.get("JAX_DEFAULT_MATMUL_PRECISION")
        named = (f"$JAX_DEFAULT_MATMUL_PRECISION={set_by}" if set_by == ambient else
                 f"JAX's default_matmul_precision {ambient!r}")
        raise ValueError(f"{named} asks for matmuls this {jax.default_backend()} backend does not compute "
                         f"({str(e).rstrip('.')}): give one it does, or unset it.") from None


def effective_precision(precision: str) -> str:
    """``precision``, or for ``default`` JAX's own setting (``default`` where none is set)."""
    if precision != "default":
        return precision
    ambient = jax.config.jax_default_matmul_precision
    return _JAX_NAMES.get(ambient, str(ambient))


def describe(compute_dtype: str, precision: str, device, cell_takes_dtype: bool = True,
             own_cell: bool = True) -> str:
    """What a run's matmuls do on ``device``, in words: ``float32 matmuls`` on a CPU, ``float32 matmuls at
    default precision (TF32 on this GPU)``, ``bfloat16 matmuls accumulated in float32`` (the output
    layer's only, where the cell takes no ``dtype``; a cell not rnnjax's computes in its ``dtype``)."""
    if compute_dtype != "float32" and not cell_takes_dtype:
        return (f"{compute_dtype} matmuls in the output layer, accumulated in float32 (the cell takes no "
                "dtype: float32)")
    if compute_dtype != "float32" and not own_cell:       # flax's Dense returns its dtype: no float32 sums
        return (f"{compute_dtype} matmuls, the cell's in {compute_dtype} as it computes with dtype="
                f"{compute_dtype}, the output layer's accumulated in float32")
    if compute_dtype != "float32":
        return f"{compute_dtype} matmuls accumulated in float32"
    precision = effective_precision(precision)
    if precision not in MATMUL_PRECISIONS:               # a jax.lax.DotAlgorithmPreset set by the user
        if device.platform == "cpu" and precision in _CPU_AS_FLOAT32:
            return f"float32 matmuls ({precision} asked: a CPU computes float32)"
        return f"float32 matmuls at {precision}"
    if device.platform == "tpu" and precision in _TPU_PASSES:
        return f"float32 matmuls at {precision} precision ({_TPU_PASSES[precision]} on this TPU)"
    if device.platform == "gpu" and precision in ("default", "high") and _uses_tf32(device):
        return f"float32 matmuls at {precision} precision (TF32 on this GPU)"
    return "float32 matmuls"
