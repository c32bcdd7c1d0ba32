"""Training: the pure steps, and ``fit``, which trains a run.

``train_step(state, batch, axis_name=None, rng=None) -> (state, metrics)`` is a
plain function of its inputs (``rng``: dropout's key). ``rnnjax.parallel``
jits it for one device or pmaps it with ``axis_name`` for several; then it
averages gradients and metrics with one ``lax.pmean``. The loss is the exact mean cross-entropy over the real
(unmasked) tokens of the global batch, whatever the device count and however
the padding falls on the devices.

``fit`` trains a run: it checks everything, takes the workdir's lock, plans
from what the workdir holds (``rnnjax.start.planned``), says what it will do,
then runs the epoch loop (``rnnjax.loop``) on ``train_windows``
(``train_step`` scanned over a stack of batches that each device cuts from the
token stream it holds). A step's metrics are a dict: add a key to
``train_step``'s and it is summed over the epoch and logged as its mean; an
evaluation's, to ``eval_step``'s, logged as ``val_<key>``. One's own replaces
it here (``rnnjax.train.eval_step = mine``, wrapping the one it replaces, of
the same arguments): ``fit`` and ``fit_runs`` call what this module holds as
they start, and compile it anew.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from rnnjax import agree, checkpoint, loop, metrics as metrics_lib, preflight
from rnnjax.arguments import check_callbacks, check_saving, check_types, params_given
from rnnjax.config import Config
from rnnjax.spelling import as_flags
from rnnjax.data import Batch, Windows, WindowedText
# What fit raises and its defaults, importable from here too.
from rnnjax.loop import CHECKPOINT_EVERY, STEPS_PER_CALL, FitResult  # noqa: F401
from rnnjax.start import Plan, check_plan, planned
from rnnjax.state import SEED_PRNG, TrainState, create_train_state, seed_key
from rnnjax.diverging import NonFiniteLoss  # noqa: F401
from rnnjax.stops import Interrupted  # noqa: F401


def _mean_over_devices(x, axis_name):
    return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _sum_over_devices(x, axis_name):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def train_step(state: TrainState, batch: Batch, axis_name: str | None = None, rng: jax.Array | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step (``state.tx``: SGD by default) on the exact mean objective over the real tokens of
    the global batch.

    Each device differentiates its own objective sum. One ``pmean`` averages those
    gradients, cross-entropy sums and token counts over the devices (a single
    all-reduce: on a CPU each collective is a rendezvous of the device
    threads), and mean gradient sum over mean count is the gradient of the
    global mean objective, however the padding falls on the devices. The
    metrics' ``loss_sum`` is the cross-entropy's (``rnnjax.objective``): what
    perplexity reports, whatever the objective; ``grad_norm`` is the global
    norm of the gradient before clipping. A key added here is logged as its
    epoch mean (``metrics.epoch_record``); a ``<key>_sum``, summed over the
    devices (``lax.psum`` over ``axis_name``) as ``loss_sum`` and ``count``
    are, as ``train_<key>``, per token. Every key added must be reduced over
    ``axis_name``: the record takes the first device's value.

    ``rng`` (``dropout_key``'s: a raw key of two words, threefry's whatever
    ``$JAX_DEFAULT_PRNG_IMPL`` says) turns dropout on: the step's key is it
    folded with ``state.step``, so a resumed run draws the same masks, and
    each row's mask is drawn by its index in the global batch
    (``rnnjax.model.RowDropout``), so N devices draw one device's masks.
    """
    train, rngs = rng is not None, {}
    noted = _KEYS.get()
    if noted is not None:           # a step checked as it is traced (preflight.checked_step)
        noted.append(train)
    first_row = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch.X.shape[0]
    if train:
        rngs["dropout"] = jax.random.fold_in(_threefry(rng), state.step)

    def objective(params):
        objective_sum, count, ce_sum = state.apply_fn({"params": params}, batch.X, batch.Y, batch.mask, train,
                                                      first_row, method="loss", rngs=rngs)
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
    def step(state, batch):
        state, metrics = train_step(state, batch, axis_name, rng)
        preflight.check_step(metrics)
        return state, metrics
    return jax.lax.scan(step, state, batches)


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
    """A batch's validation sums over ``axis_name``'s devices: ``loss_sum`` (the cross-entropy over its real
    tokens) and ``count`` (of them). A key added here, a sum too, is logged as ``val_<key>``: a ``<key>_sum``
    divided by ``count`` (a mean per token, as ``loss_sum`` gives ``val_loss``), another as it is."""
    loss_sum, count = _loss_sums(state, batch)
    return _sum_over_devices({"loss_sum": loss_sum, "count": count}, axis_name)


