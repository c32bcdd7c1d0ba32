"""``rnnjax.restored``: a run read back, and what it does: generate, score, say where it came from."""

import copy
import dataclasses

import jax
import pytest

from conftest import TINY

from rnnjax import checkpoint, corpus, meta as meta_lib, runs
from rnnjax.restored import Restored
from rnnjax.state import create_train_state
from rnnjax.train import fit


def test_a_restored_run_scores_data_as_its_run_validated(small_data, tmp_path):
    result = fit(TINY.replace(epochs=2), small_data, tmp_path, devices=1, log=None)
    run = checkpoint.restore(tmp_path)
    assert run.perplexity(small_data) == pytest.approx(result.history[-1]["val_ppl"], rel=1e-5)
    other = type(small_data)(TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val, text="abc " * 400)
    with pytest.raises(ValueError, match="another vocabulary than the run's: load it with"):
        run.perplexity(other)
    with pytest.raises(TypeError, match=r"^perplexity scores a WindowedText \(rnnjax\.corpus\.load\(config, "
                                        r"text=PATH, vocab=run\.vocab\) reads one\), got a str; "
                                        r"run\.losses\(text\) scores a str\.$"):
        run.perplexity("the time traveller")
    short = copy.copy(small_data)
    short.corpus = small_data.corpus[:len(small_data.tokens) - 1]
    with pytest.raises(ValueError, match=r"^data\.tokens has \d+ tokens, and its windows of num_steps"):
        run.perplexity(short)                           # was an IndexError
    with pytest.raises(TypeError, match=r"^vocab must be an rnnjax Vocab \(a restored run's \.vocab\), got a "
                                        r"list\.$"):
        corpus.load(TINY, vocab=run.vocab.idx_to_token)
    # An LSTM trained with cuDNN's kernel scores on a backend without it (a CPU) as its math does elsewhere.
    lstm = TINY.replace(cell="lstm", kernel="plain")
    params = create_train_state(lstm, len(small_data.vocab)).params
    plain = dataclasses.replace(run, config=lstm, params=params)
    cudnn = dataclasses.replace(plain, config=lstm.replace(kernel="cudnn"))
    assert cudnn.perplexity(small_data) == pytest.approx(plain.perplexity(small_data), rel=1e-4)
    # A run of an optimizer not registered here (a notebook's interpreter) scores: it needed one to.
    unknown = dataclasses.replace(run, config=run.config.replace(optimizer="registered elsewhere"))
    assert unknown.perplexity(small_data) == run.perplexity(small_data)


def test_a_restored_run_generates_at_its_matmul_precision(small_data, tmp_path, monkeypatch):
    """As it trained and scores: a run of 'highest' had generated at JAX's default (TF32 on a GPU). The
    session's default is 'highest' (conftest): a run of 'high' shows it."""
    from rnnjax import generate
    fit(TINY.replace(epochs=1, matmul_precision="high"), small_data, tmp_path, devices=1, log=None)
    run, seen, decoders = checkpoint.restore(tmp_path), [], generate._decoders

    def recording(model):
        def at(decode):
            return lambda *args: (seen.append(jax.config.jax_default_matmul_precision), decode(*args))[1]
        return tuple(at(d) for d in decoders(model))
    monkeypatch.setattr(generate, "_decoders", recording)
    greedy = run.predict("the", 5)
    run.predict_batch(["the", "a"], 5, temperature=0.5)
    assert seen == ["high", "high"] and jax.config.jax_default_matmul_precision != "high"
    default = dataclasses.replace(run, config=run.config.replace(matmul_precision="default"))
    assert default.predict("the", 5) == greedy and seen[-1] == jax.config.jax_default_matmul_precision
    with pytest.raises(TypeError, match=r"^predict\(\) got an unexpected keyword argument 'bogus'"):
        run.predict("the", 5, bogus=1)      # it had named predict_batch, which the caller never called


def test_where_a_run_comes_from_and_its_own_validation_perplexity(small_data, tmp_path):
    config = TINY.replace(epochs=1)
    two = [config, config.replace(seed=1)]
    together = runs.fit_runs(two, small_data, tmp_path / "two", devices=1, log=None)
    for k in (0, 1):
        run = checkpoint.restore(tmp_path / "two", run=k)
        assert run.address == {"workdir": str((tmp_path / "two").resolve()), "step": run.step, "run": k,
                               meta_lib.CHECKSUM: run.meta[meta_lib.CHECKSUM]}
        own = [r["val_ppl"] for r in together.history if r["run"] == k][-1]
        assert run.val_ppl == own != run.meta["val_ppl"] and run.init_from is None
        assert run.predict_batch(["it", "the"], 5)[0] == run.predict("it", 5)
    # A prompt is cleaned as the run's text was (d2l's: lower-case letters, any other run a space).
    assert run.prompt("It, THE 42") == "it the " and run.prompt("it has") == "it has"
    assert run.predict("It!", 5) == run.predict("it ", 5)
    assert run.predict_batch(["IT"], 5) == [run.predict("it", 5)]
    assert run.predict_batch((p for p in ("IT", "The")), 5) == run.predict_batch(["it", "the"], 5)
    with pytest.raises(ValueError, match=r"^'42!' keeps only spaces once cleaned as the run's text was"):
        run.predict("42!", 5)                                          # not a space typed: nothing it read
    assert run.predict(" ", 3).startswith(" ")                       # a space typed: a space read
    assert "z" not in run.vocab.idx_to_token      # a letter its text lacks: the prompt typed named, as read
    with pytest.raises(ValueError, match=r"^'Z!', read as 'z ' \(cleaned as the run's text was\): 'z ' has"):
        run.predict("Z!", 3)
    with pytest.raises(ValueError, match=r"^prefixes must be a list of strings, got \['The', 3\]"):
        run.predict_batch(("The", 3), 5)                               # as typed, not cleaned
    raw = dataclasses.replace(run, config=run.config.replace(preprocess="raw"))         # as it is
    assert raw.prompt("It, THE") == "It, THE"
    with pytest.raises(ValueError, match=r"outside the vocabulary: \['I'\]"):
        raw.predict("It", 5)
    # One made by hand is nowhere: no address, no origin, nothing of a checkpoint's.
    by_hand = Restored(config, small_data.vocab, run.params, step=0, meta={})
    assert by_hand.address is None and by_hand.init_from is None and by_hand.val_ppl is None
    assert by_hand.predict("it", 5) == run.predict("it", 5)
