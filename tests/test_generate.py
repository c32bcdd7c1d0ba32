import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmark import d2l_predict
from rnnjax.data import Vocab
from rnnjax.generate import predict, predict_batch
from rnnjax.model import RNN, RNNLM, SimpleRNNCell

VOCAB = Vocab(list("abcdefghijklmnopqrstuvwxyz "))


@pytest.fixture(scope="module")
def model_params():
    model = RNNLM(RNN(SimpleRNNCell(16)), len(VOCAB))
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    # Sharpen the output layer so that greedy decoding is not a tie-break contest.
    params = jax.tree.map(lambda x: x * 4, params)
    return model, params


@pytest.mark.parametrize("prefix,num_preds", [("it has", 20), ("t", 7), ("the time traveller", 0)])
def test_predict_equals_d2l_loop(model_params, prefix, num_preds):
    model, params = model_params
    step = functools.partial(model.apply, method=RNNLM.step)
    expected = d2l_predict(step, params, VOCAB, model.rnn.cell.num_hiddens, prefix, num_preds)
    got = predict(model, params, VOCAB, prefix, num_preds)
    assert got == expected
    assert len(got) == len(prefix) + num_preds and got.startswith(prefix)


def test_batched_prefixes_of_different_lengths(model_params):
    model, params = model_params
    prefixes = ["it has", "a", "the time machine", "q"]
    batch = predict_batch(model, params, VOCAB, prefixes, 12)
    assert batch == [predict(model, params, VOCAB, p, 12) for p in prefixes]


def test_unknown_characters_are_a_clear_error(model_params):
    model, params = model_params
    with pytest.raises(ValueError, match=r"outside the vocabulary: \['I'\]"):
        predict(model, params, VOCAB, "It has", 5)


@pytest.mark.parametrize("prefixes,num_preds,message", [([""], 3, "at least one"), ([], 3, "at least one"),
                                                        (["a"], -1, "num_preds")])
def test_bad_requests(model_params, prefixes, num_preds, message):
    model, params = model_params
    with pytest.raises(ValueError, match=message):
        predict_batch(model, params, VOCAB, prefixes, num_preds)


def test_prefix_length_buckets_share_a_compilation(model_params):
    model, params = model_params
    from rnnjax.generate import greedy
    predict(model, params, VOCAB, "abcde", 9)
    before = greedy._cache_size()
    predict(model, params, VOCAB, "abcdefg", 9)       # 5 and 7 both pad to 8
    assert greedy._cache_size() == before
    np.testing.assert_equal(predict(model, params, VOCAB, "abcdefg", 9)[:7], "abcdefg")
