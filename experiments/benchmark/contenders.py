"""The JAX contenders (PyTorch's: ``torch_contenders``): each trains d2l's model its own way, on the same
data."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax.config import PRESETS, Config
from rnnjax.data import TimeMachine
from rnnjax.parallel import DataParallel, wait_for_backlog
from rnnjax.xla import compiler_options
from rnnjax.runs import fit_runs, summary, train_runs
from rnnjax.state import create_run_states, create_train_state, make_optimizer
from rnnjax.train import STEPS_PER_CALL, fit, train_windows


GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def model_flops_per_token(H: int, V: int, cell: str = "rnn", num_layers: int = 1) -> int:
    """Forward + backward matmul FLOPs per token, times 3 for the backward: each layer's recurrence
    2GH^2 (G gates), the upper layers' input projections 2GH^2, the output layer 2HV. The first
    layer's input projection of one-hot vectors is a gather."""
    G = GATES[cell]
    return 6 * (G * H * H * (2 * num_layers - 1) + H * V)


@dataclasses.dataclass
class Setting:
    """The model and recipe measured: d2l's preset of the cell and depth (``rnnjax.config.PRESETS``)."""
    batch_size: int = 1024
    num_steps: int = 32
    num_hiddens: int = 32
    cell: str = "rnn"
    num_layers: int = 1

    @property
    def config(self) -> Config:
        preset = {("gru", 1): "gru", ("lstm", 1): "lstm", ("gru", 2): "deep_gru"}.get(
            (self.cell, self.num_layers), "d2l")
        return PRESETS[preset].replace(batch_size=self.batch_size, num_steps=self.num_steps,
                                       num_hiddens=self.num_hiddens, cell=self.cell,
                                       num_layers=self.num_layers)

    @property
    def epochs(self) -> int:
        return self.config.epochs

    @property
    def label(self) -> str:
        """``lstm 512/512/64 x2``: the cell, hidden units / batch / steps, and the layers beyond one."""
        layers = f" x{self.num_layers}" if self.num_layers > 1 else ""
        return f"{self.cell} {self.num_hiddens}/{self.batch_size}/{self.num_steps}{layers}"


class Contender:
    """Each contender trains d2l's model its own way: ``prepare`` builds it and its
    data pipeline, ``steps(n)`` runs n training steps and waits, ``recipe()`` runs
    the whole recipe from scratch and returns its final validation perplexity."""
    name: str

    def prepare(self, s: Setting, data: TimeMachine) -> float:
        """Builds everything and compiles (rnnjax) or runs the first step; returns its seconds."""
        raise NotImplementedError

    def steps(self, n: int) -> int | None:
        """Runs about ``n`` training steps and waits; returns how many if not exactly ``n``."""
        raise NotImplementedError

    def recipe(self) -> float:
        raise NotImplementedError

    def step_memory_mb(self) -> float | None:
        """MB a training step allocates beyond what it is given, on all its devices (None: not measured)."""
        return None


@functools.lru_cache(maxsize=4)
def _initial_params(config: Config, vocab_size: int):
    """On the host: a step donates the state it is given, which would free a cached device array."""
    return jax.tree.map(np.asarray, create_train_state(config, vocab_size).params)


def xla_step_mb(compiled) -> float | None:
    """A compiled call's memory beyond its arguments, MB per device, as XLA counts it: temporaries (what
    the backward keeps, workspace) and outputs, less outputs written over donated arguments."""
    stats = compiled.memory_analysis()
    if stats is None:           # a backend that does not count
        return None
    return (stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes) / 2**20


