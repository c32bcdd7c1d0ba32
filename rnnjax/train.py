"""Training: the config, a pure ``train_step``, and the epoch loop.

``train_step(state, batch, axis_name=None) -> (state, metrics)`` is a plain
function of its inputs. ``rnnjax.parallel`` jits it for one device or pmaps it
with ``axis_name`` for several; then it averages gradients and metrics with
one ``lax.pmean``. The loss is the exact mean
cross-entropy over the real (unmasked) tokens of the global batch, whatever the
device count and however the padding falls on the devices.

``fit`` runs the epochs, ``STEPS_PER_CALL`` steps to a compiled call of
``train_windows`` (``train_step`` scanned over a stack of batches that each
device cuts from the token stream it holds). It resumes from the workdir's
latest checkpoint, logs one JSON line per epoch, checkpoints, stops on a
non-finite loss, and on SIGINT/SIGTERM saves the last completed call's step
before it exits. Metrics stay on the devices until the end of each epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax
from flax.training import train_state

from rnnjax import checkpoint, metrics as metrics_lib
from rnnjax.data import Batch, TimeMachine, Windows
from rnnjax.model import RNNLM, build
from rnnjax.parallel import CompiledPerShape, DataParallel, wait_for_backlog

TrainState = train_state.TrainState


@dataclasses.dataclass(frozen=True)
class Config:
    """d2l's recipe for the concise RNN section (the defaults)."""
    batch_size: int = 1024
    num_steps: int = 32
    num_hiddens: int = 32
    lr: float = 1.0
    clip: float = 1.0
    epochs: int = 100
    seed: int = 0
    num_train: int = 10000
    num_val: int = 5000
    unroll: int = 1

    # What may differ between a run and the checkpoint it resumes from.
    RESUMABLE = frozenset({"epochs"})

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Epochs between checkpoints. An orbax save of the recipe's small state takes
# about 33 ms on the 2-core reference machine, a third of one ~0.1 s epoch:
# saving every epoch made the 100-epoch run 13-15 s instead of 10-11 s. The
# last epoch and an interrupted run are saved whatever the interval.
CHECKPOINT_EVERY = 10


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; a checkpoint of the last completed step was saved."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def make_model(config: Config, vocab_size: int) -> RNNLM:
    return build(vocab_size, config.num_hiddens, unroll=config.unroll)


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """d2l clips gradients to global norm ``clip``, then takes an SGD step."""
    return optax.chain(optax.clip_by_global_norm(config.clip), optax.sgd(config.lr))


def _train_state(config: Config, vocab_size: int, jit: Callable, params: Any = None) -> TrainState:
    model = make_model(config, vocab_size)
    if params is None:
        # The key and the dummy input are made inside the one compiled init: made
        # eagerly, each would compile a small program of its own.
        params = jit(lambda: model.init(jax.random.key(config.seed),
                                        jnp.zeros((1, config.num_steps), jnp.int32))["params"])()
    return TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(config))


# Init runs once and takes microseconds, but the random number generator makes
# it a large program. Without XLA's backend optimizations it compiled in about
# 0.4 s instead of 0.75 s; with XLA:CPU's older code generator in one piece
# too, in 0.18-0.22 s instead of 0.32-0.45 s (fresh processes, 2-core machine),
# to the same values. They differ from the optimized build's in the last bit
# (fused multiply-adds) and are just as deterministic.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
                         "xla_cpu_parallel_codegen_split_count": 1}


def create_train_state(config: Config, vocab_size: int, params: Any = None) -> TrainState:
    """Step 0 of ``config``'s model and optimizer, from ``params`` or initialized from ``config.seed``."""
    if params is not None:
        _check_params(params, config, vocab_size)

    def jit(init):
        return CompiledPerShape(jax.jit(init), INIT_COMPILER_OPTIONS)
    return _train_state(config, vocab_size, jit, params)


def _check_params(params: Any, config: Config, vocab_size: int) -> None:
    def shapes(tree):
        return jax.tree.map(lambda x: tuple(x.shape), tree)
    expected = shapes(abstract_train_state(config, vocab_size).params)
    given = shapes(params)
    if given != expected:
        raise ValueError(f"The parameters do not fit the config (num_hiddens={config.num_hiddens}, "
                         f"vocabulary {vocab_size}): shapes {given}, expected {expected}.")


def abstract_train_state(config: Config, vocab_size: int) -> TrainState:
    """The shapes and dtypes of ``create_train_state``'s result, computing nothing (a restore target)."""
    return jax.eval_shape(lambda: _train_state(config, vocab_size, lambda f: f))


