"""Property tests (hypothesis): the data pipeline, generation and a workdir's files hold for any input."""

import contextlib
import functools
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from experiments.benchmark import d2l_predict
from rnnjax import checkpoint, meta as meta_lib, metrics, workdir
from rnnjax.config import PRESETS
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


@pytest.mark.filterwarnings("ignore:batch_size=.* is more than the")       # drawn so on purpose
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


# --- a workdir's files, damaged any way: one error of ours, never another exception ---

TINY = PRESETS["tiny"]
POSITION = {"epoch": 1, "batch": 2, "partial": [{"loss_sum": 3.5, "count": 128.0}], "stopped": [],
            "high": [1]}
META = meta_lib.seal({**meta_lib.make(TINY, VOCAB, POSITION, 13, num_devices=1),
                      "val_ppl": 9.5, "checksums": {".step": "0000000f"}})
SCALAR = st.none() | st.booleans() | st.integers(-3, 30) | st.floats(allow_nan=False) | st.text(max_size=4)
JSON = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def paths(tree, prefix=()):
    """Every key path of a JSON tree."""
    yield prefix
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        yield from paths(v, prefix + (k,))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(paths(META))[1:]), st.sampled_from(["set", "delete"]), JSON, st.booleans())
def test_any_damage_to_a_meta_is_named_never_raised(path, how, value, reseal):
    meta = json.loads(json.dumps(META))
    *parents, last = path
    node = meta
    for k in parents:
        node = node[k]
    if how == "delete":
        del node[last]
    else:
        node[last] = value
    if reseal and isinstance(meta, dict):
        with contextlib.suppress(ValueError):       # NaN or Infinity: no strict JSON, so no seal either
            meta = meta_lib.seal(meta)
    why = meta_lib.problem(meta, 15)                       # never raises
    if meta != META and not reseal:
        assert why is not None                             # any change is caught by the checksum
    assert why is None or isinstance(why, str)


@settings(max_examples=12, deadline=None)
@given(st.text(alphabet="ab[]\\*?{}%# ~", min_size=1, max_size=6))
def test_a_workdir_path_is_refused_or_its_checkpoints_restore(name):
    """Paths orbax misreads are refused; any other saves, reads back, and restores."""
    with tempfile.TemporaryDirectory() as base:
        _check_workdir_path(Path(base) / name / "w", name)


def _check_workdir_path(path, name):
    if set(name) & set(workdir.UNSAFE):
        with pytest.raises(workdir.WorkdirError, match="orbax's checkpoints cannot take"):
            workdir.check_writable(path)
        return
    workdir.check_writable(path)
    state = {"a": np.arange(3, dtype=np.float32)}
    mngr = checkpoint.manager(path / checkpoint.SUBDIR)
    position = {"epoch": 0, "batch": 1, "partial": [{"loss_sum": 1.0, "count": 2.0}], "stopped": [],
                "high": [0]}
    meta = meta_lib.make(TINY, VOCAB, position, 13)
    checkpoint.save(mngr, 1, state, meta)
    checkpoint.check_saved(mngr)                # read back: its manifest is there
    mngr.close()
    assert checkpoint.read_meta(path, 1)["position"]["batch"] == 1
    restored = checkpoint.restore_state(path / checkpoint.SUBDIR, 1, state)
    np.testing.assert_array_equal(restored["a"], state["a"])
    assert ocp.utils.checkpoint_steps(path / checkpoint.SUBDIR) == [1]


RECORD = st.fixed_dictionaries({"epoch": st.integers(1, 5), "train_ppl": st.floats(1, 50),
                                "val_ppl": st.floats(1, 50)})
LINE = st.one_of(RECORD.map(json.dumps), st.text(max_size=20), st.just('{"epoch": 3}'),
                 st.just('{"epoch": 2, "train_ppl": NaN, "val_ppl": Infinity}'), st.just(""))


@settings(max_examples=200, deadline=None)
@given(st.lists(LINE, max_size=6), st.booleans())
def test_any_metrics_file_is_read_or_named(lines, torn):
    with tempfile.TemporaryDirectory() as base:     # hypothesis runs it 200 times: none is left behind
        _check_metrics_file(Path(base) / metrics.FILENAME, lines, torn)


def _check_metrics_file(path, lines, torn):
    text = "\n".join(lines) + ("" if torn else "\n")
    path.write_text(text)
    log = metrics.MetricsLog(path, warn=lambda message: None)
    try:
        records = log.read()
    except metrics.MetricsError as e:
        assert str(e).startswith(str(path))
        return
    assert all(isinstance(r["epoch"], int) for r in records)
    log.truncate(3)
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
