"""``rnnjax.read_state``: one checkpoint's arrays read back without a manager, checked by their checksums."""

import jax
import numpy as np
import pytest

from conftest import TINY, assert_trees_equal

from rnnjax import checkpoint, meta as meta_lib
from rnnjax.read_state import restore_state
from rnnjax.state import abstract_train_state, create_train_state
from rnnjax.stored import DamagedCheckpoint, StateMismatch
from rnnjax.vocab import Vocab

VOCAB = Vocab(list("abcdefghij "))
ADAM = TINY.replace(optimizer="adam")
POSITION = {"epoch": 1, "batch": 0, "partial": [{}], "stopped": [], "high": [0]}


@pytest.fixture
def saved(tmp_path):
    """A workdir holding step 3 of an Adam-trained state whose arrays are not their initial values."""
    state = jax.device_get(create_train_state(ADAM, len(VOCAB)))
    state = state.replace(step=np.asarray(3, np.int32),
                          params=jax.tree.map(lambda x: x + np.float32(0.5), state.params))
    mngr = checkpoint.manager(tmp_path / checkpoint.SUBDIR)
    checkpoint.save(mngr, 3, state, meta_lib.make(ADAM, VOCAB, POSITION, 3))
    checkpoint.check_saved(mngr)
    mngr.close()
    return tmp_path, state


def test_the_whole_state_reads_back_as_saved(saved):
    workdir, state = saved
    restored = restore_state(workdir / checkpoint.SUBDIR, 3, abstract_train_state(ADAM, len(VOCAB)))
    assert_trees_equal(restored, state)                 # step, params and Adam's moments
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(restored))       # host arrays


def test_params_only_reads_the_params_under_any_optimizer_s_target(saved):
    workdir, state = saved
    target = abstract_train_state(TINY, len(VOCAB))       # SGD's: no moments to fit
    assert_trees_equal(restore_state(workdir / checkpoint.SUBDIR, 3, target, params_only=True), state.params)
    with pytest.raises(StateMismatch):                  # the whole state needs the optimizer that made it
        restore_state(workdir / checkpoint.SUBDIR, 3, target)


def test_an_array_that_differs_from_its_checksum_is_damage_naming_it(saved):
    workdir, _ = saved
    meta = checkpoint.read_meta(workdir, 3)
    name = next(k for k in meta["checksums"] if k.startswith(".params"))
    meta = {**meta, "checksums": {**meta["checksums"], name: "00000000"}}
    with pytest.raises(DamagedCheckpoint, match=r"is damaged: 1 array\(s\) fail their checksums \("
                       + name.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        restore_state(workdir / checkpoint.SUBDIR, 3, abstract_train_state(ADAM, len(VOCAB)), meta)


def test_a_state_without_orbax_s_tree_metadata_reads_by_the_target_s_tree(saved):
    workdir, state = saved
    (workdir / checkpoint.SUBDIR / "3" / "state" / "_METADATA").unlink()
    restored = restore_state(workdir / checkpoint.SUBDIR, 3, abstract_train_state(ADAM, len(VOCAB)))
    assert_trees_equal(restored, state)


def test_arrays_that_do_not_fit_the_target_are_damage_not_reshaped(saved):
    """The target is made from the meta's config: arrays of other shapes mean the two disagree."""
    workdir, _ = saved
    wider = ADAM.replace(num_hiddens=ADAM.num_hiddens + 1)
    with pytest.raises(DamagedCheckpoint, match="its arrays do not fit the model its meta describes"):
        restore_state(workdir / checkpoint.SUBDIR, 3, abstract_train_state(wider, len(VOCAB)))
