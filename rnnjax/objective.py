"""What training optimizes, written once: the distribution over the vocabulary a position is trained toward.

Every loss (``RNNLM.loss``, the kernels' ``rnnjax.output_layer``) minimizes
the cross-entropy against ``targets``: the plain model under autodiff, the
fused ones by ``dlogits = (softmax - targets) * weight``, which is the gradient
for any targets that sum to 1. A variant (label smoothing, say) is a change to
``targets`` alone. What a run reports is separate: the cross-entropy against
the labels themselves, whose exponential is the perplexity, whatever
``targets`` is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def targets(labels: Array, vocab_size: int) -> Array:
    """The target distribution, ``labels.shape + (vocab_size,)``, each row summing to 1: the label's one-hot.

    Label smoothing, for one: ``(1 - eps) * one_hot + eps / vocab_size``.
    """
    return jax.nn.one_hot(labels, vocab_size, dtype=jnp.float32)
