"""Parameters to and from PyTorch's ``state_dict`` of ``nn.RNN``/``nn.GRU``/``nn.LSTM`` + ``nn.Linear``.

A d2l reader can bring a model trained in the PyTorch tab into rnnjax (and
back) with no torch import: ``from_torch`` takes the module, its
``state_dict()`` (tensors of any dtype) or a dict of NumPy arrays. Keys are
matched under any prefix: the recurrent layer's ``weight_ih_l{k}``,
``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` (``_reverse`` for the
second direction), and the one other ``weight``/``bias`` pair, the output
``nn.Linear`` (d2l's ``RNNLM`` names them ``rnn.rnn.*`` and ``linear.*``).
The config gives what a state dict does not hold: the cell, ``num_layers``,
``bidirectional`` and ``nonlinearity`` (``nn.RNN``'s relu); given the module,
they are checked against its. A module of ``bias=False`` converts with zero
biases (rnnjax's cells have them; they train from there). How each cell's
weights map is in its docstring (``rnnjax.cells``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from rnnjax.cells import CELLS, OWN_CELLS, registered_as
from rnnjax.config import Config
from rnnjax.spelling import got
from rnnjax.state import check_params

# nn.RNN/GRU/LSTM's ``mode``: rnnjax's cell and nonlinearity (None: the cell has none to choose).
_MODES = {"RNN_TANH": ("rnn", "tanh"), "RNN_RELU": ("rnn", "relu"), "GRU": ("gru", None),
          "LSTM": ("lstm", None)}
# A recurrent layer's keys, as nn.RNNBase names them.
_RECURRENT = re.compile(r"(weight|bias)_(ih|hh|hr)_l\d+(_reverse)?$")


def _layer_names(config: Config) -> list[tuple[str, str]]:
    """``(our module name, PyTorch's suffix)`` per layer and direction, in PyTorch's order."""
    dirs = 2 if config.bidirectional else 1
    stacked = config.num_layers > 1 or config.bidirectional
    return [(f"layers_{k * dirs + d}" if stacked else "", f"l{k}" + ("_reverse" if d else ""))
            for k in range(config.num_layers) for d in range(dirs)]


def _check_cell(config: Config) -> None:
    """``ValueError`` unless ``config``'s cell is one of rnnjax's own, the ones PyTorch has."""
    if CELLS.get(config.cell) is not OWN_CELLS.get(config.cell):
        raise ValueError(f"rnnjax.interop converts rnnjax's own cells ({', '.join(OWN_CELLS)}), PyTorch's "
                         f"nn.RNN, nn.GRU and nn.LSTM; the config's cell {config.cell!r} is "
                         f"{registered_as(config.cell)}.")


def _entries(source: Any, config: Config) -> dict:
    """The state dict of ``source``: a torch module's (its recurrent layers' settings checked against
    ``config``'s), or ``source`` itself; torch tensors as float32 NumPy arrays."""
    if all(callable(getattr(source, k, None)) for k in ("state_dict", "modules")):     # a torch module
        for m in source.modules():
            if getattr(m, "mode", None) in _MODES:
                cell, nonlinearity = _MODES[m.mode]
                theirs = {"cell": cell, "nonlinearity": nonlinearity or config.nonlinearity,
                          "num_layers": m.num_layers, "bidirectional": m.bidirectional}
                differ = [k for k, v in theirs.items() if v != getattr(config, k)]
                if differ:
                    raise ValueError(f"The module's {type(m).__name__} has "
                                     f"{', '.join(f'{k} {theirs[k]!r}' for k in differ)}; the config "
                                     f"{', '.join(f'{k} {getattr(config, k)!r}' for k in differ)}: give the "
                                     "config the module's.")
        source = source.state_dict()
    if not isinstance(source, Mapping):         # an optimizer has a state_dict too
        raise TypeError(f"from_torch takes a PyTorch module, its state_dict() or a dict of arrays, got "
                        f"{got(source)}.")
    if "param_groups" in source:
        raise ValueError("The state dict is an optimizer's (param_groups): give the model's, "
                         "model.state_dict().")
    nested = [k for k, v in source.items() if isinstance(v, Mapping)]
    if nested:          # torch.save({"model": ..., "optimizer": ...}): a training checkpoint
        raise ValueError(f"The state dict holds dicts ({', '.join(map(repr, nested[:4]))}), as a training "
                         f"checkpoint does: give the model's own, checkpoint[{nested[0]!r}] say.")
    # bfloat16 or a tensor that needs grad has no NumPy view: float32 copies
    return {k: v.detach().cpu().float().numpy() if hasattr(v, "detach") else v for k, v in source.items()}


def _find(state_dict: dict, name: str, used: set[str], zeros: int | None = None) -> np.ndarray:
    keys = [k for k in state_dict if k == name or k.endswith("." + name)]
    if not keys and zeros is not None:          # bias=False: rnnjax's have them, and zero is none
        return np.zeros(zeros, np.float32)
    if len(keys) != 1:
        found = "none" if not keys else ", ".join(keys)
        raise ValueError(f"The state dict needs exactly one key ending in {name!r}; found {found}.")
    used.add(keys[0])
    return np.asarray(state_dict[keys[0]], np.float32)


def _linear(state_dict: dict, used: set[str]) -> tuple[np.ndarray, np.ndarray]:
    prefixes = [k[: -len("weight")] for k in state_dict if re.fullmatch(r"(.*\.)?weight", k)]
    if len(prefixes) != 1:
        raise ValueError(f"The state dict needs exactly one output layer's 'weight' beside the recurrent "
                         f"layer's; found {len(prefixes)}: {prefixes}.")
    weight = _find(state_dict, prefixes[0] + "weight", used)
    return weight, _find(state_dict, prefixes[0] + "bias", used, zeros=len(weight))


def from_torch(state_dict: Any, config: Config) -> dict:
    """The ``RNNLM`` parameters of ``config`` (cell, layers, directions, nonlinearity) from a PyTorch
    module or state dict (module doc), every key of which they use (a layer more, or ``proj_size``'s
    weights, would otherwise be dropped)."""
    _check_cell(config)
    state_dict = _entries(state_dict, config)
    biased = any(m[1] == "bias" for m in map(_RECURRENT.search, state_dict) if m)    # else bias=False
    rnn: dict = {}
    used: set[str] = set()
    for ours, theirs in _layer_names(config):
        w_ih, w_hh = (_find(state_dict, f"{name}_{theirs}", used) for name in ("weight_ih", "weight_hh"))
        b_ih, b_hh = (_find(state_dict, f"{name}_{theirs}", used, zeros=None if biased else len(w_ih))
                      for name in ("bias_ih", "bias_hh"))
        if config.cell == "rnn":
            cell = {"W_xh": w_ih.T, "W_hh": w_hh.T, "b_h": b_ih + b_hh}
        else:
            cell = {"W_ih": w_ih.T, "W_hh": w_hh.T, "b_ih": b_ih, "b_hh": b_hh}
        (rnn.setdefault(ours, {}) if ours else rnn)["cell"] = cell
    weight, bias = _linear(state_dict, used)
    unused = sorted(set(state_dict) - used)
    other = [k for k in unused if not _RECURRENT.search(k)]
    if other:           # a step count, a norm layer's buffers: not the model's weights
        raise ValueError(f"The state dict has entries that are not weights of an nn.RNN, nn.GRU or nn.LSTM "
                         f"and its output nn.Linear ({', '.join(other[:4])}{', ...' if other[4:] else ''}): "
                         "give those modules' state dict alone.")
    if unused:
        raise ValueError(f"The state dict has weights the config's model has none of ({', '.join(unused[:4])}"
                         f"{', ...' if unused[4:] else ''}): give the config PyTorch's num_layers and "
                         "bidirectional (PyTorch's proj_size has no counterpart here).")
    params = {"rnn": rnn, "output_layer": {"kernel": weight.T, "bias": bias}}
    check_params(params, config, vocab_size=weight.shape[0])
    bad = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
           if not np.all(np.isfinite(x))]
    if bad:
        raise ValueError(f"The state dict has NaN or infinite weights (in our names: {', '.join(bad)}).")
    return params


