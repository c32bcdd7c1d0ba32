"""Which training kernel a run uses: decided here, in one place, by backend and shape.

Every kernel computes the same loss and gradients (tested against the plain
model); they differ only in speed. ``Config.kernel`` names one, or ``auto``
for ``choose``'s pick:

- ``plain``: ``RNNLM.loss`` under autodiff, the math as ``rnnjax.model`` writes it;
- ``fused``: ``rnnjax.fused``, the output layer and the cross-entropy as one op,
  and for one layer of d2l's ``SimpleRNNCell`` the recurrence too, with a
  hand-written backward pass; other cells scanned under ``remat``. What wins
  on a CPU.
"""

from __future__ import annotations

import jax

KERNELS = ("plain", "fused")


def choose(config, backend: str | None = None) -> str:
    """The kernel ``config`` trains with on ``backend`` (default: JAX's): its ``kernel`` unless ``auto``."""
    if config.kernel != "auto":
        return config.kernel
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "fused"
    # On a GPU the fused vanilla recurrence lost to the plain scan at d2l's size (docs/performance.md).
    if config.cell == "rnn" and config.num_layers == 1 and config.num_hiddens <= 64:
        return "plain"
    return "fused"
