"""A checkpoint's meta is checked like its arrays: its checksum, its keys, its position against its step."""

import copy

import pytest

from rnnjax import meta
from rnnjax.computing import SINCE
from rnnjax.data import Vocab

from conftest import TINY

VOCAB = Vocab(list("abc "))
PER_EPOCH = -(-TINY.num_train // TINY.batch_size)          # 13


def sealed(epoch=2, batch=0, partial=None, runs=None, fmt=meta.FORMAT, **position):
    """A sealed meta; ``fmt`` 2 lays out the position as format 2 did (a ``[loss_sum, count]`` pair per batch,
    a single run's not in a list of runs)."""
    n = runs or 1
    if partial is None:
        partial = ([[]] * n if runs else []) if fmt < 3 else [{}] * n
    position = {"epoch": epoch, "batch": batch, "partial": partial, "stopped": [],
                "high": ([0] * n if runs else 0) if fmt < 3 else [0] * n, **position}
    m = {**meta.make(TINY, VOCAB, position, PER_EPOCH, num_devices=1), "format": fmt}
    if runs:
        m["runs"] = [TINY.replace(seed=s).to_json() for s in range(runs)]
    return meta.seal({**m, "val_ppl": 12.5, "checksums": {".step": "0000002a"}})


SUMS = {"loss_sum": 4.5, "count": 384.0, "grad_norm": 2.25}


def test_a_good_meta_passes_at_its_step_only():
    assert meta.problem(sealed(), 2 * PER_EPOCH) is None
    assert meta.problem(sealed(1, 3, [SUMS], high=[1]), PER_EPOCH + 3) is None
    assert "not its step" in meta.problem(sealed(), 2 * PER_EPOCH + 1)


def test_metas_of_format_2_still_pass():
    assert meta.problem(sealed(1, 3, [[1.5, 128.0]] * 3, fmt=2, high=1), PER_EPOCH + 3) is None
    assert "partial sums" in meta.problem(sealed(1, 3, [[1.5, 128.0]] * 2, fmt=2), PER_EPOCH + 3)
    assert "partial sums" in meta.problem(sealed(1, 3, [SUMS], fmt=2), PER_EPOCH + 3)


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
    (lambda m: m["position"].update(partial=[SUMS]), "partial sums"),          # sums at batch 0
    (lambda m: m["position"].update(partial=[{}, {}]), "partial sums"),        # two runs of one
    (lambda m: m["position"].update(partial=[[1.0, 2.0]]), "partial sums"),    # format 2's pairs
    (lambda m: m["position"].update(high=[-1]), "divergence streak"),
    (lambda m: m["position"].update(high=0), "divergence streak"),
    (lambda m: m.update(checksums="abc"), "lacks the checksums"),
    (lambda m: m.pop("checksums"), "lacks the checksums"),
    (lambda m: m.update(val_ppl="low"), "validation perplexity"),
    (lambda m: m.update(run_val_ppls=[7.5]), "runs' validation perplexities"),     # a single run has none
    (lambda m: m["config"].update(num_hiddens=-3), "not a valid config"),
    (lambda m: m.update(runs="all"), "not a list"),
    (lambda m: m.update(trained_by="__main__.my_step"), "trained by"),
    (lambda m: m.update(trained_by=[[0, "a.f"], [0, "b.g"]]), "trained by"),      # steps in order, once
    (lambda m: m.update(trained_by=[[2 * PER_EPOCH + 1, "a.f"]]), "trained by"),  # past its own step
    (lambda m: m.update(init_from=[{"workdir": "/w", "step": 3}]), "started from"),
    (lambda m: m.update(init_from={"workdir": "", "step": 3}), "started from"),
    (lambda m: m.update(init_from={"workdir": "/w", "step": "3"}), "started from"),
    (lambda m: m.update(init_from={"workdir": "/w", "step": 3, "run": -1}), "started from"),
    (lambda m: m.update(init_from={"workdir": "/w", "step": True}), "started from"),
    (lambda m: m.update(format=7), "format 1 or 2 or 3"),
])
def test_every_kind_of_damage_is_named(change, message):
    assert message in meta.problem(reseal_with(change), 2 * PER_EPOCH)


