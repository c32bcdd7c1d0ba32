import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmark import d2l_predict
from rnnjax.data import Vocab
from rnnjax.generate import predict, predict_batch, sample
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


def test_lengths_up_to_a_power_of_two_share_one_compile_and_a_shorter_run_is_a_prefix(model_params):
    """Every new ``num_preds`` compiled the decoder again; now each doubling does, and what is generated
    is cut from the longer run, greedy or sampled (step i draws with its own key)."""
    from rnnjax.generate import greedy
    model, params = model_params
    key = jax.random.key(3)
    longest = predict(model, params, VOCAB, "it", 64), predict(model, params, VOCAB, "it", 64, key=key)
    compiled = greedy._cache_size(), sample._cache_size()
    for n in (33, 40, 63):
        assert predict(model, params, VOCAB, "it", n) == longest[0][: 2 + n]
        assert predict(model, params, VOCAB, "it", n, key=key) == longest[1][: 2 + n]
    assert (greedy._cache_size(), sample._cache_size()) == compiled
    long = predict(model, params, VOCAB, "it", 4096)                   # above 1024: multiples of 1024
    size = greedy._cache_size()
    assert predict(model, params, VOCAB, "it", 2049) == long[: 2 + 2049]
    assert greedy._cache_size() == size + 1               # 3072 steps, not the 4096 a power of two takes


def test_the_steps_generated_are_a_power_of_two_up_to_1024_then_at_most_1023_more():
    from rnnjax.generate import MAX_PREDS, padded
    assert {padded(n) for n in range(1, 1025)} == {2 ** k for k in range(11)}
    for n in (0, 1, 20, 1024, 1025, 5000, 2 ** 20 + 1, MAX_PREDS):
        assert n <= padded(n) <= max(n + 1023, 2 * n - 1) and (n <= 1024 or padded(n) % 1024 == 0)


def test_batched_prefixes_of_different_lengths(model_params):
    model, params = model_params
    prefixes = ["it has", "a", "the time machine", "q"]
    batch = predict_batch(model, params, VOCAB, prefixes, 12)
    assert batch == [predict(model, params, VOCAB, p, 12) for p in prefixes]


def test_unknown_characters_are_a_clear_error(model_params):
    model, params = model_params
    with pytest.raises(ValueError, match=r"outside the vocabulary: \['I'\]"):
        predict(model, params, VOCAB, "It has", 5)


@pytest.mark.parametrize("prefixes,num_preds,message", [([""], 3, "at least one"),
                                                        ([], 3, r"^prefixes is an empty list: give at least"),
                                                        (["a"], -1, "num_preds"),
                                                        (["a"], 99999999999, "num_preds must be between"),
                                                        (["a"] * 10_000, 10_000,
                                                         r"^10,000 prompt\(s\) of up to 1 characters and "
                                                         r"10,000 more each keep 102,410,000 tokens in one "),
                                                        ("it has", 3, "a list of strings"),
                                                        ([b"it"], 3, "a list of strings")])
def test_bad_requests(model_params, prefixes, num_preds, message):
    model, params = model_params
    with pytest.raises(ValueError, match=message):
        predict_batch(model, params, VOCAB, prefixes, num_preds)


def test_too_many_tokens_are_refused_before_the_prompts_are_encoded(model_params, monkeypatch):
    """Encoding 10,000 prompts of a million characters took minutes and more memory than a machine has."""
    model, params = model_params
    monkeypatch.setattr(type(VOCAB), "encode", lambda self, text: pytest.fail("encoded first"))
    with pytest.raises(ValueError, match=r"^300 prompt\(s\) of up to 1,000,000 characters and 10 more"):
        predict_batch(model, params, VOCAB, ["it has " * 1000 + "a" * 993_000] * 300, 10)


def test_prefixes_from_a_generator_are_read_once(model_params):
    model, params = model_params
    expected = predict_batch(model, params, VOCAB, ["it", "a"], 5)
    assert predict_batch(model, params, VOCAB, (p for p in ["it", "a"]), 5) == expected
    assert predict_batch(model, params, VOCAB, ("it", "a"), np.int64(5)) == expected    # any integer type


