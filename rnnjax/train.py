"""Training: the pure steps, and ``fit``, the epoch loop.

``train_step(state, batch, axis_name=None) -> (state, metrics)`` is a plain
function of its inputs. ``rnnjax.parallel`` jits it for one device or pmaps it
with ``axis_name`` for several; then it averages gradients and metrics with
one ``lax.pmean``. The loss is the exact mean cross-entropy over the real
(unmasked) tokens of the global batch, whatever the device count and however
the padding falls on the devices.

``fit`` runs the epochs, ``STEPS_PER_CALL`` steps to a compiled call of
``train_windows`` (``train_step`` scanned over a stack of batches that each
device cuts from the token stream it holds). It resumes from the workdir's
latest checkpoint, logs one JSON line per epoch, checkpoints, stops on a
non-finite loss, and on SIGINT/SIGTERM saves the last completed call's step
before it exits. Before it writes anything it checks everything, takes the
workdir's lock, plans from what the workdir holds (``rnnjax.start.planned``)
and says what it will do.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from rnnjax import checkpoint, metrics as metrics_lib
from rnnjax.backend import compiler_options
from rnnjax.config import Config
from rnnjax.data import Batch, TimeMachine, Windows
from rnnjax.parallel import wait_for_backlog
from rnnjax.precision import at_precision
from rnnjax.start import Plan, Position, planned
from rnnjax.state import TrainState, create_train_state
# NonFiniteLoss and Interrupted are what fit raises: importable from here too.
from rnnjax.stops import (Interrupted, NonFiniteLoss, catch_signals, check_divergence,  # noqa: F401
                          check_finite)

# Epochs between checkpoints: a save costs about a third of a d2l epoch
# (docs/performance.md). The last epoch and an interrupted run are always saved.
CHECKPOINT_EVERY = 10

# Training steps per compiled call: each call costs the host a dispatch, which
# on a CPU takes time from the cores the devices compute on. An epoch whose
# step count is not a multiple ends in a shorter call, compiled once more.
STEPS_PER_CALL = 10


def _mean_over_devices(x, axis_name):
    return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _sum_over_devices(x, axis_name):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def train_step(state: TrainState, batch: Batch, axis_name: str | None = None, rng: jax.Array | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on the exact mean objective over the real tokens of the global batch.

    Each device differentiates its own objective sum. One ``pmean`` averages those
    gradients, cross-entropy sums and token counts over the devices (a single
    all-reduce: on a CPU each collective is a rendezvous of the device
    threads), and mean gradient sum over mean count is the gradient of the
    global mean objective, however the padding falls on the devices. The
    metrics' ``loss_sum`` is the cross-entropy's (``rnnjax.objective``): what
    perplexity reports, whatever the objective.

    ``rng`` (a raw ``jax.random.PRNGKey``) turns dropout on: the step's key is
    it folded with ``state.step`` (and the device), so a resumed run draws the
    same masks.
    """
    train, rngs = rng is not None, {}
    if train:
        key = jax.random.fold_in(rng, state.step)
        device = 0 if axis_name is None else jax.lax.axis_index(axis_name)
        rngs["dropout"] = jax.random.fold_in(key, device)

    def objective(params):
        objective_sum, count, ce_sum = state.apply_fn({"params": params}, batch.X, batch.Y, batch.mask, train,
                                                      method="loss", rngs=rngs)
        return objective_sum, (ce_sum, count)

    (_, (loss_sum, count)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    flat_grads, unflatten = jax.flatten_util.ravel_pytree(grads)
    means = _mean_over_devices(jnp.concatenate([flat_grads, jnp.stack([loss_sum, count])]), axis_name)
    grads = unflatten(means[:-2] / means[-1])
    num_devices = _sum_over_devices(1, axis_name)
    metrics = {"loss_sum": means[-2] * num_devices, "count": means[-1] * num_devices,
               "grad_norm": optax.tree.norm(grads)}
    return state.apply_gradients(grads=grads), metrics


def train_steps(state: TrainState, batches: Batch, axis_name: str | None = None, rng: jax.Array | None = None
                ) -> tuple[TrainState, dict[str, jax.Array]]:
    """``train_step`` over a stack of batches (a leading axis) as one ``lax.scan``; metrics stacked."""
    return jax.lax.scan(lambda state, batch: train_step(state, batch, axis_name, rng), state, batches)


def train_windows(state: TrainState, tokens: jax.Array, windows: Windows, axis_name: str | None = None,
                  rng: jax.Array | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """``train_steps`` on a stack of ``Windows``, their batches cut out of ``tokens`` where they live.

    What ``fit`` runs, with the token stream placed on each device once: the
    host sends each call window starts and masks instead of batches.
    """
    return train_steps(state, windows.batch(tokens), axis_name, rng)


def _loss_sums(state: TrainState, batch: Batch) -> jax.Array:
    """``[loss_sum, count]`` of one batch on this device: the cross-entropy's sum, what perplexity reports."""
    _, count, ce_sum = state.apply_fn({"params": state.params}, batch.X, batch.Y, batch.mask, method="loss")
    return jnp.stack([ce_sum, count])


def eval_step(state: TrainState, batch: Batch, axis_name: str | None = None) -> dict[str, jax.Array]:
    loss_sum, count = _sum_over_devices(_loss_sums(state, batch), axis_name)
    return {"loss_sum": loss_sum, "count": count}


def eval_steps(state: TrainState, batches: Batch, axis_name: str | None = None) -> dict[str, jax.Array]:
    """``eval_step`` summed over a stack of batches (a leading axis), as one scan and one all-reduce:
    how ``fit`` validates each epoch, in one call."""
    sums = jax.lax.scan(lambda acc, batch: (acc + _loss_sums(state, batch), None), jnp.zeros(2), batches)[0]
    loss_sum, count = _sum_over_devices(sums, axis_name)
    return {"loss_sum": loss_sum, "count": count}


@dataclasses.dataclass
class FitResult:
    state: TrainState            # on the host, unreplicated
    history: list[dict]          # one record per epoch, as in metrics.jsonl
    workdir: Path
    stopped: tuple = ()          # runs trained together: why each one stopped early, or None


def fit(config: Config, data: TimeMachine, workdir: str | Path, *, params: Any = None,
        devices: int | None = None, checkpoint_every: int = CHECKPOINT_EVERY, keep: int = 3,
        progress: Callable | None = None, log: Callable[[str], Any] | None = print, plan: Plan | None = None
        ) -> FitResult:
    """Trains ``config`` on ``data``, resuming from ``workdir`` if it holds a checkpoint.

    First it checks everything, takes the workdir's lock and plans under it
    (``rnnjax.start.planned``; or trains ``plan``, made so by the caller,
    inside its block) and ``log``s what it will do. A
    fresh run starts from ``params`` (default: initialized from
    ``config.seed``); fit trains a copy, so the caller's stay valid. Saves a
    checkpoint every ``checkpoint_every`` epochs and after the last, keeping
    the latest ``keep`` and the best by validation perplexity.

    ``progress(done_steps, total_steps, record_or_None)`` is called after every
    call (``STEPS_PER_CALL`` steps) and every epoch. Raises ``NonFiniteLoss``
    (nothing saved past the last good checkpoint) and ``Interrupted`` (after
    saving the last completed call's step).
    """
    if plan is not None:
        return _fit(plan, data, params, checkpoint_every, keep, progress)
    with planned(config, data, workdir, devices=devices) as p:
        if log:
            log(p.describe())
        return _fit(p, data, params, checkpoint_every, keep, progress)


def open_workdir(p: Plan, data: TimeMachine, keep: int) -> tuple[Any, metrics_lib.MetricsLog]:
    """The checkpoint manager (the best counted over the runs before too) and the metrics log of a planned
    run; unless it is finished, the records past its checkpoint dropped and ``config.json`` written."""
    earlier = checkpoint.val_ppls(p.workdir) if p.step is not None else {}
    manager = checkpoint.manager(p.workdir / checkpoint.SUBDIR, keep=keep, earlier=earlier)
    metrics_log = metrics_lib.MetricsLog(p.workdir / metrics_lib.FILENAME, writer=jax.process_index() == 0)
    if not p.finished:
        metrics_log.truncate(p.position.epoch)
        if jax.process_index() == 0:
            checkpoint.write_config(p.workdir, p.config, data.vocab, runs=list(p.runs) or None)
    return manager, metrics_log


def compile_run(p: Plan, data: TimeMachine, step: Callable, evaluate: Callable) -> tuple:
    """``(train, evaluate, tokens, val_batches)``: a planned run's training and evaluation steps compiled
    for its devices, their float32 matmuls at ``matmul_precision``, and the token stream and validation
    batches on them."""
    options = compiler_options(p.config.batch_size, p.config.num_hiddens, p.dp.num_shards)
    step, evaluate = (at_precision(f, p.config.matmul_precision) for f in (step, evaluate))
    return (p.dp.compile(step, donate_state=True, compiler_options=options),
            p.dp.compile(evaluate, compiler_options=options),
            p.dp.replicate(data.tokens), p.dp.put(p.dp.shard_stack(data.val_batches())))


def count_steps(p: Plan, data: TimeMachine) -> tuple[int, int, int]:
    """``(steps per epoch, steps in the run, steps done before this start)``."""
    steps_per_epoch = data.num_batches(True)
    return (steps_per_epoch, p.config.epochs * steps_per_epoch,
            p.position.epoch * steps_per_epoch + p.position.batch)


def _fit(p: Plan, data: TimeMachine, params: Any, checkpoint_every: int, keep: int,
         progress: Callable | None) -> FitResult:
    config, workdir, dp, position = p.config, p.workdir, p.dp, p.position
    state = create_train_state(config, len(data.vocab), params) if p.state is None else p.state
    manager, metrics_log = open_workdir(p, data, keep)
    if p.finished:
        manager.close()
        return FitResult(state, metrics_log.read(), workdir)

    step = train_windows
    if config.dropout and config.num_layers > 1:      # dropout acts between layers only
        step = functools.partial(train_windows, rng=jax.random.PRNGKey(config.seed))
    train, evaluate, tokens, val_batches = compile_run(p, data, step, eval_steps)
    state = dp.replicate(state)
    steps_per_epoch, total, done = count_steps(p, data)

    def save(epoch: int, batch: int, partial: list, val_ppl: float | None = None):
        host = dp.unreplicate(state)
        position = Position(epoch, batch, partial, high=high)
        meta = checkpoint.make_meta(config, data.vocab, dataclasses.asdict(position), steps_per_epoch,
                                    num_devices=dp.num_shards)
        checkpoint.save(manager, int(host.step), host, meta, val_ppl=val_ppl)

    high = position.high or 0         # epochs in a row far above the uniform guess's perplexity
    with catch_signals() as stop, manager:
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
            sums = partial + check_finite(dp.unreplicate(call_metrics), epoch, start, steps_per_epoch)
            if len(sums) < steps_per_epoch:                  # stopped mid-epoch
                save(epoch, len(sums), sums)
                raise _stopped(manager, stop.signum, epoch, len(sums), steps_per_epoch, done, workdir)
            train_loss = sum(s[0] for s in sums) / sum(s[1] for s in sums)
            val = dp.unreplicate(evaluate(state, val_batches))
            val_loss = float(val["loss_sum"]) / float(val["count"])
            record = metrics_lib.epoch_record(epoch + 1, done, train_loss, val_loss, time.perf_counter() - t0)
            high = high + 1 if check_divergence(record, high, len(data.vocab)) else 0
            # The record first: a crash between the two leaves it past the checkpoint, where resume drops it.
            metrics_log.append(record)
            if ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == config.epochs
                    or stop.signum is not None):
                save(epoch + 1, 0, [], val_ppl=record["val_ppl"])
            if progress:
                progress(done, total, record)
            if stop.signum is not None:
                raise _stopped(manager, stop.signum, epoch, steps_per_epoch, steps_per_epoch, done, workdir)
        checkpoint.check_saved(manager, wait=True)
    return FitResult(dp.unreplicate(state), metrics_log.read(), workdir)


def _stopped(manager: Any, signum: int, epoch: int, batch: int, steps_per_epoch: int, step: int,
             workdir: Path) -> Interrupted:
    """The ``Interrupted`` a loop stopped by a signal raises, once its saves have finished."""
    checkpoint.check_saved(manager, wait=True)
    return Interrupted(f"Stopped by signal {signum} ({signal.Signals(signum).name}) in epoch {epoch + 1} "
                       f"after batch {batch}/{steps_per_epoch}; saved step {step} in {workdir}. Run the same "
                       "command again to resume.", signum)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    """``items`` in lists of ``size``, the last one shorter if need be (``itertools.batched`` is 3.12+)."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
