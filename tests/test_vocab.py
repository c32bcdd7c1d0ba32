import numpy as np
import pytest

from rnnjax.vocab import Vocab


def test_from_counts_is_d2ls_vocab_with_its_table():
    tokens = list("abracadabra, Ωmega!")
    for min_freq in (0, 1, 2, 5):
        codes = np.array([ord(t) for t in tokens])
        vocab, table = Vocab.from_counts(np.bincount(codes), chr, min_freq)
        assert vocab.idx_to_token == Vocab(tokens, min_freq=min_freq).idx_to_token
        assert list(table[codes]) == Vocab(tokens, min_freq=min_freq)[tokens]


def test_words_encode_and_decode():
    vocab = Vocab("the time machine the".split(), kind="word")
    ids = vocab.encode("the  machine\ntime")
    assert vocab.decode(ids) == "the machine time" and vocab.split("a b") == ["a", "b"]
    with pytest.raises(ValueError, match=r"words outside the vocabulary: \['It', 'has'\]; the model knows 3"):
        vocab.encode("It has time")
    with pytest.raises(ValueError, match="no words"):
        vocab.encode("  \n")
    # -1 read the last token; a JAX scalar (argmax's) and [] failed in len(); d2l's to_tokens otherwise
    import jax.numpy as jnp
    assert vocab.to_tokens(jnp.argmax(jnp.array([0.0, 1.0]))) == vocab.idx_to_token[1]
    assert vocab.to_tokens([]) == [] and vocab.to_tokens([1]) == vocab.idx_to_token[1]
    assert vocab.to_tokens(np.array([1, 2])) == vocab.idx_to_token[1:3]
    said = r"^-?\d is no token's index in this vocabulary of 4 \(0 to 3\)\.$"
    for bad in (lambda: vocab.decode([-1]), lambda: vocab.to_tokens(4), lambda: vocab.to_tokens([0, 9])):
        with pytest.raises(IndexError, match=said):
            bad()
    for bad in (2.7, True, np.float32(1.0)):            # read as 2 and 1, silently (hostile pass)
        with pytest.raises(TypeError, match=r"^A token's index is a whole number, got "):
            vocab.to_tokens(bad)
    assert vocab.decode(np.array([1, 2], np.int32)) == vocab.decode([1, 2])


def test_characters_outside_a_raw_vocabulary_are_named_without_d2ls_alphabet():
    vocab = Vocab(list("ΩΑ 12"))
    with pytest.raises(ValueError, match=r"\['Z'\]; the model knows ' 12ΑΩ'\.$"):
        vocab.encode("ΩZ")
    assert vocab.decode(vocab.encode("Ω 1")) == "Ω 1"
    large = Vocab([chr(0x4E00 + i) for i in range(5000)])          # a text of Chinese characters: counted
    with pytest.raises(ValueError, match=r"\['Z'\]; the model knows 5,000 characters \('一丁.{38}'\.\.\.\)\.$"):
        large.encode("一Z")


def test_json_keeps_kind_and_source_and_the_time_machines_stays_as_it_was():
    d2l = Vocab(list("it has"))
    assert d2l.to_json() == {"idx_to_token": d2l.idx_to_token}
    words = Vocab(["a", "b"], kind="word", source="ab" * 20)
    back = Vocab.from_json(words.to_json())
    assert back == words and back.kind == "word" and back.source == "ab" * 20
    assert Vocab.from_json({"idx_to_token": ["<unk>", "a"]}).kind == "char"      # checkpoints of before


def test_differs_says_how():
    chars = Vocab(list("ab"), source="1" * 40)
    assert chars.differs(Vocab(list("ab"), source="1" * 40)) is None
    assert "the text of SHA-1 1111" in chars.differs(Vocab(list("ab"), source="2" * 40))
    assert "the Time Machine" in chars.differs(Vocab(list("ab")))
    assert chars.differs(Vocab(["a", "b"], kind="word", source="1" * 40)).startswith("char tokens")
    assert chars.differs(Vocab(list("abc"), source="1" * 40)) == "another vocabulary"


def test_a_vocabulary_of_longer_tokens_is_counted_not_said_to_be_empty():
    """A vocabulary of character pairs said "the model knows '' (lowercase letters and space)"."""
    pairs = Vocab(["th", "e ", "ti", "me"])
    with pytest.raises(ValueError, match=r"outside the vocabulary: .*; the model knows 4 tokens\.$"):
        pairs.encode("thz")
