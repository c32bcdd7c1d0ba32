"""How a run computed (kernel, platform, devices, matmul precision), as its meta says, and what a resume
that computes otherwise says: the same math at float round-off."""

from rnnjax import computing, meta
from rnnjax.computing import SINCE
from rnnjax.vocab import Vocab

from conftest import TINY

NOW = {"kernel": "fused", "platform": "gpu", "num_devices": 1, "matmul_precision": "highest"}


def sealed(config=TINY, **how):
    """A sealed meta saying ``how`` its run computed; without keys, as metas before they said so."""
    position = {"epoch": 2, "batch": 0, "partial": [{}], "stopped": [], "high": [0]}
    return meta.seal({**meta.make(config, Vocab(list("abc ")), position, 13, num_devices=1), **how})


def test_how_a_run_computed_is_what_its_meta_says_older_ones_saying_less():
    new = sealed(**NOW)
    assert computing.computed_by(new) == {**NOW, SINCE: None}
    old = sealed()                   # before the meta kept the kernel: auto's pick is unknown
    assert computing.computed_by(old) == {"kernel": None, "platform": None, "num_devices": 1,     # "default":
                                          "matmul_precision": None,      # the backend's, or the environment's
                                          SINCE: None}
    forced = sealed(TINY.replace(kernel="plain", matmul_precision="high"))
    assert computing.computed_by(forced)["kernel"] == "plain"


def test_a_resume_that_computes_otherwise_says_how_and_every_later_one_since_when():
    now, old = NOW, computing.computed_by(sealed())
    forced = computing.computed_by(sealed(TINY.replace(kernel="plain", matmul_precision="high")))
    assert computing.changed(forced, now, 26) == (
        "trained with the plain kernel at high matmul precision until step 26, continued with fused at "
        "highest: results may differ from an unbroken run's at float round-off")   # its platform unknown
    assert computing.changed({**old, "num_devices": 2}, now, 26).startswith(
        "trained on 2 device(s) until step 26, continued on 1 GPU device(s):")
    assert computing.changed(now, now, 26) == ""
    assert computing.changed(old, {**now, "matmul_precision": "default"}, 26) == ""
    cpu = {**now, "platform": "cpu"}      # a CPU's float32 matmuls are float32 at any precision
    assert computing.changed({**cpu, "matmul_precision": "default"}, cpu, 26) == ""
    assert computing.changed({**cpu, "num_devices": 2}, cpu, 26).startswith(
        "trained on 2 CPU device(s) until step 26, continued on 1 CPU device(s): results may differ")
    new = computing.computed_by(sealed(**now))
    assert computing.otherwise_since(new, now, 26) == {}
    assert computing.otherwise_since(new, {**now, "num_devices": 2}, 26) == {SINCE: 26}
    since = computing.computed_by(sealed(**now, **{SINCE: 13}))     # changed at 13: every later one says so
    assert computing.otherwise_since(since, now, 26) == {SINCE: 13}
    assert computing.changed(since, now, 26).startswith("computed otherwise since step 13 (a")
