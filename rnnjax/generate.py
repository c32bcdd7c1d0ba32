"""d2l's greedy ``predict``, and sampling, as one compiled loop over a batch of prefixes.

d2l warms the state up on the prefix, then feeds back the argmax one
character at a time, calling the model once per character. Here the whole
thing is a single ``lax.scan``: at step i each row feeds its next prefix
character while it has one, its own last prediction after that. Rows of
different lengths share the loop; prefix lengths are padded to a power of two
so that a new prompt rarely means a new compilation.

Instead of the argmax, ``sample`` draws the next character from the softmax
at a ``temperature`` (d2l's exercise ``q ∝ P^alpha`` is ``temperature =
1/alpha``), optionally among the ``top_k`` likeliest only, with a key. It
never draws ``<unk>``, which stands for no character of the text.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.config import whole
from rnnjax.spelling import got, spelt
from rnnjax.model import RNNLM
from rnnjax.xla import hashable
from rnnjax.state import check_model_params, seed_key
from rnnjax.vocab import Vocab

# Characters one call generates at most: every one is kept (B x (L + padded(num_preds)) int32) and
# scanned over.
MAX_PREDS = 10_000_000
MAX_TOKENS = 1 << 26        # of all rows of one call, prompts and padding included (256 MB of int32)
MAX_TEMPERATURE = float(np.finfo(np.float32).max)       # logits are float32: above it, inf


def _decode(model: RNNLM, params, prefix_BxL: jax.Array, lengths_B: jax.Array, num_preds: int, choose
            ) -> jax.Array:
    """Token ids ``(B, L + num_preds)``; row b's text is its first ``lengths_B[b] + num_preds``.
    ``choose(logits (B, V), i)`` picks the tokens that step i feeds back."""
    B, L = prefix_BxL.shape

    def step(carry, i):
        tokens_B, state = carry
        logits_BxV, state = model.apply({"params": params}, tokens_B, state, method=RNNLM.step)
        teacher_B = prefix_BxL[:, jnp.minimum(i + 1, L - 1)]
        tokens_B = jnp.where(i + 1 < lengths_B, teacher_B, choose(logits_BxV, i).astype(tokens_B.dtype))
        return (tokens_B, state), tokens_B

    first = (prefix_BxL[:, 0], model.initialize_carry(B))
    _, out_SxB = jax.lax.scan(step, first, jnp.arange(L + num_preds - 1))
    return jnp.concatenate([prefix_BxL[:, :1], out_SxB.T], axis=1)


@functools.partial(jax.jit, static_argnames=("model", "num_preds"))
def greedy(model: RNNLM, params, prefix_BxL: jax.Array, lengths_B: jax.Array, num_preds: int) -> jax.Array:
    """``_decode`` feeding back the argmax."""
    def argmax(logits_BxV, i):
        return jnp.argmax(logits_BxV, -1)
    return _decode(model, params, prefix_BxL, lengths_B, num_preds, argmax)


@functools.partial(jax.jit, static_argnames=("model", "num_preds", "top_k", "banned"))
def sample(model: RNNLM, params, prefix_BxL: jax.Array, lengths_B: jax.Array, num_preds: int, key: jax.Array,
           temperature: float = 1.0, top_k: int = 0, banned: tuple[int, ...] = ()) -> jax.Array:
    """``_decode`` feeding back a draw from ``softmax(logits / temperature)``, among the ``top_k`` likeliest
    (all if 0) and never one of the ``banned`` tokens; step i draws with ``fold_in(key, i)``."""
    def choose(logits_BxV, i):
        key_i = jax.random.fold_in(key, i)
        if banned:
            logits_BxV = logits_BxV.at[:, jnp.asarray(banned)].set(-jnp.inf)
        # Shifted to a maximum of 0 first: a tiny temperature then gives -inf, not inf - inf = nan.
        logits_BxV = logits_BxV - jnp.max(logits_BxV, axis=-1, keepdims=True)
        if not top_k:
            return jax.random.categorical(key_i, logits_BxV / temperature)
        top_BxK, ids_BxK = jax.lax.top_k(logits_BxV, top_k)
        pick_B = jax.random.categorical(key_i, top_BxK / temperature)
        return jnp.take_along_axis(ids_BxK, pick_B[:, None], axis=-1)[:, 0]
    return _decode(model, params, prefix_BxL, lengths_B, num_preds, choose)


def check_sampling(temperature: float | None, top_k: int | None, vocab_size: int
                   ) -> tuple[float | None, int | None]:
    """One sentence for a temperature or top-k that cannot sample; else them as a ``float`` and an ``int``."""
    if temperature is not None:
        temperature = _real(temperature, "The temperature")
        if not 0 < temperature <= MAX_TEMPERATURE:      # NaN fails this too
            raise ValueError(f"The temperature must be a positive number up to {MAX_TEMPERATURE:.3g}, got "
                             f"{temperature} (a small one, e.g. 0.01, is nearly greedy).")
    if top_k is not None:
        top_k = whole(top_k, spelt("top_k"))
        if not 1 <= top_k <= vocab_size:
            raise ValueError(f"{spelt('top_k')} must be between 1 and the vocabulary's {vocab_size} tokens, "
                             f"got {top_k}.")
    return temperature, top_k


def _real(value: Any, name: str) -> float:
    """``value`` as a ``float``: any real number type, or a 0-d array of one, not a bool; ``ValueError``
    otherwise."""
    array = isinstance(value, (np.ndarray, jax.Array)) and value.shape == () and (
        jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer))
    if isinstance(value, (bool, np.bool_)) or not (isinstance(value, numbers.Real) or array):
        raise ValueError(f"{name} must be a real number, got {value!r}.")
    try:
        return float(value)
    except OverflowError:         # an int (a Fraction) past float's range
        raise ValueError(f"{name} must be a real number a float can hold, got one beyond float's range.") \
            from None


def _check_key(key: Any) -> None:
    """``ValueError`` in one sentence unless ``key`` is one JAX PRNG key, typed (``jax.random.key``) or raw
    (``jax.random.PRNGKey``)."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape == ():
            return
    elif (isinstance(key, (np.ndarray, jax.Array)) and key.dtype == np.uint32
          and key.shape == jax.eval_shape(jax.random.PRNGKey, 0).shape):
        return
    array = isinstance(key, (np.ndarray, jax.Array))
    given = f"an array of shape {key.shape} and dtype {key.dtype}" if array else repr(key)
    raise ValueError(f"key must be one JAX PRNG key, e.g. jax.random.key(1) or jax.random.PRNGKey(1), got "
                     f"{given}.")


