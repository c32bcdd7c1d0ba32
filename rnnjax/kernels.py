"""Which training kernel a run uses (decided here, in one place, by backend and cell), and what each trains.

Every kernel computes the same loss and gradients (tested against the plain
model); they differ only in speed. ``Config.kernel`` names one, or ``auto``
for ``choose``'s pick:

- ``plain``: ``RNNLM.loss`` under autodiff, the math as ``rnnjax.model`` writes it;
- ``fused``: ``rnnjax.fused``, the output layer and the cross-entropy as one op,
  and for one layer of d2l's ``SimpleRNNCell`` the recurrence too, with a
  hand-written backward pass; other cells scanned under ``remat``. What wins
  on a CPU.
- ``hoisted``: ``rnnjax.hoisted``, the recurrence structured as cuDNN
  structures an RNN (input projections and weight gradients as matmuls over
  all steps, only the sequential part in the loops), for rnnjax's own cells.
- ``cudnn``: ``rnnjax.cudnn``, cuDNN's LSTM through ``jax.experimental.rnn``:
  the LSTM cell, one direction, float32, on an NVIDIA GPU only.

``check`` refuses, in one sentence, a forced kernel that cannot train a config
on this backend; ``rnnjax.start.plan`` calls it before any work. A new kernel
is its module, its name in ``config.KERNELS``, its model in ``MODELS`` (and
what a run says of it in ``_DESCRIBE``) and its rule in ``choose`` and ``check``.
"""

from __future__ import annotations

import jax

from rnnjax import cudnn, fused, hoisted
from rnnjax.cells import CELLS, LSTMCell
from rnnjax.config import KERNELS  # noqa: F401 (the names, kept beside what they name)
from rnnjax.spelling import spelt
from rnnjax.hoisted import supports

# The language model each kernel trains (``plain``: rnnjax.model's ``RNNLM``), and what a run says of it.
MODELS = {"fused": fused.FusedRNNLM, "hoisted": hoisted.HoistedRNNLM, "cudnn": cudnn.CudnnRNNLM}
_DESCRIBE = {fused.FusedRNNLM: fused.describe, hoisted.HoistedRNNLM: hoisted.describe,
             cudnn.CudnnRNNLM: cudnn.describe}


def choose(config, backend: str | None = None) -> str:
    """The kernel ``config`` trains with on ``backend`` (default: JAX's): its ``kernel`` unless ``auto``.

    On a CPU, ``fused`` (measured: docs/performance.md). Elsewhere ``hoisted``
    for rnnjax's own cells, the structure cuDNN uses, and ``fused`` for a cell
    it does not know (a user's); ``cudnn`` only when forced. No rule looks at
    the shape yet: what each rests on, and what is still to be measured on a
    GPU (where a shape may decide), is in docs/performance.md.
    """
    if config.kernel != "auto":
        return config.kernel
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "fused"
    return "hoisted" if supports(CELLS[config.cell]) else "fused"


def loss_path(model) -> str:
    """How ``model`` trains, in words: what a run reports."""
    describe = _DESCRIBE.get(type(model))
    return describe(model.rnn) if describe else "plain loss"


def check(config, backend: str | None = None) -> None:
    """``ValueError`` with one sentence if the kernel ``config`` forces cannot train it on ``backend``
    (default: JAX's)."""
    kernel = config.kernel
    if kernel == "hoisted" and not supports(CELLS[config.cell]):
        raise ValueError(f"{spelt('kernel', 'hoisted')} writes out the gates of rnnjax's own cells (rnn, "
                         f"gru, lstm), not those of {spelt('cell', config.cell)}; use "
                         f"{spelt('kernel', 'fused')} or {spelt('kernel', 'auto')}.")
    if kernel != "cudnn":
        return
    backend = backend or jax.default_backend()
    named = spelt("kernel", "cudnn")
    if CELLS[config.cell] is not LSTMCell:
        other = "hoisted" if supports(CELLS[config.cell]) else "fused"       # what else trains that cell
        raise ValueError(f"{named} is cuDNN's LSTM and trains {spelt('cell', 'lstm')} only, not "
                         f"{config.cell}; use {spelt('kernel', other)} or {spelt('kernel', 'auto')}.")
    if backend != "gpu":
        raise ValueError(f"{named} runs cuDNN's LSTM, which needs an NVIDIA GPU, and JAX's backend here is "
                         f"{backend}; use {spelt('kernel', 'auto')}.")
    if config.bidirectional:
        raise ValueError(f"{named} trains one direction only; use {spelt('kernel', 'hoisted')} for "
                         f"{spelt('bidirectional', True)}.")
    if config.compute_dtype != "float32":
        raise ValueError(f"{named} computes in float32 only (JAX's cuDNN LSTM has no bfloat16); use "
                         f"{spelt('kernel', 'hoisted')} for {spelt('compute_dtype', 'bfloat16')}.")
    ambient = jax.config.jax_default_matmul_precision
    if config.matmul_precision == "default" and ambient in _ONE_BF16_PASS:
        raise ValueError(f"{named} cannot run at JAX's default matmul precision {ambient!r} "
                         "(JAX_DEFAULT_MATMUL_PRECISION or jax.config), one bfloat16 pass, which JAX's cuDNN "
                         f"LSTM does not implement; use {spelt('matmul_precision', 'high')} or 'highest'.")


# JAX's names of ``lax.Precision.DEFAULT``: the ambient precision at which its cuDNN LSTM raises
# NotImplementedError ("bfloat16 support not implemented for LSTM").
_ONE_BF16_PASS = {"default", "bfloat16"}
