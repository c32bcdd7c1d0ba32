"""A trained model scoring text: the perplexity of a run's validation windows, and each token's loss in a
whole text read from its start (``rnnjax.restored.Restored``'s ``perplexity`` and ``losses``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import kernels
from rnnjax.config import Config
from rnnjax.data import WindowedText
from rnnjax.metrics import perplexity as ppl_of
from rnnjax.model import RNNLM
from rnnjax.precision import at_precision
from rnnjax.spelling import got
from rnnjax.state import create_train_state, make_model
from rnnjax.tokens import tokenize
from rnnjax.vocab import Vocab

CHUNK = 4096        # tokens a call reads: the state carried on between calls, so the split changes nothing


def perplexity(config: Config, vocab: Vocab, params: Any, data: WindowedText) -> float:
    """The model's perplexity on ``data``'s validation windows, as a run validates (``Restored``'s)."""
    from rnnjax.train import eval_steps          # here: rnnjax.train imports this module's users
    if not isinstance(data, WindowedText):
        raise TypeError(f"perplexity scores a WindowedText (rnnjax.corpus.load(config, text=PATH, "
                        f"vocab=run.vocab) reads one), got {got(data)}; run.losses(text) scores a str.")
    if data.vocab.idx_to_token != vocab.idx_to_token:
        raise ValueError("The data is in another vocabulary than the run's: load it with "
                         "rnnjax.corpus.load(config, text=..., vocab=run.vocab).")
    data.check_tokens()
    try:
        kernels.check(config)
    except ValueError:          # trained with a kernel this backend lacks (cuDNN's, on a CPU): same math
        config = config.replace(kernel="auto")
    # Any optimizer: it is not stepped (the run's own may not be registered here, as for restore's)
    state = create_train_state(config.replace(optimizer="sgd"), len(vocab), params)
    batches = jax.tree.map(lambda *x: np.stack(x), *data.val_batches())
    sums = jax.jit(at_precision(eval_steps, config.matmul_precision))(state, batches)
    return ppl_of(float(sums["loss_sum"]) / float(sums["count"]))


def losses(config: Config, vocab: Vocab, params: Any, text: str) -> tuple[list[str], np.ndarray]:
    """``(tokens, nll)``: ``text`` cleaned and split as the run's text was (``Restored.losses``)."""
    if not isinstance(text, str):
        raise TypeError(f"losses scores a text (a str; open(path).read() for a file's), got {got(text)}.")
    if config.bidirectional:
        raise ValueError("A bidirectional model reads each token it would score: it has no loss of a text.")
    ids, name = tokenize(text, config.token, config.preprocess)
    tokens = [name(int(i)) for i in ids]
    if len(tokens) < 2:
        raise ValueError(f"The text has {len(tokens)} token(s) once cleaned as the run's was "
                         f"(preprocess={config.preprocess!r}, token={config.token!r}); losses needs 2 or "
                         "more.")
    unk = vocab.token_to_idx.get("<unk>", 0)
    ids = np.array([vocab.token_to_idx.get(t, unk) for t in tokens], np.int32)
    model, n = make_model(config.replace(kernel="plain"), len(vocab)), len(ids) - 1
    chunk = min(CHUNK, 1 << (n - 1).bit_length())      # a power of two: texts of most lengths share a program
    X = np.zeros(-(-n // chunk) * chunk, np.int32)       # the last call's padding comes after: read by none
    X[:n] = ids[:-1]
    carry, nll = model.initialize_carry(1), []
    step = at_precision(functools.partial(_losses, model), config.matmul_precision)
    for start in range(0, len(X), chunk):
        carry, nll_T = step(params, carry, X[None, start:start + chunk], np.pad(
            ids[start + 1:start + 1 + chunk], (0, max(0, start + chunk - n)))[None])
        nll.append(np.asarray(nll_T))
    return tokens, np.concatenate(nll)[:n]


@functools.partial(jax.jit, static_argnums=0)
def _losses(model: RNNLM, params: Any, carry: Any, X_1xT: jax.Array, Y_1xT: jax.Array
            ) -> tuple[Any, jax.Array]:
    logits_1xTxV, carry = model.apply({"params": params}, X_1xT, carry, method=RNNLM.forward)
    logp_1xTxV = jax.nn.log_softmax(logits_1xTxV.astype(jnp.float32))
    return carry, -jnp.take_along_axis(logp_1xTxV, Y_1xT[..., None], axis=-1)[0, :, 0]
