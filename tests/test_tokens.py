"""Tokens in NumPy: the same as d2l's regex and str.split, across chunk boundaries."""

from rnnjax import data, tokens

from conftest import other_alphabet


def test_d2l_preprocessing_in_numpy_is_the_regex():
    text = "  It's 1895: the Time-Traveller!\n\nÉtonnant, n'est-ce pas?  " + other_alphabet(300) + "end."
    for chunk in (3, 7, 1 << 22):                      # runs of non-letters across chunk boundaries
        codes = tokens.char_codes(text, "d2l", chunk)
        assert codes.tobytes().decode("utf-32-le") == data.preprocess(text)
        assert tokens.char_codes(text, "raw", chunk).tobytes().decode("utf-32-le") == text


def test_words_split_at_any_whitespace_across_chunks():
    text = "a\u3000b\xa0c\td\n\ne  " + other_alphabet(300)
    for chunk in (1, 5, 1 << 22):
        ids, words = tokens.word_ids(text, "raw", chunk)
        assert [words[i] for i in ids] == text.split()
        ids, words = tokens.word_ids(text, "d2l", chunk)
        assert [words[i] for i in ids] == data.preprocess(text).split()