def eval_steps(state: TrainState, batches: Batch, axis_name: str | None = None) -> dict[str, jax.Array]:
    """``eval_step`` summed over a stack of batches (a leading axis), as one scan and one all-reduce:
    how ``fit`` validates each epoch, in one call."""
    def one(state, batch):          # its keys checked before JAX orders them (mixed types fail there)
        metrics = eval_step(state, batch)
        if isinstance(metrics, dict):
            preflight.check_keys("eval_step's", metrics)
        return metrics

    def add(sums, batch):
        return jax.tree.map(jnp.add, sums, one(state, batch)), None
    first = jax.eval_shape(one, state, jax.tree.map(lambda x: x[0], batches))
    sums = jax.lax.scan(add, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), first), batches)[0]
    return _sum_over_devices(sums, axis_name)


def dropout_key(config: Config) -> jax.Array | None:
    """The ``rng`` of ``train_step`` that turns ``config``'s dropout on (of its seed: a resume draws the same
    masks); ``None`` where it has none."""
    return jax.random.key_data(seed_key(config.seed)) if config.dropout else None


def _threefry(rng: Any) -> jax.Array:
    """A raw key of two words as threefry's (under rbg, ``$JAX_DEFAULT_PRNG_IMPL``, a run's masks followed
    its device count); a typed key, or a raw one of JAX's default, as it is; else one sentence."""
    dtype, shape = getattr(rng, "dtype", None), jnp.shape(rng)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return rng
    if dtype != jnp.uint32 or shape != (2,) and shape != jax.eval_shape(jax.random.PRNGKey, 0).shape:
        raise ValueError(f"train_step's rng is a dropout key (rnnjax.train.dropout_key(config), jax.random."
                         f"PRNGKey(seed)): two uint32 words, not {dtype or type(rng).__name__} of shape "
                         f"{shape}.")
    return jax.random.wrap_key_data(rng, impl=SEED_PRNG) if shape == (2,) else rng


_KEYS: contextvars.ContextVar[list | None] = contextvars.ContextVar("rnnjax_train_keys", default=None)


@contextlib.contextmanager
def keys_noted() -> Iterator[list[bool]]:
    """While a step is checked as it is traced (``preflight.checked_step``): whether each ``train_step``
    traced in the block was given a dropout key."""
    token = _KEYS.set(noted := [])
    try:
        yield noted
    finally:
        _KEYS.reset(token)


@agree.leaves_on_error
def fit(config: Config, data: WindowedText, workdir: str | Path, *, params: Any = None,
        devices: int | None = None, checkpoint_every: int = CHECKPOINT_EVERY, keep: int = checkpoint.KEEP,
        progress: Callable | None = None, log: Callable[[str], Any] | None = print, plan: Plan | None = None
        ) -> FitResult:
    """Trains ``config`` on ``data``, resuming from ``workdir`` if it holds a checkpoint. ``data`` is what
    ``config`` asks for (``rnnjax.corpus.load(config)``: a resume remakes it so), in ``config.seed``'s
    batch order.

    First it checks everything, takes the workdir's lock and plans under it
    (``rnnjax.start.planned``; or trains ``plan``, made so by the caller,
    inside its block) and ``log``s what it will do. A
    fresh run starts from ``params`` (default: initialized from
    ``config.seed``; a restored run, ``rnnjax.checkpoint.restore``'s, gives
    its own, refused unless ``data`` is in its tokens, as ``vocab=run.vocab``
    loads it); fit trains a copy, so the caller's stay valid. A
    resumed run does not use them (its log line says so). Saves a
    checkpoint every ``checkpoint_every`` epochs and after the last, keeping
    the latest ``keep`` and the best by validation perplexity.

    ``progress(done_steps, total_steps, record_or_None)`` is called after every
    call (``STEPS_PER_CALL`` steps; an epoch's last takes those left over
    along) and every epoch, with its record as metrics.jsonl gets it; by
    default (``None``) ``log`` gets a line every tenth of the epochs
    (``epoch_lines``), ``False`` is off. To stop early, raise from it: fit saves the step
    it was called at, then raises that, and fit again resumes from there (the best epoch is among those
    saved: ``checkpoint_every=1`` saves each, for ``restore(best=True)``)
    (on several hosts, raised in one process: every process saves that step,
    and the others raise ``rnnjax.stops.StoppedByAnother``; an error in one
    before the run's first step stops the others at their check,
    ``rnnjax.agree.leaving_on_error``). Raises ``NonFiniteLoss``
    (nothing saved past the last good checkpoint) and ``Interrupted`` (after
    saving the last completed call's step).
    """
    a = asked(config, data, workdir, params, checkpoint_every, keep, progress, log)
    if plan is not None:
        check_plan(plan, config, data, workdir)
        return _fit(plan, data, a)
    with planned(config, data, workdir, devices=devices) as p:
        return _fit(p, data, a)


