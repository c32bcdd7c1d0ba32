"""rnnjax.summed: which outputs of a step traced over the devices' axis follow from a sum over them."""

import functools

import jax
import jax.numpy as jnp
import pytest

from rnnjax import summed
from rnnjax.parallel import AXIS


def _grads(w, x):
    return jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w) ** 2))(w)


@jax.custom_vjp
def _summed_backward(w):                # the identity, its gradient psummed: an all-reduce as an op
    return w


_summed_backward.defvjp(lambda w: (w, None), lambda _, g: (jax.lax.psum(g, AXIS),))


def _ring(g):                           # an all-reduce of 2 devices as a ring of ppermutes
    return g + jax.lax.ppermute(g, AXIS, [(0, 1), (1, 0)])


_SUMS = {
    "psum": lambda w, x: jax.lax.psum(_grads(w, x), AXIS),
    "in a cond": lambda w, x: jax.lax.cond(w[0, 0] > 0, lambda g: jax.lax.psum(g, AXIS),
                                           lambda g: jax.lax.psum(-g, AXIS), _grads(w, x)),
    "in a loop": lambda w, x: jax.lax.fori_loop(0, 2, lambda i, g: jax.lax.psum(g, AXIS) / 2, _grads(w, x)),
    "in a while": lambda w, x: jax.lax.while_loop(
        lambda c: c[1] < 2, lambda c: (jax.lax.psum(c[0], AXIS), c[1] + 1), (_grads(w, x), 0))[0],
    "in a jit": lambda w, x: jax.jit(lambda g: jax.lax.psum(g, AXIS))(_grads(w, x)),
    "in a checkpoint": lambda w, x: jax.checkpoint(lambda w: jax.lax.psum(_grads(w, x), AXIS))(w),
    "in a custom_vjp's backward": lambda w, x: jax.grad(lambda w: jnp.sum(x @ _summed_backward(w)))(w),
    "ring": lambda w, x: _ring(_grads(w, x)),
    "all_gather": lambda w, x: jnp.mean(jax.lax.all_gather(_grads(w, x), AXIS), 0),
    "frozen": lambda w, x: w * 1.0,
    "of the parameters alone": lambda w, x: jax.grad(lambda w: jnp.sum(jnp.tanh(w)))(w)}
_OWN = {
    "none": _grads,
    "of a pmean-ed loss": lambda w, x: jax.grad(lambda w: jax.lax.pmean(jnp.sum(jnp.tanh(x @ w)), AXIS))(w),
    "of a psum-ed loss": lambda w, x: jax.grad(lambda w: jax.lax.psum(jnp.sum(jnp.tanh(x @ w)), AXIS))(w),
    "times the device count": lambda w, x: _grads(w, x) * jax.lax.psum(jnp.ones(()), AXIS),
    "over a summed count": lambda w, x: _grads(w, x) / jax.lax.psum(jnp.sum(x), AXIS),
    "in one branch of a cond of the batch": lambda w, x: jax.lax.cond(
        x[0, 0] > 0, lambda g: jax.lax.psum(g, AXIS), lambda g: g, _grads(w, x)),
    "of the device's index": lambda w, x: w * jax.lax.axis_index(AXIS),
    "a carry from its second step on": lambda w, x: jax.lax.scan(
        lambda c, x_i: ((c[1], c[1] + x_i), None), (w[0], w[0]), x)[0][0]}


@pytest.mark.parametrize("name", [*_SUMS, *_OWN])
def test_an_output_is_one_devices_own_where_it_follows_from_the_batch_through_no_collective(name):
    """The parameters are the same on every device, the batch is not. Wherever the sum sits (a cond, a loop,
    a jit, a custom_vjp's backward, a ring of ppermutes), it makes a value the same everywhere; a
    gradient scaled by a sum (a pmean-ed loss's under pmap, whose backward psums the ones it is seeded with;
    one over the devices' summed count) is each device's own, and passed the check. A scan's carry is
    followed until its flags hold."""
    traced = jax.make_jaxpr(_SUMS.get(name, _OWN.get(name)), axis_env=[(AXIS, 2)])(jnp.ones((3, 3)),
                                                                                   jnp.ones((4, 3)))
    assert summed.own(traced.jaxpr, [False, True]) == [name in _OWN]


def _barrier(w, x):
    """Summed gradients held together with a local value: each output is its own input's."""
    return jax.lax.optimization_barrier((jax.lax.psum(_grads(w, x), AXIS), jnp.sum(x)))[0]


def _while_of_one_constant_each(w, x):
    """A while of one carry and one constant in its condition and body: shaped as a cond's index and
    branch, it was read as one."""
    local, limit = jnp.sum(x), jnp.sum(w) + 2.0
    return w - 1e-3 * jax.lax.while_loop(lambda c: c < limit, lambda c: c + jax.lax.psum(local, AXIS), 0.0)


@pytest.mark.parametrize("f", [_barrier, _while_of_one_constant_each])
def test_what_holds_values_together_or_loops_over_a_sum_is_no_devices_own(f):
    traced = jax.make_jaxpr(f, axis_env=[(AXIS, 2)])(jnp.ones((3, 3)), jnp.ones((4, 3)))
    assert summed.own(traced.jaxpr, [False, True]) == [False]


def _microbatches(w, x, summed_gradients=False):
    """A while over microbatches accumulating gradients, its count psummed: the gradients are each device's
    own unless psummed too (a while with any collective inside was taken to combine all it returns)."""
    def body(c):
        i, acc, count = c
        g = _grads(w, jax.lax.dynamic_slice_in_dim(x, i, 1))
        g = jax.lax.psum(g, AXIS) if summed_gradients else g
        return i + 1, acc + g, count + jax.lax.psum(jnp.ones(()), AXIS)
    return jax.lax.while_loop(lambda c: c[0] < 4, body, (0, jnp.zeros_like(w), 0.0))[1]


def _until_the_batch_says(w, x):
    """A while whose condition follows from the batch: the devices may loop other counts."""
    return jax.lax.while_loop(lambda c: c[1] < jnp.sum(x), lambda c: (jax.lax.psum(c[0], AXIS), c[1] + 1.0),
                              (w, 0.0))[0]


@pytest.mark.parametrize("f, mine", [(_microbatches, True), (_until_the_batch_says, True),
                                     (functools.partial(_microbatches, summed_gradients=True), False)])
def test_a_while_is_followed_as_a_scan_is(f, mine):
    traced = jax.make_jaxpr(f, axis_env=[(AXIS, 2)])(jnp.ones((3, 3)), jnp.ones((4, 3)))
    assert summed.own(traced.jaxpr, [False, True]) == [mine]
