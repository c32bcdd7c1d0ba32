"""rnnjax.score: a restored model's loss of each token of a whole text, against one forward pass and optax's
cross-entropy; cleaned and split as the run's text was."""

import numpy as np
import optax
import pytest

from conftest import TINY, small_text
from rnnjax import score
from rnnjax.restored import Restored
from rnnjax.state import create_train_state, make_model
from rnnjax.vocab import Vocab


def _run(config, text):
    from rnnjax import tokens
    ids, name = tokens.tokenize(text, config.token, config.preprocess)
    vocab = Vocab([name(int(i)) for i in ids])
    params = create_train_state(config, len(vocab)).params
    return Restored(config, vocab, params, step=0, meta={})


@pytest.mark.parametrize("cell, token", [("rnn", "char"), ("lstm", "char"), ("gru", "word")])
def test_each_tokens_loss_is_the_cross_entropy_of_one_forward_pass_over_the_whole_text(cell, token,
                                                                                       monkeypatch):
    """Read in calls of 7 tokens, the state carried between them, as in one pass of all of them."""
    config = TINY.replace(cell=cell, token=token, num_layers=2)
    run = _run(config, small_text(600))
    text = small_text(300, seed=1)
    monkeypatch.setattr(score, "CHUNK", 7)
    tokens, nll = run.losses(text)
    ids = np.array([run.vocab[t] for t in tokens])
    logits = make_model(config, len(run.vocab)).apply({"params": run.params}, ids[None, :-1])
    expected = optax.softmax_cross_entropy_with_integer_labels(logits[0], ids[1:])
    np.testing.assert_allclose(nll, expected, rtol=2e-5, atol=2e-6)
    assert len(tokens) == len(nll) + 1 > 7 * 3                          # several calls, the last padded
    monkeypatch.setattr(score, "CHUNK", 4096)
    np.testing.assert_allclose(run.losses(text)[1], nll, rtol=2e-5, atol=2e-6)


def test_a_text_is_cleaned_and_split_as_the_runs_was_its_unseen_tokens_unknown():
    run = _run(TINY, "the time machine")                                # d2l's cleaning: lower case letters
    tokens, nll = run.losses("The Time-Traveller!")
    assert "".join(tokens) == "the time traveller " and nll.shape == (len(tokens) - 1,)
    assert np.all(np.isfinite(nll)) and np.all(nll > 0)
    assert run.vocab["v"] == run.vocab.unk                              # never seen: read as <unk>
    words = _run(TINY.replace(token="word", preprocess="raw"), "the time machine")
    assert words.losses("the  Time\nmachine")[0] == ["the", "Time", "machine"]


def test_what_cannot_be_scored_is_one_sentence():
    run = _run(TINY, "the time machine")
    with pytest.raises(ValueError, match=r"^The text has 1 token\(s\) once cleaned as the run's was "
                                         r"\(preprocess='d2l', token='char'\); losses needs 2 or more\.$"):
        run.losses("!?")
    with pytest.raises(TypeError, match=r"^losses scores a text \(a str; open\(path\)\.read\(\) for a "
                                        r"file's\), got a list\.$"):
        run.losses(["the"])
    both = _run(TINY.replace(num_layers=2, bidirectional=True), "the time machine")
    with pytest.raises(ValueError, match=r"^A bidirectional model reads each token it would score"):
        both.losses("the time")


def test_texts_of_most_lengths_share_a_compiled_program():
    """Each length compiled its own (1.8 s for 40 sentences, against 0.013 s once compiled)."""
    run = _run(TINY.replace(num_hiddens=12), "the time machine")          # a model of this test's own
    run.losses("the time traveller")                                    # 19 tokens: a call of 32
    before = score._losses._cache_size()
    for text in ("it was", "the time machine by h g wells", "so it will be convenient"):
        run.losses(text)
    assert score._losses._cache_size() == before + 1                   # 6 tokens: a call of 8
