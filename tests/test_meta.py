"""A checkpoint's meta is checked like its arrays: its checksum, its keys, its position against its step."""

import copy

import pytest

from rnnjax import meta
from rnnjax.data import Vocab

from conftest import TINY

VOCAB = Vocab(list("abc "))
PER_EPOCH = -(-TINY.num_train // TINY.batch_size)          # 13


def sealed(epoch=2, batch=0, partial=(), runs=None, **position):
    m = meta.make(TINY, VOCAB, {"epoch": epoch, "batch": batch, "partial": [list(p) for p in partial],
                                "stopped": [], **position}, PER_EPOCH, num_devices=1)
    if runs:
        m["runs"] = [TINY.replace(seed=s).to_json() for s in range(runs)]
    return meta.seal({**m, "val_ppl": 12.5, "checksums": {".step": "0000002a"}})


def test_a_good_meta_passes_at_its_step_only():
    assert meta.problem(sealed(), 2 * PER_EPOCH) is None
    assert meta.problem(sealed(1, 3, [[1.5, 128.0]] * 3, high=1), PER_EPOCH + 3) is None
    assert "not its step" in meta.problem(sealed(), 2 * PER_EPOCH + 1)


def test_a_changed_digit_fails_the_checksum_and_a_resealed_one_the_step():
    m = sealed(epoch=20)
    m["position"]["epoch"] = 21          # the hostile case: resumed at epoch 22, epoch 21 never trained
    assert "fails its checksum" in meta.problem(m, 20 * PER_EPOCH)
    assert "which is step" in meta.problem(meta.seal(m), 20 * PER_EPOCH)


def reseal_with(change):
    m = copy.deepcopy(sealed())
    change(m)
    return meta.seal(m)


@pytest.mark.parametrize("change,message", [
    (lambda m: m.update(config={}), "config without"),
    (lambda m: m.update(vocab={}), "lacks its vocabulary"),
    (lambda m: m.update(vocab={"idx_to_token": ["a", "a", "<unk>"]}), "repeated token"),
    (lambda m: m["position"].update(nope=1), "position with keys"),
    (lambda m: m["position"].update(epoch="2"), "position of epoch"),
    (lambda m: m["position"].update(partial=[[1.0, 2.0]]), "partial sums"),
    (lambda m: m["position"].update(high=-1), "divergence streak"),
    (lambda m: m.update(checksums="abc"), "lacks the checksums"),
    (lambda m: m.pop("checksums"), "lacks the checksums"),
    (lambda m: m.update(val_ppl="low"), "validation perplexity"),
    (lambda m: m["config"].update(num_hiddens=-3), "not a valid config"),
    (lambda m: m.update(runs="all"), "not a list"),
    (lambda m: m.update(format=7), "format 1 or 2"),
])
def test_every_kind_of_damage_is_named(change, message):
    assert message in meta.problem(reseal_with(change), 2 * PER_EPOCH)


def test_a_meta_without_its_checksum_is_damage_unless_it_is_of_format_1():
    m = sealed()
    del m[meta.CHECKSUM]
    assert "without its checksum" in meta.problem(m, 2 * PER_EPOCH)
    old = {k: v for k, v in m.items() if k != "steps_per_epoch"}
    assert meta.problem({**old, "format": 1}, 2 * PER_EPOCH) is None       # before the meta had them
    assert "lacks its steps per epoch" in meta.problem(meta.seal(old), 2 * PER_EPOCH)


def test_positions_of_runs_trained_together():
    m = sealed(1, 2, runs=2)
    m["position"].update(partial=[[[1.0, 2.0]] * 2, []], stopped=[None, "diverged"], high=[0, 2])
    assert meta.problem(meta.seal(m), PER_EPOCH + 2) is None
    m["position"]["high"] = 0                               # one streak per run
    assert "divergence streak" in meta.problem(meta.seal(m), PER_EPOCH + 2)
    old = sealed(2, 0, runs=2)                              # before the streak was saved: no "high"
    old["position"]["partial"] = [[], []]
    assert meta.problem(meta.seal(old), 2 * PER_EPOCH) is None