class Asked(NamedTuple):
    """What ``fit`` and ``fit_runs`` make of their arguments before they plan, alike (``asked``)."""
    params: Any                     # a new run's, or None
    origin: dict | None             # where they come from, a restored run's (Restored.address)
    checkpoint_every: int
    keep: int
    progress: Callable | None
    log: Callable[[str], Any] | None


def asked(config: Config, data: WindowedText, workdir: str | Path, params: Any, checkpoint_every: Any,
          keep: Any, progress: Callable | None, log: Callable[[str], Any] | None, caller: str = "fit"
          ) -> Asked:
    """The arguments of ``fit`` (``caller``; ``fit_runs``, of its first config) checked, in one sentence
    each, before anything is planned or written; ``progress`` by default ``log``'s ``epoch_lines``."""
    check_types(config, data, workdir)
    _check_replaced()
    checkpoint_every, keep = check_saving(checkpoint_every, keep)
    check_callbacks(progress, log)
    progress = epoch_lines(log, config.epochs) if progress is None and log else progress
    params, origin = params_given(params, data, config, caller)
    return Asked(params, origin, checkpoint_every, keep, progress, log)


def _check_replaced() -> None:
    """``TypeError`` in one sentence unless ``train_step`` and ``eval_step``, where one's own replaced them
    here, take what this module calls them with."""
    for name, called in (("train_step", "(state, batch, axis_name, rng)"), ("eval_step", "(state, batch)")):
        f = globals()[name]
        try:        # not follow_wrapped: a functools.wraps of rnnjax's own would read as rnnjax's own
            inspect.signature(f, follow_wrapped=False).bind(*called[1:-1].split(", "))
        except ValueError:      # no signature to read: taken on trust
            continue
        except TypeError as e:
            raise TypeError(f"rnnjax.train.{name}, one's own, is called as {name}{called}, which "
                            f"{getattr(f, '__name__', 'it')} cannot take ({e}): take the arguments of "
                            f"rnnjax's own.") from None


def given_line(p: Plan, params: Any) -> str:
    """What the plan's line adds of the ``params`` given to a new run, or not used by a resume."""
    if params is None or p.finished:
        return ""
    if p.step is None:
        return "; from the parameters of the run it fine-tunes" if as_flags() else "; from the params given"
    return ("; the params given are not used: the run resumes from its checkpoint (a new workdir starts "
            "from them)")


def epoch_lines(log: Callable[[str], Any], epochs: int) -> Callable:
    """A ``progress`` that ``log``s a line every tenth of the ``epochs`` and at the last: ``fit``'s where it
    is given no other (of runs: their lowest to highest perplexities, and how many train on)."""
    every = max(1, epochs // 10)

    def line(done: int, total: int, record: dict | None) -> None:
        if record and (record["epoch"] % every == 0 or record["epoch"] == epochs):
            train_ppl, val_ppl = (metrics_lib.ppls_text(record, k) for k in metrics_lib.NEEDED)
            n = len(record.get("runs", ()))
            runs = f"  ({n} run{'s' * (n != 1)})" if "runs" in record else ""
            log(f"epoch {record['epoch']}/{epochs}  step {done}/{total}  train ppl {train_ppl}  val ppl "
                f"{val_ppl}{runs}")
    return line


def _fit(p: Plan, data: WindowedText, a: Asked) -> FitResult:
    if a.log:           # what it will do, once the plan is made under the lock (fit_runs' says it alike)
        a.log(p.describe() + given_line(p, a.params))
    config = p.config
    state = create_train_state(config, len(data.vocab), a.params) if p.state is None else p.state
    step = functools.partial(train_windows, rng=dropout_key(config))     # its key an input (rnnjax.compiled)
    return loop.run(p, data, state, step, eval_steps, checkpoint_every=a.checkpoint_every, keep=a.keep,
                    progress=a.progress, log=a.log, origin=a.origin)