def test_a_model_params_and_vocabulary_not_of_one_run_are_one_sentence(model_params):
    """Another run's vocabulary would decode the ids as other tokens (or index past its end)."""
    model, params = model_params
    wider = RNNLM(RNN(SimpleRNNCell(32)), len(VOCAB))
    wider_params = wider.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    V, other = len(VOCAB), Vocab(list("abc "))
    for given, message in [
            ({"model": params}, r"^model must be an RNNLM \(a restored run's \.model\), got a dict\.$"),
            ({"vocab": list("abc")}, r"^vocab must be a Vocab \(a restored run's \.vocab\), got a list\.$"),
            ({"vocab": other}, rf"^The vocabulary has {len(other)} tokens, the model {V}: give the run's"),
            ({"params": {"params": params}}, r"^Give the parameters themselves \(a restored run's "
                                             r"\.params\), not flax's variables"),
            ({"params": wider_params}, rf"^The parameters do not fit the model \(vocabulary {V}\): "
                                       rf".* has shape \(32, {V}\), expected \(16, {V}\)\.$"),
            ({"model": wider}, rf"^The parameters do not fit the model .* has shape \(16, {V}\), expected "
                               rf"\(32, {V}\)\.$")]:
        with pytest.raises(ValueError, match=message):
            predict(**{"model": model, "params": params, "vocab": VOCAB, **given}, prefix="it", num_preds=3)
    for dtype in (jnp.bfloat16, jnp.float16):            # cast for inference: generates as before
        cast = jax.tree.map(lambda x: x.astype(dtype), params)
        assert predict(model, cast, VOCAB, "it", 3).startswith("it")
    with pytest.raises(ValueError, match=r"is int32, expected float32; cast it to float32\.$"):
        predict(model, jax.tree.map(lambda x: x.astype(jnp.int32), params), VOCAB, "it", 3)
    stacked = jax.tree.map(lambda x: jnp.stack([x, x, x]), params)      # fit_runs' state, of 3 runs
    message = (r"^The parameters do not fit the model \(vocabulary \d+\): they are 3 runs' parameters "
               r"stacked on a first axis \(fit_runs'\); take run k's with jax.tree.map\(lambda x: x\[k\], "
               r"params\), or restore\(workdir, run=k\)\.$")
    with pytest.raises(ValueError, match=message):
        predict(model, stacked, VOCAB, "it", 3)
    assert predict(model, jax.tree.map(lambda x: x[1], stacked), VOCAB, "it", 3) == predict(
        model, params, VOCAB, "it", 3)


KEY = r"^key must be one JAX PRNG key, e.g. jax.random.key\(1\) or jax.random.PRNGKey\(1\), "


@pytest.mark.parametrize("kwargs,message", [
    ({"num_preds": True}, r"^num_preds must be a whole number, got True\.$"),
    ({"num_preds": 5.0}, r"^num_preds must be a whole number, got 5\.0\.$"),
    ({"num_preds": "5"}, r"^num_preds must be a whole number, got '5'\.$"),
    ({"top_k": 2.5}, r"^top_k must be a whole number, got 2\.5\.$"),
    ({"top_k": True}, r"^top_k must be a whole number, got True\.$"),
    ({"temperature": "0.5"}, r"^The temperature must be a real number, got '0\.5'\.$"),
    ({"temperature": True}, r"^The temperature must be a real number, got True\.$"),
    ({"temperature": 10 ** 400}, r"^The temperature must be a real number a float can hold, got one beyond"),
    ({"key": 1}, KEY + r"got 1\.$"),
    ({"key": np.zeros(3, np.uint32)}, KEY + r"got an array of shape \(3,\) and dtype uint32\.$"),
    ({"key": jax.random.split(jax.random.key(0))}, KEY + r"got an array of shape \(2,\) and dtype key<fry>"),
])
def test_arguments_of_the_wrong_type_are_one_sentence(model_params, kwargs, message):
    model, params = model_params
    with pytest.raises(ValueError, match=message):
        predict_batch(model, params, VOCAB, ["it"], **{"num_preds": 3, **kwargs})


def test_predict_of_anything_but_one_string_names_itself(model_params):
    model, params = model_params
    with pytest.raises(ValueError, match=r"^prefix must be a string, got \['it'\]; for several prompts, use "
                                         r"predict_batch\.$"):
        predict(model, params, VOCAB, ["it"], 3)


def test_numpy_numbers_and_either_kind_of_key_sample_as_python_s(model_params):
    model, params = model_params
    draw = functools.partial(predict_batch, model, params, VOCAB, ["it has"], 12)
    expected = draw(temperature=0.5, top_k=3, key=jax.random.PRNGKey(3))
    assert draw(temperature=np.float32(0.5), top_k=np.int64(3), key=jax.random.key(3)) == expected
    assert draw(temperature=jnp.float32(0.5), top_k=3, key=np.asarray(jax.random.PRNGKey(3))) == expected


def test_prefix_length_buckets_share_a_compilation(model_params):
    model, params = model_params
    from rnnjax.generate import greedy
    predict(model, params, VOCAB, "abcde", 9)
    before = greedy._cache_size()
    predict(model, params, VOCAB, "abcdefg", 9)       # 5 and 7 both pad to 8
    assert greedy._cache_size() == before
    np.testing.assert_equal(predict(model, params, VOCAB, "abcdefg", 9)[:7], "abcdefg")


# Sampling.