def padded(num_preds: int) -> int:
    """The steps generated for ``num_preds`` (then cut: step i's token does not depend on later ones): up to
    a power of two, one compile per doubling, or above 1024 to a multiple of 1024 (one compile each, rather
    than up to twice the steps)."""
    return min(1 << max(num_preds - 1, 0).bit_length(), -(-num_preds // 1024) * 1024)


def _decoders(model: RNNLM) -> tuple[Callable, Callable]:
    """``greedy`` and ``sample`` for ``model``: compiled once per model, which jit hashes by its fields; for
    one that cannot be hashed (a cell of one's own with a list field), compiled around it."""
    if not hashable(model):
        return (jax.jit(functools.partial(greedy.__wrapped__, model), static_argnames=("num_preds",)),
                jax.jit(functools.partial(sample.__wrapped__, model),
                        static_argnames=("num_preds", "top_k", "banned")))
    return functools.partial(greedy, model), functools.partial(sample, model)


def check_model(model: RNNLM, params: Any, vocab: Vocab) -> None:
    """``ValueError`` in one sentence unless ``params`` and ``vocab`` are ``model``'s (a run's own three)."""
    if not isinstance(model, RNNLM):
        raise ValueError(f"model must be an RNNLM (a restored run's .model), got {got(model)}.")
    if not isinstance(vocab, Vocab):
        raise ValueError(f"vocab must be a Vocab (a restored run's .vocab), got {got(vocab)}.")
    if len(vocab) != model.vocab_size:
        raise ValueError(f"The vocabulary has {len(vocab)} tokens, the model {model.vocab_size}: give the "
                         f"run's own (its .vocab).")
    check_model_params(params, model)


def predict_batch(model: RNNLM, params, vocab: Vocab, prefixes: Iterable[str], num_preds: int, *,
                  temperature: float | None = None, top_k: int | None = None, key: jax.Array | None = None,
                  clean: Callable[[str], str] | None = None) -> list[str]:
    """Each prefix followed by ``num_preds`` tokens (characters, or words joined by spaces): greedy, or
    sampled if a ``temperature``, ``top_k`` or ``key`` is given (temperature 1, all tokens, threefry's
    ``key(0)`` by default; a key from ``jax.random.key`` or ``jax.random.PRNGKey``). Greedy is d2l's argmax,
    ``<unk>`` included; sampling never draws ``<unk>``. ``prefixes``: a list of strings, or any iterable
    of them (read once). A draw's noise is a function of the key, the step and the row: calls with one
    key share it (give each its own, ``jax.random.split``), and a prompt's sample depends on its row.

    Characters outside the vocabulary (uppercase, digits, punctuation) raise a
    ``ValueError`` naming them, rather than being read as ``<unk>``; so do a model, params and vocab
    not of one run, and any argument of the wrong type or range. ``clean`` (a restored run's ``prompt``)
    reads each prompt first as the run's text was cleaned; one it leaves only spaces of is refused.
    """
    check_model(model, params, vocab)
    num_preds = whole(num_preds, spelt("num_preds"))
    if not 0 <= num_preds <= MAX_PREDS:
        raise ValueError(f"num_preds must be between 0 and {MAX_PREDS:,}, got {num_preds:,}.")
    temperature, top_k = check_sampling(temperature, top_k, len(vocab))
    if key is not None:
        _check_key(key)
    if not isinstance(prefixes, (str, bytes)) and isinstance(prefixes, Iterable):
        prefixes = list(prefixes)         # once: a generator is read here
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        raise ValueError(f"prefixes must be a list of strings, got {prefixes!r}; for one prompt, use predict "
                         "or [prompt].")
    if not prefixes:
        raise ValueError("prefixes is an empty list: give at least one prompt, e.g. ['the time'].")
    if any(len(p) == 0 for p in prefixes):
        raise ValueError("Every prefix needs at least one character to start from.")
    steps = padded(num_preds)
    _check_kept(len(prefixes), max(map(len, prefixes)), num_preds, "characters")   # before encoding them
    ids = [_encoded(vocab, p, clean) for p in prefixes]
    lengths = np.array([len(i) for i in ids], np.int32)
    L = _check_kept(len(ids), int(lengths.max()), num_preds, "tokens")
    prefix = np.zeros((len(ids), L), np.int32)
    for row, i in zip(prefix, ids):
        row[: len(i)] = i
    decode_greedy, decode_sample = _decoders(model)
    if temperature is None and top_k is None and key is None:
        tokens = decode_greedy(params, prefix, lengths, steps)
    else:
        key = seed_key(0) if key is None else key
        temperature = 1.0 if temperature is None else temperature
        tokens = decode_sample(params, prefix, lengths, steps, key, temperature, top_k or 0, (vocab.unk,))
    tokens = np.asarray(tokens)
    return [vocab.decode(row[: n + num_preds]) for row, n in zip(tokens, lengths)]


def _encoded(vocab: Vocab, typed: str, clean: Callable[[str], str] | None) -> list[int]:
    """The ids of prompt ``typed``, read as ``clean`` makes it; a ``ValueError`` names the prompt typed."""
    read = typed if clean is None else clean(typed)
    if read != typed and typed.strip() and not read.strip():
        raise ValueError(f"{typed!r} keeps only spaces once cleaned as the run's text was ({read!r}): give a "
                         "prompt of the tokens it trained on.")
    try:
        return vocab.encode(read)
    except ValueError as e:
        if read == typed:
            raise
        raise ValueError(f"{typed!r}, read as {read!r} (cleaned as the run's text was): {e}") from None


def _check_kept(prompts: int, longest: int, num_preds: int, unit: str) -> int:
    """The prompts' padded length (a power of two); ``ValueError`` if ``prompts`` of up to ``longest``
    ``unit`` (characters: at least their tokens) and ``num_preds`` more each keep over ``MAX_TOKENS``, whose
    allocation would fail deep in XLA, which can abort the interpreter."""
    L = max(1 << (longest - 1).bit_length(), 1)
    kept = prompts * (L + padded(num_preds))
    if kept > MAX_TOKENS:
        raise ValueError(f"{prompts:,} prompt(s) of up to {longest:,} {unit} and {num_preds:,} more each "
                         f"keep {kept:,} tokens in one call, more than the {MAX_TOKENS:,} it holds: generate "
                         "in several calls.")
    return L


def predict(model: RNNLM, params, vocab: Vocab, prefix: str, num_preds: int, *,
            temperature: float | None = None, top_k: int | None = None, key: jax.Array | None = None,
            clean: Callable[[str], str] | None = None) -> str:
    """d2l's ``predict(prefix, num_preds)``: ``prefix`` + ``num_preds`` greedy characters (or sampled:
    ``predict_batch``'s ``temperature``, ``top_k``, ``key``)."""
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string, got {prefix!r}; for several prompts, use predict_batch.")
    return predict_batch(model, params, vocab, [prefix], num_preds, temperature=temperature, top_k=top_k,
                         key=key, clean=clean)[0]
