"""A ``Config`` as command-line flags: one per field, over a preset; lists of the ``SWEEPABLE`` ones train
runs together (``rnnjax.runs``); a resumed run's flags checked against what it has."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import re
import shlex
from typing import Any

from rnnjax import optimizers
from rnnjax.config import PRESETS, SWEEPABLE, Config, ConfigError
from rnnjax.spelling import disagreement, flag, said, shown

# Runs trained together in one program, at most: each is listed as the run starts, and vmapped.
MAX_RUNS = 1000
# What a run's parameters and vocabulary fix: a run fine-tuned from it (--init-from) may only repeat it.
FIXED = {"cell": "parameters", "num_hiddens": "parameters", "num_layers": "parameters",
         "bidirectional": "parameters", "token": "vocabulary", "min_freq": "vocabulary"}


def parsed(kind: type, text: str) -> Any:
    """``kind(text)``; a number a float cannot hold (``1e-400`` is 0.0, ``1e400`` inf) refused, naming
    what was typed: a range check of the rounded value would say "got 0"."""
    value = kind(text)
    if kind is float and (value == 0 and any(c in "123456789" for c in re.split("[eE]", text)[0])
                          or math.isinf(value) and "inf" not in text.lower()):
        raise argparse.ArgumentTypeError(f"{said(text.strip())} rounds to {shown(value)} as a float (floats "
                                         "hold magnitudes from 5e-324 to 1.8e308)")
    return value


def real(text: str) -> float:
    """An argparse type for a float flag outside ``Config`` (``parsed``: what was typed, if it rounds)."""
    return parsed(float, text)


real.__name__ = "float"


def _values(kind: type):
    """An argparse type: ``"0.5,1,2"`` -> ``(0.5, 1.0, 2.0)``."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(parsed(kind, v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{said(text)} is not a comma-separated list of "
                                             f"{kind.__name__}s")
        twice = next((v for k, v in enumerate(values) if v in values[:k]), None)
        if twice is not None:          # two of the runs would be the same run
            raise argparse.ArgumentTypeError(f"{said(text)} lists {shown(twice)} twice: list each value once")
        return values
    parse.__name__ = f"list of {kind.__name__}s"
    return parse


def _single(kind: type, name: str):
    """An argparse type for a field runs in one program must share: a list is refused, saying why."""
    def parse(text: str):
        if "," in text:
            raise argparse.ArgumentTypeError(
                f"{flag(name)} takes one value: runs trained in one program share their shapes "
                f"(only {', '.join(flag(k) for k in SWEEPABLE)} take lists); train the others in "
                "separate workdirs")
        return parsed(kind, text)
    parse.__name__ = kind.__name__
    return parse


def add_flags(parser: argparse.ArgumentParser, preset: str = "d2l") -> None:
    """``--preset`` (default ``preset``) and one flag per ``Config`` field, its help showing the preset's
    value; an unset flag stays ``None`` (``sweep_from_flags`` reads them). ``SWEEPABLE`` fields take lists
    (``--seed 0,1,2,3``, alias ``--seeds``): one run per combination."""
    group = parser.add_argument_group("run settings (Config)")
    group.add_argument("--preset", choices=sorted(PRESETS), default=preset,
                       help=f"the settings the flags below change (default {preset})")
    for f in dataclasses.fields(Config):
        value = getattr(PRESETS[preset], f.name)
        names, help = [flag(f.name)], f"{f.metadata['help']} ({preset}: {value})"
        if type(f.default) is bool:
            kind = {"action": argparse.BooleanOptionalAction}
        elif f.name in SWEEPABLE:
            kind = {"type": _values(type(f.default))}
            names += ["--seeds"] if f.name == "seed" else []
            help += "; a comma-separated list trains one run per value, all in one program"
        else:
            kind = {"type": _single(type(f.default), f.name)}
        group.add_argument(*names, dest=f.name, default=None, **kind, help=help)


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Config`` fields set by flags (lists of ``SWEEPABLE`` ones as given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
            if getattr(args, f.name, None) is not None}


def sweep_from_flags(args: argparse.Namespace, base: Config | None = None) -> list[Config]:
    """The preset (or ``base``) changed by the flags given: one ``Config`` per combination of the listed
    values."""
    fixed = {k: v for k, v in given(args).items() if k not in SWEEPABLE}
    axes = [[(k, v) for v in getattr(args, k)] for k in SWEEPABLE
            if getattr(args, k, None) is not None]
    count = math.prod(len(axis) for axis in axes)
    if count > MAX_RUNS:              # counted before any is made: 1000 values each of three is 10^9
        raise ConfigError(f"The flags list {count} runs ({' x '.join(str(len(a)) for a in axes)}); one "
                          f"program trains at most {MAX_RUNS}: split the lists over several workdirs.")
    base = (base or PRESETS[args.preset]).replace(**fixed)
    if "optimizer" in fixed:            # a Config takes any name (its restore needs no optimizer): a typo now
        optimizers.check(base.optimizer)
    return [base.replace(**dict(combo)) for combo in itertools.product(*axes)]


def resumed_from_flags(args: argparse.Namespace, saved: list[Config], where: str) -> list[Config]:
    """The runs ``saved`` in the workdir ``where``, their ``RESUMABLE`` fields (``--epochs``) changed by the
    flags given; ``ConfigError`` naming every other flag given that asks for settings they do not have."""
    differ, names, resumable = [], [], {}
    for name, value in given(args).items():
        if name in Config.RESUMABLE:
            resumable[name] = value
            continue
        wanted = flag_values(saved[0], name, value)
        have = list(dict.fromkeys(getattr(c, name) for c in saved))
        if list(wanted) != have:           # runs in their order: the order of the stacked state
            differ.append(disagreement(name, wanted, have))
            names.append(name)
    if differ:      # another lr, clip, optimizer, seed...: a new run can start from its parameters
        whose = " --run K to start from one run's" if len(saved) > 1 else " to start from its"
        tune = "" if set(names) & set(FIXED) else f" (with --init-from {shlex.quote(where)}{whose} " \
            "parameters)"
        raise ConfigError(f"{where} holds a run of other settings than the flags ask for: "
                          f"{'; '.join(differ)}. Leave those flags out to train it on (its settings are read "
                          f"from it), or use a new --workdir{tune}.")
    return [c.replace(**resumable) for c in saved]


def flag_values(config: Config, name: str, value) -> tuple:
    """The values a flag gives field ``name`` (a list for ``SWEEPABLE`` ones), each checked in ``config``:
    one no run could take (``--lr nan``, ``--cell GRU``) gets its own ``ConfigError``, not a disagreement."""
    values = value if name in SWEEPABLE else (value,)
    for v in values:
        config.replace(**{name: v})
    return values
