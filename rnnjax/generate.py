"""d2l's greedy ``predict``, as one compiled loop over a batch of prefixes.

d2l warms the state up on the prefix, then feeds back the argmax one
character at a time, calling the model once per character. Here the whole
thing is a single ``lax.scan``: at step i each row feeds its next prefix
character while it has one, its own last prediction after that. Rows of
different lengths share the loop; prefix lengths are padded to a power of two
so that a new prompt rarely means a new compilation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.data import Vocab
from rnnjax.model import RNNLM


@functools.partial(jax.jit, static_argnames=("model", "num_preds"))
def greedy(model: RNNLM, params, prefix_BxL: jax.Array, lengths_B: jax.Array,
           num_preds: int) -> jax.Array:
    """Token ids ``(B, L + num_preds)``; row b's text is its first ``lengths_B[b] + num_preds``."""
    B, L = prefix_BxL.shape

    def step(carry, i):
        tokens_B, state = carry
        logits_BxV, state = model.apply({"params": params}, tokens_B, state, method=RNNLM.step)
        teacher_B = prefix_BxL[:, jnp.minimum(i + 1, L - 1)]
        tokens_B = jnp.where(i + 1 < lengths_B, teacher_B, jnp.argmax(logits_BxV, -1).astype(tokens_B.dtype))
        return (tokens_B, state), tokens_B

    first = (prefix_BxL[:, 0], model.initialize_carry(B))
    _, out_SxB = jax.lax.scan(step, first, jnp.arange(L + num_preds - 1))
    return jnp.concatenate([prefix_BxL[:, :1], out_SxB.T], axis=1)


def predict_batch(model: RNNLM, params, vocab: Vocab, prefixes: Sequence[str],
                  num_preds: int) -> list[str]:
    """Each prefix followed by ``num_preds`` greedy characters.

    Characters outside the vocabulary (uppercase, digits, punctuation) raise a
    ``ValueError`` naming them, rather than being read as ``<unk>``.
    """
    if num_preds < 0:
        raise ValueError(f"num_preds must be >= 0, got {num_preds}.")
    if not prefixes or any(len(p) == 0 for p in prefixes):
        raise ValueError("Every prefix needs at least one character to start from.")
    ids = [vocab.encode(p) for p in prefixes]
    lengths = np.array([len(i) for i in ids], np.int32)
    L = 1 << int(lengths.max() - 1).bit_length()     # next power of two
    prefix = np.zeros((len(ids), max(L, 1)), np.int32)
    for row, i in zip(prefix, ids):
        row[: len(i)] = i
    tokens = np.asarray(greedy(model, params, prefix, lengths, num_preds))
    return ["".join(vocab.idx_to_token[t] for t in row[: n + num_preds])
            for row, n in zip(tokens, lengths)]


def predict(model: RNNLM, params, vocab: Vocab, prefix: str, num_preds: int) -> str:
    """d2l's ``predict(prefix, num_preds)``: ``prefix`` + ``num_preds`` greedy characters."""
    return predict_batch(model, params, vocab, [prefix], num_preds)[0]