# XLA:CPU hands each single dot to YNNPACK, which splits even the recurrence's
# small (batch/devices, H) @ (H, H) products over the CPU's thread pool; with
# one device per core the devices' programs then wait on each other's tasks.
# Leaving single dots to XLA's own (Eigen) kernels made d2l's step 1.06-1.11x
# faster on 2 CPU devices and 1.02-1.13x on one device over both cores
# (interleaved A/B on the 2-core reference machine); on one core it changed
# nothing. Where the hidden size outgrows the rows (H 512 at batch 64 or 1024,
# H 128 at batch 64) YNNPACK's kernels win (0.65-0.97x without them), hence
# the rule in ``compiler_options``. Reductions stay out of YNNPACK too: XLA
# then fuses the cross-entropy's row max and sums with the ops that feed them
# (the logits' bias add need not be written out), d2l's step 1.01-1.03x faster
# on 2 CPU devices (six interleaved A/B runs), 1.02x on one; at hidden 128 and
# at 128 steps even. The value is XLA's default set less dots and reductions.
_YNN_CONVOLUTIONS_ONLY = {"xla_cpu_experimental_ynn_fusion_type":
                          "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}


# XLA runs LLVM at -O3 on the code it generates for the CPU. At -O1 the train
# step compiles in 0.39-0.46 s instead of 0.53-0.66 s (fresh processes, one
# device, 2-core reference machine) and 0.72-0.90 s instead of 0.91-1.07 s on
# two devices, to the same values bit for bit (tested) and an unchanged step
# time (0.96-1.04x, interleaved; also at hidden 128 and 512).
_LLVM_O1 = {"xla_backend_optimization_level": 1}


# XLA asks LLVM for 256-bit vectors by default. On a CPU with AVX-512, 512-bit
# ones made d2l's step 1.02-1.09x faster on 2 CPU devices (three interleaved A/B
# runs; the cross-entropy's and the recurrence's elementwise passes) and 1.05x
# on one device. Where the rows per device do not outnumber the hidden units
# fourfold it helped less or not at all (H=128/B64/T128 0.95x), so it follows
# the same rule as the YNNPACK options.
_AVX512_VECTORS = {"xla_cpu_prefer_vector_width": 512}


@functools.cache
def _cpu_has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text().split()
    except OSError:           # not Linux: keep XLA's default
        return False


def compiler_options(config: Config, num_shards: int) -> dict[str, Any]:
    """XLA options for ``config``'s steps on ``num_shards`` devices (``DataParallel.compile``).

    On a CPU: LLVM at -O1, and with at least 4 rows per device for each hidden
    unit, dots and reductions out of YNNPACK and, given AVX-512, 512-bit
    vectors (see above). Elsewhere none.
    """
    if jax.default_backend() != "cpu":
        return {}
    options = dict(_LLVM_O1)
    if config.batch_size // num_shards >= 4 * config.num_hiddens:
        options.update(_YNN_CONVOLUTIONS_ONLY)
        if _cpu_has_avx512():
            options.update(_AVX512_VECTORS)
    return options


def _mean_over_devices(x, axis_name):
    return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _sum_over_devices(x, axis_name):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def train_step(state: TrainState, batch: Batch, axis_name: str | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on the exact mean loss over the real tokens of the global batch.

    Each device differentiates its own loss sum. One ``pmean`` averages those
    gradients, loss sums and token counts over the devices (a single
    all-reduce: on a CPU each collective is a rendezvous of the device
    threads), and mean gradient sum over mean count is the gradient of the
    global mean loss, however the padding falls on the devices.
    """
    def objective(params):
        return state.apply_fn({"params": params}, batch.X, batch.Y, batch.mask, method=RNNLM.loss)

    (loss_sum, count), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    flat_grads, unflatten = jax.flatten_util.ravel_pytree(grads)
    means = _mean_over_devices(jnp.concatenate([flat_grads, jnp.stack([loss_sum, count])]), axis_name)
    grads = unflatten(means[:-2] / means[-1])
    num_devices = _sum_over_devices(1, axis_name)
    metrics = {"loss_sum": means[-2] * num_devices, "count": means[-1] * num_devices,
               "grad_norm": optax.tree.norm(grads)}
    return state.apply_gradients(grads=grads), metrics


def train_steps(state: TrainState, batches: Batch, axis_name: str | None = None
                ) -> tuple[TrainState, dict[str, jax.Array]]:
    """``train_step`` over a stack of batches (a leading axis) as one ``lax.scan``; metrics stacked."""
    return jax.lax.scan(lambda state, batch: train_step(state, batch, axis_name), state, batches)


def train_windows(state: TrainState, tokens: jax.Array, windows: Windows, axis_name: str | None = None
                  ) -> tuple[TrainState, dict[str, jax.Array]]:
    """``train_steps`` on a stack of ``Windows``, their batches cut out of ``tokens`` where they live.

    What ``fit`` runs, with the token stream placed on each device once: the
    host then sends each call window starts and masks (80 KB for 10 of d2l's
    batches) instead of batches (2.6 MB), and builds no batches. On a CPU that
    work and that copy took time from the devices' cores: d2l's step 5.07 ->
    4.85 and 5.34 -> 5.13 ms on two CPU devices (interleaved, same process).
    """
    return train_steps(state, windows.batch(tokens), axis_name)


# Training steps per call of the compiled ``train_windows`` in ``fit``. Each call
# costs the host a dispatch (about 0.3 ms), and on a CPU the host's thread
# takes that time from the cores the devices compute on: with one call a step,
# d2l's step took 5.30 ms on two CPU devices and 7.54 ms on one, with one call
# per 10 steps 4.67 and 6.87 ms (interleaved, same process, 2-core reference
# machine; 5 steps a call 4.72 and 6.90 ms). The compile time is the same. An
# epoch whose step count is not a multiple of it ends in a shorter call, which
# compiles once more (as may the rest of an epoch resumed mid-way).
STEPS_PER_CALL = 10


def _loss_sums(state: TrainState, batch: Batch) -> jax.Array:
    """``[loss_sum, count]`` of one batch on this device."""
    return jnp.stack(state.apply_fn({"params": state.params}, batch.X, batch.Y, batch.mask,
                                    method=RNNLM.loss))


def eval_step(state: TrainState, batch: Batch, axis_name: str | None = None) -> dict[str, jax.Array]:
    loss_sum, count = _sum_over_devices(_loss_sums(state, batch), axis_name)
    return {"loss_sum": loss_sum, "count": count}


def eval_steps(state: TrainState, batches: Batch, axis_name: str | None = None) -> dict[str, jax.Array]:
    """``eval_step`` summed over a stack of batches (a leading axis), as one scan and one all-reduce.

    ``fit`` evaluates the whole validation set with one call of it each epoch:
    on two CPU devices d2l's 5 validation batches take 9.2 ms that way against
    12.6 ms as one call per batch (interleaved, same process).
    """
    sums = jax.lax.scan(lambda acc, batch: (acc + _loss_sums(state, batch), None), jnp.zeros(2), batches)[0]
    loss_sum, count = _sum_over_devices(sums, axis_name)
    return {"loss_sum": loss_sum, "count": count}


def perplexity(loss: float) -> float:
    """``exp(loss)``; ``inf`` past float range (a diverging run is not an exception here)."""
    return math.exp(loss) if loss < 709.0 else math.inf


@dataclasses.dataclass
class Position:
    """Where training stands: ``epoch`` (0-based) in progress, ``batch`` next batch of it,
    and the ``[loss_sum, count]`` of the batches of it already done."""
    epoch: int = 0
    batch: int = 0
    partial: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class FitResult:
    state: TrainState            # on the host, unreplicated
    history: list[dict]          # one record per epoch, as in metrics.jsonl
    workdir: Path


class _StopFlag:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.signum: int | None = None

    def __call__(self, signum, frame):
        if self.signum is not None:       # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum


@contextlib.contextmanager
def _catch_signals() -> Iterator[_StopFlag]:
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def fit(config: Config, data: TimeMachine, workdir: str | Path, *, params: Any = None,
        devices: int | None = None, checkpoint_every: int = CHECKPOINT_EVERY, keep: int = 3,
        progress: Callable | None = None) -> FitResult:
    """Trains ``config`` on ``data``, resuming from ``workdir`` if it holds a checkpoint.

    A fresh run starts from ``params`` (default: initialized from ``config.seed``);
    fit trains a copy, so the caller's stay valid.
    Saves a checkpoint every ``checkpoint_every`` epochs and after the last,
    keeping the latest ``keep`` and the best by validation perplexity.

    ``progress(done_steps, total_steps, record_or_None)`` is called after every
    call (``STEPS_PER_CALL`` steps) and every epoch (``experiments.timemachine``
    draws a progress bar with it). Raises ``NonFiniteLoss`` (nothing saved past
    the last good checkpoint) and ``Interrupted`` (after saving the last
    completed call's step).
    """
    workdir = Path(workdir)
    if data.num_val < 1:
        raise ValueError("fit validates every epoch, so the data needs num_val >= 1 validation windows.")
    dp = DataParallel.create(devices)
    dp.check_batch_size(config.batch_size)
    checkpoint.check_workdir(workdir)
    is_writer = jax.process_index() == 0

    state = create_train_state(config, len(data.vocab), params)
    position = Position()
    manager = checkpoint.manager(workdir / checkpoint.SUBDIR, keep=keep)
    step = manager.latest_step()
    if step is not None:
        meta = checkpoint.restore_meta(manager, step)
        checkpoint.check_compatible(meta, config, data.vocab, workdir)
        state = checkpoint.restore_state(manager, step, state)
        position = Position(**meta["position"])
    log = metrics_lib.MetricsLog(workdir / metrics_lib.FILENAME, writer=is_writer)
    log.truncate(position.epoch)
    if is_writer:
        checkpoint.write_config(workdir, config, data.vocab)

    options = compiler_options(config, dp.num_shards)
    train = dp.compile(train_windows, donate_state=True, compiler_options=options)
    evaluate = dp.compile(eval_steps, compiler_options=options)
    tokens, val_batches = dp.replicate(data.tokens), dp.put(dp.shard_stack(data.val_batches()))
    state = dp.replicate(state)
    steps_per_epoch = data.num_batches(True)
    total = config.epochs * steps_per_epoch
    done = position.epoch * steps_per_epoch + position.batch

    def save(epoch: int, batch: int, partial: list, val_ppl: float | None = None):
        host = dp.unreplicate(state)
        meta = checkpoint.make_meta(config, data.vocab, dataclasses.asdict(Position(epoch, batch, partial)),
                                    num_devices=dp.num_shards)
        checkpoint.save(manager, int(host.step), host, meta, val_ppl=val_ppl)

    def interrupted(signum: int, epoch: int, batch: int) -> Interrupted:
        manager.wait_until_finished()
        return Interrupted(
            f"Stopped by signal {signum} in epoch {epoch + 1} after batch {batch}/{steps_per_epoch}; "
            f"saved step {done} in {workdir}. Run the same command again to resume.", signum)

    with _catch_signals() as stop, manager:
        for epoch in range(position.epoch, config.epochs):
            start = position.batch if epoch == position.epoch else 0
            partial = list(position.partial) if epoch == position.epoch else []
            t0 = time.perf_counter()
            call_metrics = []
            for windows in _chunks(data.train_windows(epoch, start), STEPS_PER_CALL):
                state, m = train(state, tokens, dp.shard_stack(windows))
                call_metrics.append(m)
                wait_for_backlog(call_metrics)
                done += len(windows)
                if progress:
                    progress(done, total, None)
                if stop.signum is not None:
                    break
            sums = partial + _check_finite(dp.unreplicate(call_metrics), epoch, start, steps_per_epoch)
            if len(sums) < steps_per_epoch:                  # stopped mid-epoch
                save(epoch, len(sums), sums)
                raise interrupted(stop.signum, epoch, len(sums))
            train_loss = sum(s[0] for s in sums) / sum(s[1] for s in sums)
            val = dp.unreplicate(evaluate(state, val_batches))
            val_loss = float(val["loss_sum"]) / float(val["count"])
            record = {"epoch": epoch + 1, "step": done,
                      "train_loss": train_loss, "train_ppl": perplexity(train_loss),
                      "val_loss": val_loss, "val_ppl": perplexity(val_loss),
                      "seconds": time.perf_counter() - t0}
            if ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == config.epochs
                    or stop.signum is not None):
                save(epoch + 1, 0, [], val_ppl=record["val_ppl"])
            log.append(record)
            if progress:
                progress(done, total, record)
            if stop.signum is not None:
                raise interrupted(stop.signum, epoch, steps_per_epoch)
        manager.wait_until_finished()
    return FitResult(dp.unreplicate(state), log.read(), workdir)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    """``items`` in lists of ``size``, the last one shorter if need be."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_finite(call_metrics: list[dict], epoch: int, start: int, steps_per_epoch: int) -> list:
    """``[[loss_sum, count], ...]`` per step from ``train_steps``' stacked metrics, or
    ``NonFiniteLoss`` naming the first bad step."""
    sums = [[float(loss_sum), float(count)]
            for m in call_metrics for loss_sum, count in zip(m["loss_sum"], m["count"], strict=True)]
    for i, (loss_sum, count) in enumerate(sums):
        if not math.isfinite(loss_sum):
            raise NonFiniteLoss(
                f"The training loss is {loss_sum / count} at epoch {epoch + 1}, step "
                f"{start + i + 1} of {steps_per_epoch}; stopped without saving it (the last good "
                "checkpoint stays the latest). Try a smaller --lr or --clip.")
    return sums
