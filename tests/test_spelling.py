from rnnjax.spelling import as_flags, choices, disagreement, flag_spelling, in_words, plural, shown, spelt


def test_values_are_shown_as_typed_and_give_their_value_back():
    values = (1.0, 0.5, 1e-05, 1.2345678e-07, 1e20, 123456789.0, -1.0, 0.1234567, 1.0000001, 3, "gru")
    assert [shown(v) for v in values] == [
        "1", "0.5", "1e-5", "1.2345678e-7", "1e20", "123456789", "-1", "0.1234567", "1.0000001", "3", "gru"]
    assert all(float(shown(v)) == v for v in values if isinstance(v, float))


def test_a_setting_is_spelt_as_python_takes_it_and_as_a_command_does_within_flag_spelling():
    assert not as_flags()
    assert [spelt("batch_size"), spelt("batch_size", 32), spelt("lr", 1e-05), spelt("cell", "a b"),
            spelt("bidirectional", False)] == [
        "batch_size", "batch_size=32", "lr=1e-5", "cell='a b'", "bidirectional=False"]
    with flag_spelling():
        assert as_flags()
        assert [spelt("batch_size"), spelt("batch_size", 32), spelt("lr", 1e-05), spelt("cell", "a b"),
                spelt("cell", ""), spelt("bidirectional", False), spelt("bidirectional", True)] == [
            "--batch-size", "--batch-size 32", "--lr 1e-5", "--cell 'a b'", "--cell ''", "--no-bidirectional",
            "--bidirectional"]
        with flag_spelling():       # nested: still flags, and the outer one is kept as the inner one ends
            assert as_flags()
        assert as_flags()
    assert not as_flags()


def test_a_disagreement_names_the_setting_given_and_the_value_the_run_has():
    assert disagreement("lr", (0.5,), [1.0]) == "lr=0.5 (it has 1)"
    assert disagreement("cell", ("gru",), ["rnn"]) == "cell='gru' (it has 'rnn')"
    assert disagreement("bidirectional", (False,), [True]) == "bidirectional=False (it has True)"
    assert disagreement("seed", (1, 0), [0, 1]) == "seed=[1, 0] (it has [0, 1], in that order)"
    with flag_spelling():       # as a command types them
        assert disagreement("lr", (0.5,), [1.0]) == "--lr 0.5 (it has 1)"
        assert disagreement("seed", (0, 1), [2, 3]) == "--seeds 0,1 (it has 2,3)"     # the alias for a list
        assert disagreement("seed", (1,), [0]) == "--seed 1 (it has 0)"
        assert disagreement("seed", (1, 0), [0, 1]) == "--seeds 1,0 (it has 0,1, in that order)"
        assert (disagreement("bidirectional", (False,), [True])
                == "--no-bidirectional (it has --bidirectional)")


def test_items_are_listed_as_a_sentence_lists_them():
    lists = ([], ["a"], ["a", "b"], ("a", "b", "c"))
    assert [in_words(x) for x in lists] == ["", "a", "a and b", "a, b and c"]


def test_choices_are_sorted_words_quoted_where_one_is_not_a_plain_word():
    """A cell registered as 'mgu, v2' read as two cells in a plain list (hostile pass)."""
    assert choices({"rnn", "gru", "lstm"}) == "gru, lstm, rnn"
    assert choices(["rnn", "mgu, v2", "", "x-1.5"]) == "'', 'mgu, v2', rnn, x-1.5"


def test_plural_counts_with_thousands_separators_and_the_singular_of_one():
    said = [plural(n, "window") for n in (0, 1, 2, 10_000)]
    assert said == ["0 windows", "1 window", "2 windows", "10,000 windows"]