@pytest.mark.parametrize("value, problem", [
    ({"workdir": "/w", "step": 3}, None),
    ({"workdir": "/w", "step": 0, "run": 2}, None),
    ({"workdir": "/w"}, "its step is None"),
    ({"workdir": "/w", "step": 3, "best": True}, "not a workdir, a step and a run"),
    ({"workdir": 5, "step": 3}, "its workdir is 5"),
    ({"workdir": "/w", "step": 3, "run": 1.0}, "its run is 1.0"),
])
def test_a_recorded_start_is_a_workdir_a_step_and_a_run(value, problem):
    assert meta.init_from_problem(value) == problem
    assert (meta.problem(reseal_with(lambda m: m.update(init_from=value)), 2 * PER_EPOCH) is None) == \
        (problem is None)


def test_a_meta_without_its_checksum_is_damage_unless_it_is_of_format_1():
    m = sealed(fmt=2)
    del m[meta.CHECKSUM]
    assert "without its checksum" in meta.problem(m, 2 * PER_EPOCH)
    old = {k: v for k, v in m.items() if k != "steps_per_epoch"}
    assert meta.problem({**old, "format": 1}, 2 * PER_EPOCH) is None       # before the meta had them
    assert "lacks its steps per epoch" in meta.problem(meta.seal(old), 2 * PER_EPOCH)


def test_positions_of_runs_trained_together():
    m = sealed(1, 2, runs=2)
    m["position"].update(partial=[SUMS, {}], stopped=[None, "diverged"], high=[0, 2])
    assert meta.problem(meta.seal(m), PER_EPOCH + 2) is None
    assert meta.problem(meta.seal({**m, "run_val_ppls": [7.5, None]}), PER_EPOCH + 2) is None
    assert "runs' validation" in meta.problem(meta.seal({**m, "run_val_ppls": [7.5]}), PER_EPOCH + 2)
    m["position"]["partial"] = [SUMS, {"loss_sum": 1.0}]             # a run's sums without their count
    assert "partial sums" in meta.problem(meta.seal(m), PER_EPOCH + 2)
    old = sealed(1, 2, partial=[[[1.0, 2.0]] * 2, []], runs=2, fmt=2, stopped=[None, "diverged"], high=[0, 2])
    assert meta.problem(old, PER_EPOCH + 2) is None
    old["position"]["high"] = 0                               # one streak per run
    assert "divergence streak" in meta.problem(meta.seal(old), PER_EPOCH + 2)
    older = sealed(2, 0, runs=2, fmt=2)                      # before the streak was saved: no "high"
    del older["position"]["high"]
    assert meta.problem(meta.seal(older), 2 * PER_EPOCH) is None


def with_cell(m, cell, where="config"):
    """``m`` with its config's (or its first run's) cell renamed, as a run of a cell of one's own saves it."""
    m = copy.deepcopy(m)
    (m["config"] if where == "config" else m["runs"][0])["cell"] = cell
    return m


def test_a_cell_not_registered_here_is_named_not_called_damaged():
    assert meta.unregistered_cell(sealed()) is None
    mine = meta.seal(with_cell(sealed(), "mine"))
    assert meta.unregistered_cell(mine) == "mine"
    assert "not a known cell" in meta.problem(mine, 2 * PER_EPOCH)      # what read_meta asks after it
    assert meta.unregistered_cell(meta.seal(with_cell(sealed(runs=2), "mine", "runs"))) == "mine"
    # A changed digit is damage, whatever cell it names; config.json has no checksum to fail.
    changed = with_cell(sealed(), "mine")
    assert meta.unregistered_cell(changed) is None and "fails its checksum" in meta.problem(changed, 26)
    settings = {"config": changed["config"], "vocab": changed["vocab"]}
    assert meta.unregistered_cell(settings, sealed=False) == "mine"
    assert meta.unregistered_cell({"config": TINY.to_json()}, sealed=False) is None


def test_how_a_run_computed_is_checked_as_the_rest_of_its_meta():
    now = {"kernel": "fused", "platform": "gpu", "num_devices": 1, "matmul_precision": "highest"}
    new = meta.seal({**sealed(), **now})
    assert meta.problem(new, 2 * PER_EPOCH) is None
    since = meta.seal({**new, SINCE: 13})          # a resume changed it at 13
    assert meta.problem(since, 2 * PER_EPOCH) is None
    for bad in ({"kernel": "auto"}, {"kernel": 3}, {"num_devices": 0}, {"num_devices": True},
                {"platform": None}):
        assert "says it computed as" in meta.problem(meta.seal({**new, **bad}), 2 * PER_EPOCH)
    assert "says its cell was registered as 3" in meta.problem(meta.seal({**new, meta.REGISTERED: 3}), 26)
    for bad in (-1, 2 * PER_EPOCH + 1, "13", True):
        assert "says it computed otherwise since" in meta.problem(meta.seal({**new, SINCE: bad}),
                                                                  2 * PER_EPOCH)
