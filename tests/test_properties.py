"""Property tests (hypothesis): the data pipeline and generation hold for any input, not just ours."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from experiments.benchmark import d2l_predict
from rnnjax.data import TimeMachine, Vocab, preprocess, tokenize
from rnnjax.generate import predict_batch
from rnnjax.model import RNN, RNNLM, SimpleRNNCell

TEXT = st.text(alphabet=st.sampled_from("abcdeXYZ .,!\n-'"), min_size=1, max_size=300)


@st.composite
def data_settings(draw):
    """Any text, any window length, batch size and train/validation split the text can hold."""
    text = draw(TEXT)
    corpus = len(tokenize(preprocess(text)))
    num_steps = draw(st.integers(1, 8))
    windows = corpus - num_steps
    if windows < 2:                # too short for a split: lengthen it
        text += " abc" * (num_steps + 2)
        windows = len(tokenize(preprocess(text))) - num_steps
    num_train = draw(st.integers(1, windows - 1))
    num_val = draw(st.integers(0, windows - num_train))
    return text, num_steps, draw(st.integers(1, 9)), num_train, num_val, draw(st.integers(0, 2 ** 32 - 1))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data_settings(), st.integers(0, 3))
def test_windows_masks_and_batches_are_consistent(setting, epoch):
    text, num_steps, batch_size, num_train, num_val, seed = setting
    data = TimeMachine(batch_size, num_steps, num_train, num_val, text=text, seed=seed)
    corpus = data.corpus
    seen = []
    batches = list(data.train_batches(epoch))
    assert len(batches) == data.num_batches(True) == -(-num_train // batch_size)
    for windows, batch in zip(data.train_windows(epoch), batches, strict=True):
        assert batch.X.shape == batch.Y.shape == (batch_size, num_steps) and batch.mask.shape == (batch_size,)
        np.testing.assert_array_equal(batch.X[:, 1:], batch.Y[:, :-1])          # Y is X shifted by one
        for start, x, y, m in zip(windows.starts, batch.X, batch.Y, batch.mask):
            np.testing.assert_array_equal(x, corpus[start:start + num_steps])
            np.testing.assert_array_equal(y, corpus[start + 1:start + num_steps + 1])
            if m:
                seen.append(int(start))
        assert set(np.unique(batch.mask)) <= {0.0, 1.0} and np.all(np.diff(batch.mask) <= 0)  # padding last
    assert sorted(seen) == list(range(num_train))          # every train window once an epoch
    again = [int(s) for w in data.train_windows(epoch) for s, m in zip(w.starts, w.mask) if m]
    assert again == seen                                    # the same order every time
    val = [int(s) for b in data.val_batches() for s in b.mask]
    assert sum(val) == num_val and len(list(data.val_batches())) == data.num_batches(False)
    assert np.all(data.tokens < len(data.vocab))


VOCAB = Vocab(list("abcdefghijklmnopqrstuvwxyz "))
MODEL = RNNLM(RNN(SimpleRNNCell(8)), len(VOCAB))
PARAMS = jax.tree.map(lambda x: 4 * x, MODEL.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"])


@pytest.mark.slow
@settings(max_examples=15, deadline=None)   # each new length compiles: a few seconds each
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz ", min_size=1, max_size=12), min_size=1,
                max_size=4), st.integers(0, 16))
def test_generation_extends_any_prefix_as_d2ls_loop_does(prefixes, num_preds):
    texts = predict_batch(MODEL, PARAMS, VOCAB, prefixes, num_preds)
    step = functools.partial(MODEL.apply, method=RNNLM.step)
    for prefix, text in zip(prefixes, texts, strict=True):
        generated = text[len(prefix):]         # characters, each "<unk>" one token of five
        assert text.startswith(prefix) and len(generated) == num_preds + 4 * generated.count("<unk>")
        assert text == d2l_predict(step, PARAMS, VOCAB, 8, prefix, num_preds)
