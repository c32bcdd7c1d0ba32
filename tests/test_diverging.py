"""``rnnjax.diverging``: a non-finite loss, a diverging perplexity (runs trained together: test_runs)."""

import math

import numpy as np
import pytest

from rnnjax.diverging import DIVERGED_EPOCHS, DIVERGED_FACTOR, NonFiniteLoss, check_divergence, check_finite

V = 28


def epochs(*ppls):
    high = 0
    for epoch, ppl in enumerate(ppls, 1):
        high = high + 1 if check_divergence({"epoch": epoch, "train_ppl": ppl}, high, V) else 0
    return high


def test_a_perplexity_far_above_uniform_for_several_epochs_stops_the_run():
    far = DIVERGED_FACTOR * V * 1.5
    assert epochs(*[far] * (DIVERGED_EPOCHS - 1)) == DIVERGED_EPOCHS - 1          # not yet
    stayed = (f"diverging: its train perplexity stayed above {DIVERGED_FACTOR} times the uniform guess's {V} "
              f"for {DIVERGED_EPOCHS} epochs, {far:.4g} at epoch {DIVERGED_EPOCHS}; stopped.*smaller lr\\.$")
    with pytest.raises(NonFiniteLoss, match=stayed):
        epochs(*[far] * DIVERGED_EPOCHS)
    with pytest.raises(NonFiniteLoss, match=f"diverging: its train perplexity is inf at epoch 2, the uniform "
                                            f"guess's {V};"):
        epochs(far, math.inf)
    assert epochs(far, far, 20.0, far) == 1                                     # a good epoch resets
    assert epochs(30.0, V * DIVERGED_FACTOR, 9.0) == 0                           # at the bound is fine


@pytest.mark.parametrize("ppl", [math.inf, math.nan])
def test_an_overflowing_perplexity_stops_at_once(ppl):
    with pytest.raises(NonFiniteLoss, match="epoch 1"):
        epochs(ppl)


def test_a_non_finite_loss_names_its_step_and_a_fix():
    metrics = [{"loss_sum": np.array([1.0, np.nan]), "count": np.array([2.0, 2.0])}]
    with pytest.raises(NonFiniteLoss, match="epoch 3, step 6 of 9: the run diverged.*new workdir with a "
                                            "smaller"):
        check_finite(metrics, 2, 4, 9)
    check_finite([{"loss_sum": np.array([1.0, 3.0]), "count": np.array([2.0, 2.0])}], 0, 0, 9)     # finite
