"""The output layer and the cross-entropy as one op against optax's cross-entropy under plain autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnnjax import output_layer


def reference(H_NxH, W_HxV, b_V, labels_N, weights_N):
    """``Dense`` then optax's softmax cross-entropy, weighted and summed: what ``RNNLM.loss`` computes."""
    logits_NxV = jnp.dot(H_NxH, W_HxV, precision="highest") + b_V
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_NxV, labels_N) * weights_N)


@pytest.mark.parametrize("N,H,V", [(10, 8, 12), (7, 5, 16), (6, 4, 33)])     # padded to 16, not at all, to 48
def test_dense_cross_entropy_and_its_backward_equal_optax_under_autodiff(N, H, V):
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(N), 5)
    args = (jax.random.normal(k1, (N, H)), jax.random.normal(k2, (H, V)), jax.random.normal(k3, (V,)),
            jax.random.randint(k4, (N,), 0, V), (jax.random.uniform(k5, (N,)) > 0.3).astype(jnp.float32))
    with jax.default_matmul_precision("highest"):         # each side one compiled program
        objective_sum, ce_sum = jax.jit(output_layer.dense_cross_entropy)(*args)
        grads = jax.jit(jax.grad(lambda *a: output_layer.dense_cross_entropy(*a)[0], (0, 1, 2)))(*args)
        want, want_grads = jax.jit(jax.value_and_grad(reference, (0, 1, 2)))(*args)
    np.testing.assert_allclose(objective_sum, want, rtol=1e-5)
    np.testing.assert_allclose(ce_sum, want, rtol=1e-5)      # one-hot targets: the objective is the loss
    for got, expected in zip(grads, want_grads):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_dense_cross_entropy_gives_a_bfloat16_input_a_bfloat16_gradient():
    """A cotangent has its primal's dtype: a cell of one's own may output bfloat16 (flax's SimpleCell given
    ``dtype``), and autodiff adds that gradient to others of the input's dtype (a float32 one broke it)."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    H_NxH = jax.random.normal(k1, (10, 8)).astype(jnp.bfloat16)
    W_HxV, labels_N = jax.random.normal(k2, (8, 12)), jax.random.randint(k3, (10,), 0, 12)

    def loss(H_NxH):
        return output_layer.dense_cross_entropy(H_NxH, W_HxV, jnp.zeros(12), labels_N, jnp.ones(10),
                                                jnp.bfloat16)[0]
    dH = jax.grad(loss)(H_NxH)
    assert dH.dtype == jnp.bfloat16
    np.testing.assert_allclose(dH.astype(jnp.float32), jax.grad(loss)(H_NxH.astype(jnp.float32)),
                               rtol=0.02, atol=0.02)