def test_sampling_at_a_temperature_near_zero_is_greedy(model_params):
    model, params = model_params
    prefixes = ["it has", "a", "the time machine"]
    greedy_texts = predict_batch(model, params, VOCAB, prefixes, 30)
    for cold in (1e-4, 1e-30, 1e-45):      # logits / 1e-30 overflow unless shifted first
        assert predict_batch(model, params, VOCAB, prefixes, 30, temperature=cold) == greedy_texts
        assert predict_batch(model, params, VOCAB, prefixes, 30, temperature=cold, top_k=3) == greedy_texts
    assert predict_batch(model, params, VOCAB, prefixes, 30, temperature=1.0) != greedy_texts


def test_sampling_is_deterministic_under_a_key(model_params):
    model, params = model_params
    draw = functools.partial(predict_batch, model, params, VOCAB, ["it has", "q"], 40)
    assert draw(key=jax.random.PRNGKey(7)) == draw(key=jax.random.PRNGKey(7))
    assert draw(key=jax.random.PRNGKey(7)) != draw(key=jax.random.PRNGKey(8))
    assert draw(temperature=1.0) == draw(key=jax.random.PRNGKey(0))        # the documented default key
    jax.clear_caches()
    try:        # the default draws are threefry's whatever JAX's default PRNG (hostile pass)
        jax.config.update("jax_default_prng_impl", "rbg")
        assert draw(temperature=1.0) == draw(key=jax.random.key(0, impl="threefry2x32"))
        rbg = draw(key=jax.random.PRNGKey(0))
    finally:
        jax.config.update("jax_default_prng_impl", "threefry2x32")
        jax.clear_caches()
    assert draw(temperature=1.0) != rbg         # a key of the user's stays theirs


@pytest.mark.parametrize("top_k", [1, 3])
def test_top_k_never_emits_a_token_outside_the_top_k(model_params, top_k):
    model, params = model_params
    params = jax.tree.map(lambda x: x / 4, params)       # unsharpened: many tokens are likely
    prefix = "it has"
    texts = predict_batch(model, params, VOCAB, [prefix] * 16, 30, temperature=3.0, top_k=top_k,
                          key=jax.random.PRNGKey(1))
    for text in texts:
        ids = jnp.asarray([VOCAB.encode(text)])
        logits = model.apply({"params": params}, ids)[0]           # logits[j] predicts token j + 1
        for j in range(len(prefix), len(text)):
            top = np.argsort(-np.asarray(logits[j - 1]))[:top_k]
            assert ids[0, j] in top, (text, j)
    if top_k == 1:
        assert texts == predict_batch(model, params, VOCAB, [prefix] * 16, 30)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_first_sampled_character_follows_the_softmax(model_params, temperature):
    """Chi-square test of 20000 draws against softmax(logits / T), at a fixed seed (it fails for a
    temperature 10% off)."""
    model, params = model_params
    n, prefix = 20000, "the"
    ids = np.tile(VOCAB.encode(prefix), (n, 1))
    tokens = sample(model, params, ids, np.full(n, len(prefix)), 1, jax.random.PRNGKey(3), temperature)
    counts = np.bincount(np.asarray(tokens[:, -1]), minlength=len(VOCAB))
    logits = model.apply({"params": params}, jnp.asarray([VOCAB.encode(prefix)]))[0, -1]
    expected = n * np.asarray(jax.nn.softmax(logits / temperature), np.float64)
    keep = expected >= 5                                       # the test's rule for a bin of its own
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    observed, expected = observed[expected > 0], expected[expected > 0]
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    df = len(observed) - 1
    critical = df * (1 - 2 / (9 * df) + 3.09 * (2 / (9 * df)) ** 0.5) ** 3     # Wilson-Hilferty, p = 0.001
    assert df >= 5 and chi2 < critical, (chi2, critical)


@pytest.mark.parametrize("kwargs,message", [({"temperature": 0.0}, "temperature must be a positive"),
                                            ({"temperature": float("nan")}, "temperature must be a positive"),
                                            ({"temperature": 3.5e38}, r"up to 3.4e\+38, got 3.5e\+38"),
                                            ({"top_k": 0}, r"top_k must be between 1"),
                                            ({"top_k": 99}, r"top_k must be between 1")])
def test_bad_sampling_requests(model_params, kwargs, message):
    model, params = model_params
    with pytest.raises(ValueError, match=message):
        predict_batch(model, params, VOCAB, ["a"], 3, **kwargs)


def test_sampling_never_draws_unk(model_params):
    """``<unk>`` stands for no character: greedy picks it as d2l's argmax does, sampling never."""
    model, params = model_params
    out = params["output_layer"]
    likely = {**params, "output_layer": {**out, "bias": out["bias"].at[VOCAB.unk].add(8.0)}}
    assert "<unk>" in predict(model, likely, VOCAB, "it has", 10)
    texts = predict_batch(model, likely, VOCAB, ["it has"] * 32, 20, temperature=1.0)
    texts += predict_batch(model, likely, VOCAB, ["it has"] * 8, 20, temperature=1e-30, top_k=1)
    assert not any("<unk>" in t for t in texts)
    assert all(len(t) == len("it has") + 20 for t in texts)
