"""``rnnjax.position``: where training stands, read from a meta of any format (its checks: test_meta)."""

import pytest

from rnnjax.position import Position, position_problem

SUMS = {"loss_sum": 6.0, "count": 4.0, "grad_norm_sum": 2.0}


def test_a_format_3_position_is_read_as_it_was_written():
    meta = {"format": 3, "runs": [{}, {}], "position": {"epoch": 1, "batch": 2, "partial": [SUMS, {}],
                                                        "stopped": [None, "diverged"], "high": [0, 2]}}
    assert Position.read(meta) == Position(1, 2, [SUMS, {}], [None, "diverged"], [0, 2])
    bare = {"format": 3, "position": {"epoch": 0, "batch": 0}}         # nothing of the runs yet
    assert Position.read(bare) == Position()


@pytest.mark.parametrize("runs", [0, 2])
def test_a_format_2_position_sums_its_batches_pairs_per_run(runs):
    pairs = [[1.0, 2.0], [3.0, 4.0]]                    # [loss_sum, count] of each batch done
    summed = {"loss_sum": 4.0, "count": 6.0}
    position = {"epoch": 3, "batch": 2, "partial": [pairs, []] if runs else pairs,
                "high": [1, 0] if runs else 1, "stopped": []}
    meta = {"format": 2, "position": position, **({"runs": [{}] * runs} if runs else {})}
    read = Position.read(meta)
    assert (read.epoch, read.batch) == (3, 2)
    assert read.partial == ([summed, {}] if runs else [summed]) and read.high == ([1, 0] if runs else [1])


def test_a_position_that_does_not_lead_to_its_step_is_said():
    position = {"epoch": 2, "batch": 1, "partial": [SUMS], "stopped": [], "high": [0]}
    assert position_problem(position, 2 * 5 + 1, 5, 0, 3) is None
    assert "not its step 12" in position_problem(position, 12, 5, 0, 3)
    assert "partial sums" in position_problem({**position, "partial": [SUMS, SUMS]}, 11, 5, 0, 3)
    assert "epoch True" in position_problem({**position, "epoch": True}, 11, 5, 0, 3)     # a bool is no int
