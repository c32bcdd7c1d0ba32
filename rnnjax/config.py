"""A run's settings and its named presets.

Every ``Config`` field is a flag of ``python -m experiments.timemachine``
(``--num-hiddens``, ``--kernel``, ...; ``experiments.flags``), its help the
field's ``help`` below: a new field needs no CLI edit. Values are checked
when a ``Config`` is made, so a bad one fails before any work starts; the
optimizer's name as a run starts (one may be registered after the config is
made, ``rnnjax.OPTIMIZERS``), still before any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any

from rnnjax.cells import CELLS, NONLINEARITIES
from rnnjax.precision import COMPUTE_DTYPES, MATMUL_PRECISIONS
from rnnjax.spelling import choices, got, said, shown, spelt

KERNELS = ("plain", "fused", "hoisted", "cudnn")        # rnnjax.kernels: what each is, which is chosen
# float32's smallest normal and largest numbers: the range a rate or a clip keeps in training (a number
# up to half a unit above the largest rounds to it: 3.4028235e38, as NumPy prints it, is float32's).
FLOAT32_TINY, FLOAT32_MAX = 2.0 ** -126, (2 - 2.0 ** -23) * 2.0 ** 127
_ROUNDS_TO_MAX = (2 - 2.0 ** -24) * 2.0 ** 127


class ConfigError(ValueError):
    """A setting out of its range; the message is one sentence naming the setting (``spelt``)."""


def _typed(name: str, value: Any, kind: type) -> Any:
    """``value`` as the built-in ``kind`` of its field (what config.json and equality see): any integer type
    (``np.int64``, a 0-d ``jnp`` array) for an int, any real number for a float, never a bool for either;
    ``ConfigError`` otherwise."""
    number = {int: numbers.Integral, float: numbers.Real}.get(kind)
    scalar = getattr(getattr(value, "dtype", None), "kind", "") if getattr(value, "shape", None) == () else ""
    if kind is bool and scalar == "b":       # NumPy's or JAX's bool, as a 0-d array
        return bool(value)
    if number and (isinstance(value, number) and not isinstance(value, bool)
                   or scalar and scalar in ("iu" if kind is int else "iuf")):     # 0-d arrays of numbers too
        try:
            return operator.index(value) if kind is int else float(value)
        except OverflowError:       # an int past float's range
            raise ConfigError(f"{spelt(name)} must be a float, got a number too large for one.") from None
        except TypeError:           # an integer type that is no number (np.timedelta64): refused below
            pass
    if isinstance(value, kind) and not number:
        return kind(value)          # a str (bool) of a subclass's type: itself
    raise ConfigError(f"{spelt(name)} must be {'an' if kind is int else 'a'} {kind.__name__}, got {value!r}.")


def whole(value: Any, name: str) -> int:
    """``value`` as an ``int``: any integer type (``np.int64``, a 0-d ``jnp`` array of one), not a bool;
    ``ConfigError`` (a ``ValueError``) in one sentence otherwise."""
    if not isinstance(value, bool) and getattr(getattr(value, "dtype", None), "kind", "") != "b":
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise ConfigError(f"{name} must be a whole number, got {value!r}.")


def is_int(x: Any) -> bool:
    """Whether ``x``, read from JSON, is an int (a bool is none)."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    """Whether ``x``, read from JSON, is a finite int or float (a bool is none)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _field(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Config:
    """d2l's recipe for the concise RNN section (the defaults, preset ``d2l``).

    Command: ``python -m experiments.timemachine``. Runtime: 5-17 s on a
    2-core CPU. Expected: train perplexity 5.82-6.00, validation 7.19-7.43
    (by seed, CPU, device count and JAX release: docs/results.md).
    """
    batch_size: int = _field(1024, "windows per training step, over all devices")
    num_steps: int = _field(32, "tokens (characters or words) per window: the time steps unrolled")
    num_hiddens: int = _field(32, "hidden units of the recurrent cell")
    cell: str = _field("rnn", "recurrent cell, a name in rnnjax.cells.CELLS: rnn, gru, lstm, ...")
    nonlinearity: str = _field("tanh", "the rnn cell's nonlinearity, tanh or relu")
    num_layers: int = _field(1, "recurrent layers stacked")
    dropout: float = _field(0.0, "dropout on the outputs of every recurrent layer but the last, in training")
    bidirectional: bool = _field(False, "a reverse direction beside each layer, for rnnjax.model's layers "
                                        "(training refuses it: a language model's reverse reads what it "
                                        "predicts)")
    lr: float = _field(1.0, "learning rate")
    clip: float = _field(1.0, "gradients are scaled down to at most this global norm")
    optimizer: str = _field("sgd", "sgd (d2l's, at lr 1) or adam (at a smaller lr, e.g. 0.01), after the "
                                   "clipping; one's own registered in rnnjax.OPTIMIZERS")
    epochs: int = _field(100, "passes over the training windows")
    seed: int = _field(0, "seed of the initial parameters and of the batch order")
    num_train: int = _field(10000, "training windows (0, with val_fraction: every one)")
    num_val: int = _field(5000, "validation windows, the ones after the training windows")
    # What the tokens are and how the text splits (rnnjax.corpus); the defaults are d2l's Time Machine.
    token: str = _field("char", "tokens: char (one per character) or word (split at whitespace)")
    preprocess: str = _field("d2l", "d2l (letters only, lower case) or raw (every character kept)")
    min_freq: int = _field(0, "tokens seen fewer times in the training part are <unk> (d2l's Vocab)")
    val_fraction: float = _field(0.0, "validate on this tail of the token stream, num_train and num_val "
                                      "capping the windows (0 for all train windows); 0: d2l's windows")
    steps_per_epoch: int = _field(0, "steps an epoch takes, of train windows drawn at random; "
                                     "0: one pass over the shuffled train windows")
    unroll: int = _field(1, "unroll factor of the scan over time (1 is fastest here: unrolled, gated cells "
                            "compile longer and step many times slower on a CPU; docs/performance-log.md)")
    kernel: str = _field("auto", "training kernel, the same math at another speed (rnnjax.kernels): auto "
                                 "(chosen by backend and cell), " + ", ".join(KERNELS))
    # Numerics (rnnjax.precision).
    compute_dtype: str = _field(
        "float32", "the matmuls' operand dtype: float32, or bfloat16 summed in float32 (parameters, "
                   "optimizer state, the carry and the loss stay float32; a cell of one's own without a "
                   "dtype attribute computes in float32)")
    matmul_precision: str = _field(
        "default", "float32 matmuls' precision: default (JAX's: TF32 on recent NVIDIA GPUs, float32 on a "
                   "CPU), high, highest (float32 everywhere)")

    # What may differ between a run and the checkpoint it resumes from: the same math, at float round-off
    # (a resume that changes the kernel or matmul_precision, as another device count, is no longer bit for
    # bit: its plan says so, rnnjax.computing.changed); compute_dtype may not: bfloat16 is another experiment.
    RESUMABLE = frozenset({"epochs", "kernel", "matmul_precision"})

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _typed(f.name, getattr(self, f.name), type(f.default)))
        positive = ("batch_size", "num_steps", "num_hiddens", "epochs", "num_val", "unroll", "num_layers")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{spelt(name)} must be at least 1, got {getattr(self, name)}.")
        for name in ("lr", "clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{spelt(name)} must be a positive finite number, got {shown(value)}.")
            if not FLOAT32_TINY <= value < _ROUNDS_TO_MAX:      # it trains in float32: 1e-46 is 0, 1e39 inf
                raise ConfigError(f"{spelt(name)} must be within float32's range, {FLOAT32_TINY:.3g} to "
                                  f"{FLOAT32_MAX:.3g}, as training takes it; got {shown(value)}.")
        if not 0 <= self.seed < 2 ** 32:
            raise ConfigError(f"{spelt('seed')} must be in [0, 2**32), got {self.seed}.")
        if self.cell not in CELLS:
            raise ConfigError(f"{spelt('cell', self.cell)} is not a known cell; choose from "
                              f"{choices(CELLS)}, or register one of your own in rnnjax.CELLS "
                              "(README: Another cell).")
        if self.nonlinearity not in NONLINEARITIES:
            raise ConfigError(f"{spelt('nonlinearity')} must be one of {choices(NONLINEARITIES)}; "
                              f"got {said(self.nonlinearity)}.")
        if self.nonlinearity != "tanh" and self.cell != "rnn":
            raise ConfigError(f"{spelt('nonlinearity', self.nonlinearity)} is for the rnn cell; "
                              f"{self.cell} has its own.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{spelt('dropout')} must be in [0, 1), got {shown(self.dropout)}.")
        if self.dropout and self.num_layers == 1:
            raise ConfigError(f"{spelt('dropout', self.dropout)} acts between stacked layers, and "
                              f"{spelt('num_layers', 1)} has none: add {spelt('num_layers', 2)} or more, or "
                              f"leave {spelt('dropout')} out.")
        if self.kernel not in ("auto", *KERNELS):
            raise ConfigError(f"{spelt('kernel')} must be one of auto, {', '.join(KERNELS)}; got "
                              f"{said(self.kernel)}.")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"{spelt('compute_dtype')} must be one of {', '.join(COMPUTE_DTYPES)}; "
                              f"got {said(self.compute_dtype)}.")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ConfigError(f"{spelt('matmul_precision')} must be one of {', '.join(MATMUL_PRECISIONS)}; "
                              f"got {said(self.matmul_precision)}.")
        for name, allowed in (("token", ("char", "word")), ("preprocess", ("d2l", "raw"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{spelt(name)} must be {' or '.join(allowed)}, got "
                                  f"{said(getattr(self, name))}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"{spelt('val_fraction')} must be in [0, 1), got {shown(self.val_fraction)}.")
        if self.num_train < (0 if self.val_fraction else 1):
            raise ConfigError(f"{spelt('num_train')} must be at least 1 (0, every train window, goes with "
                              f"{spelt('val_fraction')}), got {self.num_train}.")
        for name in ("min_freq", "steps_per_epoch"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{spelt(name)} must be at least 0, got {getattr(self, name)}.")

    def differences(self, other: Config) -> list[str]:
        """The fields, but for ``RESUMABLE`` ones, that ``other`` sets otherwise: a run resumed as ``other``
        would not be this one."""
        return [f.name for f in dataclasses.fields(self)
                if f.name not in self.RESUMABLE and getattr(self, f.name) != getattr(other, f.name)]

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Config:
        """The config ``to_json`` gave, or one an older rnnjax saved (fields it lacked take their defaults;
        ``fused``, the one field ever removed, becomes ``kernel``). A key no rnnjax ever wrote is a
        ``ConfigError``: a misspelt field would otherwise train with its default."""
        if not isinstance(d, dict):
            raise TypeError(f"Config.from_json takes a dict, as to_json gives, not {got(d)}.")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = cls.unknown_fields(d)
        if unknown:
            raise ConfigError(_no_field(cls, unknown[0]))
        if d.get("fused") is False and "kernel" not in d:      # saved before Config.kernel
            d = {**d, "kernel": "plain"}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def unknown_fields(cls, d: dict) -> list[str]:
        """The keys of ``d`` that no rnnjax up to this one wrote: a newer one's fields, or misspelt ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        return [k for k in d if k not in names and k not in _REMOVED]


def _no_field(cls: type, name: str) -> str:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else f"; its fields are {', '.join(names)}"
    if name in _REMOVED:
        hint = f" ({_REMOVED[name]})"
    return f"a Config has no field {name!r}{hint}."


# Fields older rnnjax saved that Config has since dropped (from_json reads them), and what replaced them.
_REMOVED = {"fused": "kernel replaced it: kernel='plain' trains as fused=False did"}


def _naming_the_field(init: Any) -> Any:
    """The dataclass's ``__init__`` (its signature kept: help, a notebook's completion), a misspelt keyword
    (``batchsize``, in ``replace`` too) named with the field meant, not Python's "unexpected keyword"."""
    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        unknown = [k for k in kwargs if k not in type(self).__dataclass_fields__]
        if unknown:
            raise TypeError(_no_field(type(self), unknown[0]))
        init(self, *args, **kwargs)
    return __init__


Config.__init__ = _naming_the_field(Config.__init__)


PRESETS: dict[str, Config] = {
    "d2l": Config(),
    # d2l's recipes of the chapter's next sections: GRU, LSTM, deep (2-layer) GRU.
    "gru": Config(cell="gru", lr=4.0, epochs=50),
    "lstm": Config(cell="lstm", lr=4.0, epochs=50),
    "deep_gru": Config(cell="gru", num_layers=2, lr=2.0, epochs=100),
    # d2l's exercise 1 (experiments.overfit): 4x the hidden units, a fifth of the text, 3x the steps an epoch.
    "overfit": Config(num_hiddens=128, num_train=2000, batch_size=64, epochs=60),
    # For tests and smoke runs: seconds on one CPU core.
    "tiny": Config(batch_size=16, num_steps=8, num_hiddens=16, epochs=3, num_train=200, num_val=50),
}


def check_is_config(value: Any, name: str = "config") -> None:
    """``TypeError`` in one sentence unless ``value`` is a ``Config`` (a library entry point's argument)."""
    if not isinstance(value, Config):
        json_hint = " (Config.from_json reads one from JSON)" if isinstance(value, (str, dict)) else ""
        raise TypeError(f"{name} must be an rnnjax.Config{json_hint}, got {got(value)}.")


# Fields that may differ between runs trained together in one program (rnnjax.runs):
# they change no shape. Their flags take comma-separated lists.
SWEEPABLE = ("seed", "lr", "clip")


def label(config: Config, configs: list[Config], fields: Sequence[str] | None = None) -> str:
    """``seed 1, lr 0.5``: the fields in which ``config`` differs from the other runs trained with it (of
    ``fields``, '' where none)."""
    varied = [k for k in SWEEPABLE if len({getattr(c, k) for c in configs}) > 1] if fields is None else fields
    said = ", ".join(f"{k} {shown(getattr(config, k))}" for k in varied)
    return said or ("the one run" if fields is None else "")
