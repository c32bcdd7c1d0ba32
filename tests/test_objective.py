"""The objective written once: a variant of ``objective.targets`` (label smoothing) changes every loss, the
fused backward passes included, and never the reported cross-entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import TINY, random_batch
from rnnjax import objective
from rnnjax.data import Batch
from rnnjax.fused import FusedRNNLM
from rnnjax.hoisted import HoistedRNNLM
from rnnjax.model import RNN, RNNLM, GRUCell, SimpleRNNCell
from rnnjax.state import create_train_state
from rnnjax.train import eval_step, train_step

V, B, T = 12, 5, 4                                        # V padded inside the fused kernels to 16
WEIGHTS_B = jnp.array([1.0, 1.0, 0.0, 1.0, 1.0])          # a padded row among real ones
EPS = 0.1


def smoothed(labels, vocab_size):
    return (1 - EPS) * jax.nn.one_hot(labels, vocab_size) + EPS / vocab_size


@pytest.fixture
def label_smoothing(monkeypatch):
    """``objective.targets`` replaced by label smoothing, as a researcher would edit it; JAX's caches of
    programs traced with it cleared after, so that no later test reuses one."""
    monkeypatch.setattr(objective, "targets", smoothed)
    yield
    jax.clear_caches()


def sums_and_grads(model, variables, X, Y):
    """``((objective sum, count, cross-entropy sum), gradient of the mean objective)``."""
    def mean_objective(variables):
        sums = model.apply(variables, X, Y, WEIGHTS_B, method="loss")
        return sums[0] / sums[1], sums
    with jax.default_matmul_precision("highest"):
        (_, sums), grads = jax.jit(jax.value_and_grad(mean_objective, has_aux=True))(variables)
    return sums, grads


# The fused recurrence (one layer of SimpleRNNCell), the fused output layer alone (GRU), the hoisted kernel.
KERNELS = {"fused recurrence": (FusedRNNLM, SimpleRNNCell), "fused output layer": (FusedRNNLM, GRUCell),
           "hoisted": (HoistedRNNLM, SimpleRNNCell)}


# The fused output layer alone is slow only: hoisted's output layer is the same op.
@pytest.mark.parametrize("kernel", [pytest.param(k, marks=pytest.mark.slow) if k == "fused output layer"
                                    else k for k in KERNELS])
def test_every_loss_differentiates_the_targets_written_once(kernel, label_smoothing):
    """With label smoothing swapped in: the kernel's objective, cross-entropy and gradients are the plain
    model's under autodiff, the plain objective is optax's cross-entropy against the smoothed labels, and
    the cross-entropy is still against the labels."""
    cls, cell = KERNELS[kernel]
    plain, fast = RNNLM(RNN(cell(8)), V), cls(RNN(cell(8)), V)
    X, Y = random_batch(B, T, V)
    variables = plain.init(jax.random.key(0), X)
    want, want_grads = sums_and_grads(plain, variables, X, Y)
    got, got_grads = sums_and_grads(fast, variables, X, Y)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    with jax.default_matmul_precision("highest"):
        logits = plain.apply(variables, X)
    rows = WEIGHTS_B[:, None]
    smooth = jnp.sum(optax.softmax_cross_entropy(logits, smoothed(Y, V)) * rows)
    ce = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, Y) * rows)
    np.testing.assert_allclose(want[0], smooth, rtol=1e-6)
    np.testing.assert_allclose(want[2], ce, rtol=1e-6)
    assert abs(float(want[0]) - float(want[2])) > 1e-3 * float(want[2])     # the two are different values


@pytest.mark.parametrize("cls", [RNNLM, FusedRNNLM])
def test_one_hot_targets_make_the_objective_the_cross_entropy(cls):
    model = cls(RNN(SimpleRNNCell(8)), V)
    X, Y = random_batch(B, T, V)
    variables = model.init(jax.random.key(0), X)
    (objective_sum, count, ce_sum), _ = sums_and_grads(model, variables, X, Y)
    assert float(count) == 4 * T
    np.testing.assert_allclose(objective_sum, ce_sum, rtol=1e-6)
    np.testing.assert_allclose(objective.targets(Y, V).sum(-1), 1.0)


def test_the_cross_entropy_is_measured_not_differentiated():
    """The loss's third value carries no gradient: what trains is the objective alone."""
    for cls in (RNNLM, FusedRNNLM):
        model = cls(RNN(SimpleRNNCell(8)), V)
        X, Y = random_batch(B, T, V)
        variables = model.init(jax.random.key(0), X)
        grads = jax.grad(lambda v: model.apply(v, X, Y, WEIGHTS_B, method="loss")[2])(variables)
        assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads))


def step_results(config):
    state = create_train_state(config, V)
    X, Y = random_batch(B, T, V)
    b = Batch(X, Y, WEIGHTS_B)
    with jax.default_matmul_precision("highest"):
        new_state, train_metrics = jax.jit(train_step)(state, b)
        eval_metrics = jax.jit(eval_step)(state, b)
    return new_state.params, train_metrics, eval_metrics


@pytest.mark.parametrize("kernel", [pytest.param("plain", marks=pytest.mark.slow), "fused"])
def test_a_variant_objective_changes_the_training_not_the_reported_loss(kernel, monkeypatch):
    """Train and eval steps report the cross-entropy's sum as ``loss_sum`` (what perplexity is made of),
    whatever the objective; the step then follows the variant's gradient. JAX reuses what it traced for
    ``train_step`` and a state of equal structure (one model and optimizer object for equal settings):
    its caches are cleared before the variant and after it."""
    config = TINY.replace(kernel=kernel)
    params, train_metrics, eval_metrics = step_results(config)
    jax.clear_caches()
    with monkeypatch.context() as m:
        m.setattr(objective, "targets", smoothed)
        try:
            smoothed_params, smoothed_train, smoothed_eval = step_results(config)
        finally:
            jax.clear_caches()
    for key in ("loss_sum", "count"):
        np.testing.assert_allclose(smoothed_train[key], train_metrics[key], rtol=1e-6)
        np.testing.assert_allclose(smoothed_eval[key], eval_metrics[key], rtol=1e-6)
    np.testing.assert_allclose(train_metrics["loss_sum"], eval_metrics["loss_sum"], rtol=1e-6)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), params, smoothed_params)
    assert max(jax.tree.leaves(moved)) > 1e-6
