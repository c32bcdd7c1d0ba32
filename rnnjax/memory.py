"""Whether a run fits the machine, found before any work: parameters, optimizer state, activations.

``check(config, vocab_size, num_shards, num_runs)`` refuses a run whose
training step cannot fit in this machine's memory (on a CPU every device's
copy shares it; elsewhere one device's), naming the flag to lower;
``advice`` names it for an out-of-memory error at run time, and
``compile_note`` warns of a long compilation. A generous bound, not a profile.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from rnnjax import optimizers
from rnnjax.cells import registered_own
from rnnjax.config import Config
from rnnjax.spelling import as_flags, spelt
from rnnjax.state import abstract_train_state

# Bytes of float32 work per token, layer and hidden unit of each gate (activations kept for the
# backward pass, their gradients, the fused kernel's buffers), and per token and vocabulary entry.
_BYTES_PER_TOKEN_HIDDEN, _BYTES_PER_TOKEN_VOCAB = 64, 16
# Copies of the parameters a step makes beside the state: gradients, their flat all-reduced copy, the
# updated parameters.
PARAM_COPIES = 3
_GATES = {"rnn": 1, "gru": 3, "lstm": 4}
# Layers past which the compiled step (every layer unrolled into it) is slow to compile: a run warns first.
LONG_COMPILE_LAYERS = 16


def _state_bytes(config: Config, vocab_size: int) -> tuple[int, int]:
    """``(bytes of the train state, bytes of its parameters)``: counted for rnnjax's own cells, with what the
    optimizer keeps per parameter (``_optimizer_bytes``), traced for others (another cell registered under
    an own one's name too) and for an optimizer whose state needs the model's own tree (``jax.eval_shape``,
    seconds for a deep stack)."""
    if config.cell in _GATES and registered_own(config.cell):
        gates, dirs, H = _GATES[config.cell], 2 if config.bidirectional else 1, config.num_hiddens
        biases = 1 if config.cell == "rnn" else 2
        per_layer = dirs * (H * gates * H + biases * gates * H)       # the input weights apart
        count = (config.num_layers * per_layer + dirs * vocab_size * gates * H
                 + (config.num_layers - 1) * dirs * dirs * H * gates * H)
        count += dirs * H * vocab_size + vocab_size
        kept = _optimizer_bytes(config, 4 * count)
        if kept is not None:
            return 4 * count + kept + 64, 4 * count
    abstract = abstract_train_state(config, vocab_size)
    return (sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract)),
            sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract.params)))


def _optimizer_bytes(config: Config, param_bytes: int) -> int | None:
    """Bytes of ``config.optimizer``'s state for float32 parameters of ``param_bytes`` (SGD none, Adam two
    moments), from its state for two stand-ins (traced, not the model): a part per parameter, a part not.
    ``None`` for an optimizer that cannot take them (a mask of the model's tree, a matrix-only method)."""
    opt = optimizers.make(config)

    def state_bytes(n: int) -> int:
        state = jax.eval_shape(opt.init, {"w": jax.ShapeDtypeStruct((n,), jnp.float32)})
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    try:
        small, large = state_bytes(1024), state_bytes(2048)
    except Exception:           # whatever it raises: the model's own tree is traced instead
        return None
    per_byte = (large - small) / (4 * 1024)
    return round(per_byte * param_bytes + small - per_byte * 4 * 1024)


def estimate(config: Config, vocab_size: int, num_shards: int, num_runs: int = 1) -> tuple[int, int]:
    """``(bytes of the state and its copies, bytes of activations)`` one device needs for a step."""
    state, params = _state_bytes(config, vocab_size)
    tokens = max(config.batch_size // num_shards, 1) * config.num_steps * num_runs
    width = (config.num_hiddens * config.num_layers * (2 if config.bidirectional else 1)
             * _GATES.get(config.cell, 4))
    activations = tokens * (width * _BYTES_PER_TOKEN_HIDDEN + (vocab_size + 16) * _BYTES_PER_TOKEN_VOCAB)
    return (state + PARAM_COPIES * params) * num_runs, activations


def advice(config: Config, vocab_size: int, num_shards: int, num_runs: int = 1) -> str:
    """The settings to lower, the larger share of the estimate first."""
    weights, activations = estimate(config, vocab_size, num_shards, num_runs)
    names = [f"{spelt('num_hiddens')} or {spelt('num_layers')}",
             f"{spelt('batch_size')} or {spelt('num_steps')}"]
    names = names if weights >= activations else names[::-1]
    if num_runs > 1:        # each run trained together multiplies both
        lists = "--seeds, --lr, --clip lists" if as_flags() else "the configs given to fit_runs"
        names.insert(0, f"the number of runs ({lists})")
    return ", or ".join(names)


def _available(device: jax.Device) -> int | None:
    """Bytes a step may use: the machine's memory on a CPU, the device's own elsewhere; ``None`` if
    unknown."""
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return stats.get("bytes_limit")
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):      # not a POSIX system
        return None


class TooLarge(ValueError):
    """A step that would not fit in memory (``check``)."""


def check(config: Config, vocab_size: int, num_shards: int, num_runs: int = 1,
          device: jax.Device | None = None, data_bytes: int = 0) -> None:
    """``TooLarge`` (a ``ValueError``) if a training step, with the token stream of ``data_bytes`` each
    device holds, cannot fit in memory (estimated), naming what to lower."""
    device = device or jax.devices()[0]
    have = _available(device)
    if have is None:
        return
    weights, activations = estimate(config, vocab_size, num_shards, num_runs)
    copies = num_shards if device.platform == "cpu" else 1      # CPU devices share the host's memory
    need = (weights + activations + data_bytes) * copies
    gib = 2 ** 30
    if need > have and data_bytes > weights + activations:      # the text, not the model
        raise TooLarge(f"The text's token stream takes {_gib(data_bytes)} GiB on each of the {copies} "
                       f"device(s) that train on it, more than this machine's {have / gib:.0f} GiB with "
                       f"the training step: train on a part of the text, or on fewer {spelt('devices')}.")
    if need > have:
        runs = f"{num_runs} runs of " if num_runs > 1 else ""
        shape = (f"{spelt('num_hiddens', config.num_hiddens)} x {spelt('num_layers', config.num_layers)} at "
                 f"{spelt('batch_size', config.batch_size)} x {spelt('num_steps', config.num_steps)}")
        raise TooLarge(f"{runs}{shape} needs about {_gib(need)} GiB for a training step "
                       f"({_gib(weights * copies)} GiB of parameters, optimizer state and gradients, "
                       f"{_gib(activations * copies)} GiB of activations), more than this machine's "
                       f"{have / gib:.0f} GiB; lower {advice(config, vocab_size, num_shards, num_runs)}.")


def _gib(n: int) -> str:
    """Bytes in GiB as a person reads them: 3.2, 1,024.0, 6.3e+18."""
    gib = n / 2 ** 30
    return f"{gib:,.1f}" if gib < 1e6 else f"{gib:.2g}"


def compile_note(config: Config) -> str | None:
    """A warning, before it starts, of a compilation that takes minutes."""
    layers = config.num_layers * (2 if config.bidirectional else 1)
    if layers <= LONG_COMPILE_LAYERS:
        return None
    return (f"{spelt('num_layers', config.num_layers)}: every layer is traced and compiled into the training "
            "step on its own, which may take minutes before the first epoch (more than in proportion to the "
            "layers)")