class Rnnjax(Contender):
    name = "rnnjax"

    def __init__(self, devices: int | None = None, name: str | None = None, **config_overrides):
        """``config_overrides``: ``Config`` fields that differ from the setting's (the ablations)."""
        self.devices, self.overrides = devices, config_overrides
        if config_overrides:
            self.name = "rnnjax " + " ".join(f"{k}={v}" for k, v in config_overrides.items())
        self.name = name or self.name

    def prepare(self, s, data):
        self.s, self.data, self.config = s, data, s.config.replace(**self.overrides)
        dp = self.dp = DataParallel.create(self.devices)
        dp.check_batch_size(s.batch_size)
        self.state, self.tokens = dp.replicate(self._initial_state()), dp.replicate(data.tokens)
        # The state donated, as fit does: a step writes the new one over it.
        self.step = dp.compile(self._train, donate_state=True,
                               compiler_options=compiler_options(s.batch_size, s.num_hiddens, dp.num_shards))
        self.windows = cycle(data.train_windows)
        self.first = first = self._next_call()
        t0 = time.perf_counter()
        if hasattr(self.step, "executable"):      # compiled ahead of time (CPU): time the compile alone
            self.step.executable(self.state, self.tokens, first)
        else:
            self.state = jax.block_until_ready(self.step(self.state, self.tokens, first))[0]
        return time.perf_counter() - t0

    def step_memory_mb(self):
        """Of a call (``STEPS_PER_CALL`` steps, one after the other: their temporaries are reused)."""
        args = self.state, self.tokens, self.first
        # The program the steps run: lowering it again after its first call is a lookup.
        compiled = self.step.executable(*args) if hasattr(self.step, "executable") else \
            self.step.lower(*args).compile()
        mb = xla_step_mb(compiled)          # per device
        return None if mb is None else mb * self.dp.num_local

    def _initial_state(self):
        # Every kernel and compute dtype trains the same parameters: initialized (compiled) once a size.
        V, plain = len(self.data.vocab), self.config.replace(kernel="plain", compute_dtype="float32")
        return create_train_state(self.config, V, params=_initial_params(plain, V))

    _train = staticmethod(train_windows)        # what a call runs: STEPS_PER_CALL steps

    def _next_call(self):
        return self.dp.shard_stack([next(self.windows) for _ in range(STEPS_PER_CALL)])

    def steps(self, n):
        """As ``fit`` runs them: calls of ``STEPS_PER_CALL`` steps (n rounded up to whole calls)."""
        calls = -(-n // STEPS_PER_CALL)
        state, metrics = self.state, []
        for _ in range(calls):
            state, m = self.step(state, self.tokens, self._next_call())
            metrics.append(m)
            wait_for_backlog(metrics)     # as fit does: deep queues can deadlock a CPU all-reduce
        jax.block_until_ready(metrics)
        self.state = state                # the one before was donated
        return calls * STEPS_PER_CALL

    def recipe(self):
        jax.clear_caches()
        with tempfile.TemporaryDirectory() as workdir:
            result = fit(self.config, self.data, workdir, devices=self.devices,
                         checkpoint_every=self.s.epochs, log=None)
        return result.history[-1]["val_ppl"]


class RnnjaxRuns(Rnnjax):
    """``num_runs`` seeds of the setting trained together, as ``rnnjax.runs.fit_runs`` does: a step is
    one step of every run."""

    def __init__(self, num_runs: int, devices: int | None = None):
        super().__init__(devices, name=f"rnnjax {num_runs} seeds at once")
        self.num_runs = num_runs

    def prepare(self, s, data):
        self.configs = [s.config.replace(seed=k) for k in range(self.num_runs)]
        return super().prepare(s, data)

    def _initial_state(self):
        return create_run_states(self.configs, len(self.data.vocab))

    _train = staticmethod(train_runs)

    def _next_call(self):
        """``STEPS_PER_CALL`` batches for each run (the same ones: their speed does not depend on it)."""
        return jax.tree.map(lambda x: np.stack([x] * self.num_runs, 1 if self.dp.pmapped else 0),
                            super()._next_call())

    def recipe(self):
        jax.clear_caches()
        with tempfile.TemporaryDirectory() as workdir:
            result = fit_runs(self.configs, self.data, workdir, devices=self.devices,
                              checkpoint_every=self.s.epochs, log=None)
        return summary(result.history)["val_ppl"]["mean"]


class StockFlax(Contender):
    """``nn.RNN`` over flax's ``SimpleCell``, ``GRUCell`` or ``OptimizedLSTMCell``, stacked for depth:
    what a Flax user writes first."""
    name = "flax"

    def prepare(self, s, data):
        self.s, self.data = s, data
        V, H = len(data.vocab), s.num_hiddens
        cell = {"rnn": nn.SimpleCell, "gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell}[s.cell]

        class Model(nn.Module):
            @nn.compact
            def __call__(self, X_BxT):
                h = jax.nn.one_hot(X_BxT, V)
                for _ in range(s.num_layers):
                    h = nn.RNN(cell(H))(h)
                return nn.Dense(V)(h)

        model, tx = Model(), make_optimizer(s.config)

        def loss(params, X, Y):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, X), Y).mean()

        @jax.jit
        def step(params, opt_state, X, Y):
            value, grads = jax.value_and_grad(loss)(params, X, Y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        self.model, self.loss, self.step, self.tx = model, jax.jit(loss), step, tx
        self.batches = cycle(lambda epoch: _plain_batches(data, epoch))
        self.params = model.init(jax.random.key(0), jnp.zeros((1, s.num_steps), jnp.int32))
        self.opt_state = tx.init(self.params)
        self.first = next(self.batches)
        t0 = time.perf_counter()
        jax.block_until_ready(self.step(self.params, self.opt_state, *self.first))
        return time.perf_counter() - t0

    def step_memory_mb(self):
        return xla_step_mb(self.step.lower(self.params, self.opt_state, *self.first).compile())

    def steps(self, n):
        params, opt_state = self.params, self.opt_state
        for _ in range(n):
            params, opt_state, value = self.step(params, opt_state, *next(self.batches))
        jax.block_until_ready(value)

    def recipe(self):
        jax.clear_caches()
        params = self.model.init(jax.random.key(0), jnp.zeros((1, self.s.num_steps), jnp.int32))
        opt_state = self.tx.init(params)
        for epoch in range(self.s.epochs):
            for X, Y in _plain_batches(self.data, epoch):
                params, opt_state, _ = self.step(params, opt_state, X, Y)
            val = [(float(self.loss(params, X, Y)), len(X)) for X, Y in _plain_batches(self.data, None)]
        return float(np.exp(sum(v * n for v, n in val) / sum(n for _, n in val)))


def cycle(make_epoch):
    """The batches of epoch 0, 1, 2, ... without end."""
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def _plain_batches(data: TimeMachine, epoch: int | None):
    """Ragged numpy batches, shuffled per epoch (train) or in order (epoch None: val)."""
    if epoch is None:
        idx = np.arange(data.num_train, data.num_train + data.num_val)
    else:
        idx = data.permutation(epoch)
    for i in range(0, len(idx), data.batch_size):
        j = idx[i:i + data.batch_size]
        yield np.asarray(data.X[j]), np.asarray(data.Y[j])