def to_torch(params: dict, config: Config, prefix: str = "rnn.rnn.", linear_prefix: str = "linear."
             ) -> dict[str, np.ndarray]:
    """A PyTorch state dict (NumPy arrays) of ``params``, named as d2l's ``RNNLM`` names them.

    The rnn cell's one bias goes to ``bias_ih``; ``bias_hh`` is zero. Every bias is given: a module of
    ``bias=False`` has none to load them into. ``ValueError`` unless ``params`` are those of ``config``
    (cell, layers, sizes).
    """
    _check_cell(config)
    try:
        vocab_size = int(np.shape(params["output_layer"]["kernel"])[-1])
        check_params(params, config, vocab_size=vocab_size)
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"The params are not those of an RNNLM ({type(e).__name__}: {e}); pass the params "
                         "of a model made from this config.") from None
    out = {}
    for ours, theirs in _layer_names(config):
        cell = {k: np.asarray(v) for k, v in (params["rnn"][ours] if ours else params["rnn"])["cell"].items()}
        if config.cell == "rnn":
            w_ih, w_hh, b_ih, b_hh = cell["W_xh"], cell["W_hh"], cell["b_h"], np.zeros_like(cell["b_h"])
        else:
            w_ih, w_hh, b_ih, b_hh = cell["W_ih"], cell["W_hh"], cell["b_ih"], cell["b_hh"]
        out.update({f"{prefix}weight_ih_{theirs}": w_ih.T, f"{prefix}weight_hh_{theirs}": w_hh.T,
                    f"{prefix}bias_ih_{theirs}": b_ih, f"{prefix}bias_hh_{theirs}": b_hh})
    out[linear_prefix + "weight"] = np.asarray(params["output_layer"]["kernel"]).T
    out[linear_prefix + "bias"] = np.asarray(params["output_layer"]["bias"])
    return {k: np.array(v, order="C") for k, v in out.items()}       # writable: torch.from_numpy warns else
