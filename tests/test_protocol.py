"""The cell protocol's checks on their own: what a module lacks of it, and where one step breaks it.
Through ``make_model``, with the sentences a user reads, in test_custom_cell.py."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.cells import GRUCell, LSTMCell, SimpleRNNCell
from rnnjax.protocol import STEP_BATCH, StepFailed, lacks, step_problem

CELLS = (SimpleRNNCell(4), GRUCell(4), LSTMCell(4), nn.GRUCell(4), nn.LSTMCell(4), nn.MGUCell(4))


def test_lacks_names_what_of_the_protocol_a_module_lacks():
    for cell in CELLS:
        assert lacks(cell) == [] and step_problem(cell, 7) is None
    everything = ["__call__(carry, x)", "initialize_carry(rng, input_shape)", "num_feature_axes"]
    assert lacks(nn.Dense(4)) == everything
    assert lacks("rnn") == lacks(None) == everything
    assert lacks(nn.RNNCellBase()) == everything        # flax's base: not a cell (its methods raise)


class _Cell(nn.RNNCellBase):
    """A tanh cell; ``step`` replaces its return, ``carry`` its initial carry, for a batch ``B``."""
    step: callable = None
    carry: callable = None

    @nn.compact
    def __call__(self, h, x):
        new = jnp.tanh(nn.Dense(4)(x))
        return self.step(h, new) if self.step else (new + h, new + h)

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        return self.carry(input_shape[0]) if self.carry else jnp.zeros((input_shape[0], 4))

    @property
    def num_feature_axes(self):
        return 1


@pytest.mark.parametrize("cell, clause", [
    (_Cell(step=lambda h, new: new), "not a pair (carry, y)"),
    (_Cell(step=lambda h, new: (new, new.astype(jnp.int32))), "real floating-point features"),
    (_Cell(step=lambda h, new: (new, new[0])), f"for {STEP_BATCH} inputs, not one (batch, features) array"),
    (_Cell(step=lambda h, new: (new[:, :2], new)), "must have the shapes of the one it replaces"),
    (_Cell(carry=lambda B: jnp.zeros((4, B)), step=lambda h, new: (h, new)), "must have the batch first"),
    (_Cell(carry=lambda B: jnp.zeros((B, 4), jnp.int32), step=lambda h, new: (h, new)),
     "must be floating point (or complex)"),
])
def test_step_problem_names_where_one_step_breaks_the_protocol(cell, clause):
    assert clause in step_problem(cell, 7)


def test_a_step_that_fails_in_the_cells_own_code_raises_from_its_error():
    def fails(h, new):
        raise RuntimeError("my own bug.\nsecond line")
    said = r"fails on a batch of 2 inputs .* \(RuntimeError: my own bug\)$"
    with pytest.raises(StepFailed, match=said) as e:
        step_problem(_Cell(step=fails), 7)
    assert isinstance(e.value.__cause__, RuntimeError)


def test_a_cell_whose_first_field_is_not_its_size_is_refused_before_it_trains_at_another_width(monkeypatch):
    """rnnjax makes a cell as CELLS[name](num_hiddens): a cell whose first field is another gets the size
    there. One of a float trained silently at its default width while config.json said num_hiddens (day-2
    researcher); one of a callable failed in its own code (an int called as the activation)."""
    import dataclasses
    import functools
    from collections.abc import Callable
    from typing import Annotated, Any, NewType, Optional, SupportsInt

    from conftest import TINY, DenseCell
    from rnnjax import model as model_lib
    from rnnjax.config import ConfigError
    from rnnjax.protocol import sized_otherwise
    from rnnjax.state import make_model

    def first(name, annotation):
        body = {"__annotations__": {name: annotation, "features": int}, name: None, "features": 8,
                "__call__": nn.compact(DenseCell.__call__), "initialize_carry": DenseCell.initialize_carry,
                "num_feature_axes": DenseCell.num_feature_axes}
        return type("Cell", (nn.RNNCellBase,), body)
    for annotation in (callable, float, str, bool, "float"):
        named = getattr(annotation, "__name__", annotation)
        assert sized_otherwise(first("scale", annotation)) == f"scale: {named}"
    for annotation in (int, "int", int | None, Optional[int], "int | None", np.int32, Any,     # one meant:
                       NewType("Hidden", int), "Size", SupportsInt, Callable[[int], int] | int):
        assert sized_otherwise(first("size", annotation)) is None
    for annotation in (Callable[[int], int], "typing.Callable", "list[int]", "dict", Optional[float],
                       float | None, "'float'", "Union[str, None]", np.float32, Annotated[float, "scale"]):
        assert sized_otherwise(first("f", annotation)) is not None     # Optional[float] trained 8 wide

    @dataclasses.dataclass
    class KeywordFirst:                     # a keyword-only first field: the size goes to the next one
        scale: float = dataclasses.field(default=1.0, kw_only=True)
        features: int = 4
    assert sized_otherwise(KeywordFirst) is None and KeywordFirst(7).features == 7
    assert [sized_otherwise(type(c)) for c in CELLS] == [None] * len(CELLS)
    Scaled = first("scale", float)
    assert sized_otherwise(functools.partial(Scaled, features=4)) == "scale: float"
    assert sized_otherwise(lambda n, **kw: Scaled(features=n)) is None        # a function places it itself
    monkeypatch.setitem(model_lib.CELLS, "first", Scaled)
    said = (r"^rnnjax makes a cell as rnnjax.CELLS\['first'\]\(num_hiddens\), which gives num_hiddens=16 to "
            r"Cell's first field, scale: float: declare the hidden size \(an int\) first, as flax's cells do "
            r"\(features\), or register a function of num_hiddens that makes the cell\.$")
    with pytest.raises(ConfigError, match=said):
        make_model(TINY.replace(cell="first"), 7)
    monkeypatch.setitem(model_lib.CELLS, "first", lambda n: Scaled(1.0, n))
    assert make_model(TINY.replace(cell="first"), 7).rnn.cell.features == TINY.num_hiddens
