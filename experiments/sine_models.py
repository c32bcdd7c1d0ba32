"""The two models of ``experiments.sine`` (d2l's linear autoregressive model, and an RNN over the series)
and the minibatch loop that trains either on its own ``loss``, each epoch one compiled scan."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from rnnjax.model import RNN, SimpleRNNCell
from rnnjax.state import seed_key

# Each made once: a static argument of the compiled epoch, which a new one would compile again.
LINEAR_OPTIMIZER = optax.sgd(0.01)
RNN_OPTIMIZER = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.003))


class Linear(nn.Module):
    """d2l's ``LinearRegression``: weights N(0, 0.01), bias 0."""
    @nn.compact
    def __call__(self, features_NxTau):
        return nn.Dense(1, kernel_init=nn.initializers.normal(0.01))(features_NxTau)[:, 0]

    def loss(self, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        """d2l's: the MSE of its predictions of ``labels_B`` from ``features_BxTau``, ``batch`` the two."""
        features_BxTau, labels_B = batch
        return jnp.mean((self(features_BxTau) - labels_B) ** 2)


class RNNForecaster(nn.Module):
    """An RNN over the series itself: a ``SimpleRNNCell`` reads ``x_t``, a Dense layer on its state
    predicts ``x_{t+1}``. Its state summarizes all of the history, not just the last tau values."""
    num_hiddens: int = 32

    def setup(self):
        self.rnn, self.head = RNN(SimpleRNNCell(self.num_hiddens)), nn.Dense(1)

    def __call__(self, x_TxB: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(predictions of x_{t+1} (T, B), the states after each x_t (T, B, H))`` from a zero state."""
        states_TxBxH, _ = self.rnn(x_TxB[..., None])
        return self.head(states_TxBxH)[..., 0], states_TxBxH

    def rollout(self, h_BxH: jax.Array, steps: int) -> jax.Array:
        """From states ``h_t`` with no data after t: predictions ``(steps, B)`` of ``x_{t+1..t+steps}``,
        each fed back as the next input."""
        def step(h_BxH, _):
            pred_B = self.head(h_BxH)[:, 0]
            return self.rnn.step(h_BxH, pred_B[:, None])[0], pred_B
        return jax.lax.scan(step, h_BxH, None, length=steps)[1]

    def loss(self, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        """Next-value MSE while it reads ``warmup_BxW``, plus that of its predictions of ``next_BxK``, each
        fed back as in the k-step predictions (trained on one step only, it drifts when fed its own)."""
        warmup_BxW, next_BxK = batch
        preds_WxB, states_WxBxH = self(warmup_BxW.T)
        teacher = jnp.mean((preds_WxB[:-1] - warmup_BxW[:, 1:].T) ** 2)
        free_KxB = self.rollout(states_WxBxH[-1], next_BxK.shape[1])
        return teacher + jnp.mean((free_KxB - next_BxK.T) ** 2)


# Compiled once per model and shapes, the params an argument: each seed after the first reuses them.
init = jax.jit(lambda model, key, x: model.init(key, x), static_argnums=0)
forward = jax.jit(lambda model, params, x: model.apply(params, x), static_argnums=0)
rollout = jax.jit(lambda model, params, h_BxH, steps: model.apply(params, h_BxH, steps, method="rollout"),
                  static_argnums=(0, 3))


def minibatch_train(model: nn.Module, params, optimizer, data, epochs: int, seed: int, batch_size: int = 16):
    """``epochs`` passes of ``optimizer`` on ``model.loss`` over the rows of ``data`` (a tuple of arrays)
    in shuffled minibatches (the last partial one dropped), each epoch one compiled scan; the params."""
    data = jax.tree.map(jnp.asarray, data)
    carry = (params, optimizer.init(params))
    for key in jax.random.split(seed_key(seed + 1), epochs):
        carry = train_epoch(model, optimizer, batch_size, carry, data, key)
    return carry[0]


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def train_epoch(model: nn.Module, optimizer, batch_size: int, carry, data, key: jax.Array):
    """One of ``minibatch_train``'s epochs: ``carry`` ``(params, opt_state)`` after it."""
    num_batches = len(data[0]) // batch_size
    order = jax.random.permutation(key, len(data[0]))[:num_batches * batch_size].reshape(num_batches, -1)

    def step(carry, idx):
        params, opt_state = carry
        grads = jax.grad(model.apply)(params, jax.tree.map(lambda a: a[idx], data), method="loss")
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None
    return jax.lax.scan(step, carry, order)[0]
