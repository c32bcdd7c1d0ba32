"""The memory check counts the parameters: a model too large for the machine is refused up front."""

import jax
import pytest

from rnnjax import memory
from rnnjax.cells import CELLS, SimpleRNNCell
from rnnjax.config import PRESETS
from rnnjax.spelling import flag_spelling
from rnnjax.state import abstract_train_state

from conftest import TINY


@pytest.mark.parametrize("config, registered", [
    (TINY, None), (TINY.replace(cell="gru", num_layers=3), None),
    (TINY.replace(cell="lstm", num_layers=2, bidirectional=True), None),
    (TINY.replace(num_layers=3, bidirectional=True), None),
    (TINY.replace(cell="gru", optimizer="adam"), None),
    (TINY.replace(cell="gru", num_layers=2), SimpleRNNCell)])     # another cell under gru's name: 2.8x before
def test_the_parameters_and_the_optimizer_s_state_are_counted_exactly(config, registered, monkeypatch):
    if registered is not None:
        monkeypatch.setitem(CELLS, config.cell, registered)
    abstract = abstract_train_state(config, 28)
    params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract.params))
    weights, _ = memory.estimate(config, 28, 1)
    state = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    assert state + memory.PARAM_COPIES * params <= weights <= state + memory.PARAM_COPIES * params + 64


def test_a_model_too_large_for_the_machine_is_refused_naming_the_flags(monkeypatch):
    monkeypatch.setattr(memory, "_available", lambda device: 24 * 2 ** 30)        # a 24 GiB machine
    with pytest.raises(ValueError, match=r"GiB of parameters.* lower num_hiddens or num_layers"):
        memory.check(TINY.replace(num_hiddens=20000, num_layers=4), 28, 2)
    with pytest.raises(ValueError, match=r"about \d\.\de\+1\d GiB .* \(\d\.\de\+1\d GiB of parameters"):
        memory.check(TINY.replace(num_layers=10 ** 20), 28, 2)       # counted, not summed layer by layer
    with pytest.raises(ValueError, match=r"lower batch_size or num_steps"):
        memory.check(TINY.replace(batch_size=10 ** 7), 28, 2)
    d2l = PRESETS["d2l"]
    memory.check(d2l, 28, 2, num_runs=10)
    with pytest.raises(ValueError, match=r"^1000 runs of num_hiddens=32 x num_layers=1 at batch_size=1024 "
                                         r"x num_steps=32 needs about .*; lower the number of runs \(the "
                                         r"configs given to fit_runs\), or batch_size or num_steps, or "
                                         r"num_hiddens or num_layers\.$"):
        memory.check(d2l, 28, 2, num_runs=1000)
    with pytest.raises(ValueError, match=r"^1000 runs of --num-hiddens 32 x --num-layers 1 at --batch-size "
                                         r"1024 x --num-steps 32 needs about .*; lower the number of runs "
                                         r"\(--seeds, --lr, --clip lists\), or --batch-size or --num-steps, "
                                         r"or --num-hiddens or --num-layers\.$"), flag_spelling():
        memory.check(d2l, 28, 2, num_runs=1000)          # as the command names them
    for name, config in PRESETS.items():            # every real recipe fits, on 1 to 4 devices
        for shards in (1, 2, 4):
            memory.check(config, 28, shards)


def test_a_text_whose_tokens_do_not_fit_on_every_device_is_refused_naming_the_text(monkeypatch):
    """Each device holds the token stream (CPU devices, in the host's memory): a 200 MB text took 4 GB."""
    monkeypatch.setattr(memory, "_available", lambda device: 24 * 2 ** 30)
    memory.check(TINY, 28, 2, data_bytes=8 * 2 ** 30)
    with pytest.raises(ValueError, match=r"^The text's token stream takes 8.0 GiB on each of the 4 "
                                         r"device\(s\) .*train on a part of the text, or on fewer "
                                         r"devices\.$"):
        memory.check(TINY, 28, 4, data_bytes=8 * 2 ** 30)
    with pytest.raises(ValueError, match=r"lower batch_size or num_steps"):     # the step, not the text
        memory.check(TINY.replace(batch_size=10 ** 7), 28, 2, data_bytes=2 ** 20)


def test_many_layers_warn_of_a_long_compilation():
    assert memory.compile_note(TINY) is None
    assert "num_layers=1000" in memory.compile_note(TINY.replace(num_layers=1000))


def test_an_optimizer_whose_state_needs_the_model_s_own_tree_is_counted_from_it(monkeypatch):
    """A mask of the parameters' tree (weight decay on the matrices only) failed on the stand-in that
    sizes an optimizer's state: a traceback where the run had trained."""
    import optax
    from rnnjax import optimizers
    mask = jax.tree.map(lambda x: x.ndim > 1, abstract_train_state(TINY, 28).params)
    monkeypatch.setitem(optimizers.OPTIMIZERS, "masked", optimizers.clipped(
        lambda learning_rate: optax.adamw(learning_rate, weight_decay=1e-4, mask=mask)))
    config = TINY.replace(optimizer="masked")
    abstract = abstract_train_state(config, 28)
    params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract.params))
    state = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    assert memory.estimate(config, 28, 1)[0] == state + memory.PARAM_COPIES * params
