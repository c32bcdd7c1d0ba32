"""How messages write a setting and its value: as the library's Python takes them (``batch_size=32``,
``cell='gru'``) or, within ``flag_spelling`` (which the commands in ``experiments`` enter), as a command's
flags (``--batch-size 32``, ``--cell gru``); and values in as few digits as give them back (``shown``)."""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import shlex
from typing import Any

import jax


def got(value: Any) -> str:
    """``None``, or ``a str``: what a wrong argument is, in a sentence that names the type it must have."""
    name = type(value).__name__
    return "None" if value is None else f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def flag(name: str) -> str:
    """``--batch-size``: the command-line flag of the field ``name``."""
    return "--" + name.replace("_", "-")


_AS_FLAGS = contextvars.ContextVar("rnnjax_as_flags", default=False)


@contextlib.contextmanager
def flag_spelling():
    """Within it, messages name settings as the commands take them (``--batch-size 32``), not as ``Config``
    and the library's arguments do (``batch_size=32``): the commands in ``experiments`` enter it."""
    token = _AS_FLAGS.set(True)
    try:
        yield
    finally:
        _AS_FLAGS.reset(token)


def as_flags() -> bool:
    """Whether messages name settings as flags now (within ``flag_spelling``)."""
    return _AS_FLAGS.get()


def spelt(name: str, *value: Any) -> str:
    """A setting named as its user gave it: ``batch_size`` or ``batch_size=32`` (``cell='gru'``) from
    Python, ``--batch-size`` or ``--batch-size 32`` (``--cell gru``, ``--no-bidirectional``) within
    ``flag_spelling``."""
    if not value:
        return flag(name) if _AS_FLAGS.get() else name
    (v,) = value
    if not _AS_FLAGS.get():
        return f"{name}={_as_python(v)}"
    if isinstance(v, bool):
        return flag(name) if v else "--no-" + flag(name)[2:]
    return f"{flag(name)} {shlex.quote(v) if isinstance(v, str) else shown(v)}"      # as a shell takes it


def again(python: str = "train again in the same workdir") -> str:
    """What to do again once the cause is fixed: ``run the same command again`` within ``flag_spelling``;
    from Python, ``python`` (what the call was)."""
    return "run the same command again" if _AS_FLAGS.get() else python


def _as_python(value: Any) -> str:
    return said(value) if isinstance(value, str) else shown(value)


# A surrogate in a repr: ``\udcXX`` after an even count of backslashes (a backslash typed is doubled there).
_SURROGATE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def said(text: str) -> str:
    """``repr(text)``, a byte of an argument that is not UTF-8 (kept as a surrogate) as typed: ``'x\\xff'``,
    not ``'x\\udcff'``."""
    return _SURROGATE.sub(r"\1\\x\2", repr(text))


def shown(value) -> str:
    """A value as a flag takes it: a float in as few digits as give it back (``1``, ``0.1234567``)."""
    if isinstance(value, float):
        short = f"{value:g}"
        text = short if float(short) == value else repr(value)
        mantissa, e, exponent = text.partition("e")
        return f"{mantissa}e{int(exponent)}" if e else text.removesuffix(".0")     # 1e-7, not 1e-07
    return str(value)


def not_utf8(path: Any) -> str | None:
    """``path`` as typed (``\\xff``, not ``\\udcff``) where it holds bytes that are not UTF-8, kept as
    surrogates, which orbax's and XLA's C++ cannot take; ``None`` where it is UTF-8."""
    try:
        str(path).encode()
        return None
    except UnicodeEncodeError:
        return os.fsencode(str(path)).decode(errors="backslashreplace")


def choices(names) -> str:
    """Names to choose from, sorted, as words: quoted where one is not a plain word (``'mgu, v2'``)."""
    return ", ".join(n if re.fullmatch(r"[\w.+-]+", n) else said(n) for n in sorted(names))


def in_words(items) -> str:
    """Items as a sentence lists them: ``a``, ``a and b``, ``a, b and c``."""
    items = list(map(str, items))
    return ", ".join(items[:-1]) + " and " * (len(items) > 1) + "".join(items[-1:])


def listed(values) -> str:
    return ",".join(shown(v) for v in values)


def disagreement(name: str, wanted, have) -> str:
    """``lr=0.5 (it has 1)`` from Python; ``--lr 0.5 (it has 1)``, ``--bidirectional (it has
    --no-bidirectional)`` within ``flag_spelling``: a setting given against the value(s) a run has
    (``spelt``); ``--seeds 1,0 (it has 0,1, in that order)`` for runs reordered."""
    wanted, have = list(wanted), list(have)
    order = ", in that order" if sorted(wanted) == sorted(have) else ""
    if not _AS_FLAGS.get():
        def value(vs: list) -> str:
            return _as_python(vs[0]) if len(vs) == 1 else f"[{', '.join(map(_as_python, vs))}]"
        return f"{name}={value(wanted)} (it has {value(have)}{order})"
    if all(isinstance(v, bool) for v in (*wanted, *have)):
        def as_flag(v: bool) -> str:
            return spelt(name, v)
        return f"{','.join(map(as_flag, wanted))} (it has {','.join(map(as_flag, have))}{order})"
    typed = "--seeds" if name == "seed" and len(wanted) > 1 else flag(name)      # the alias for a list
    return f"{typed} {listed(wanted)} (it has {listed(have)}{order})"


def leaf_types(tree: Any) -> dict[str, tuple[tuple, str]]:
    """``{path: (shape, dtype)}`` of a tree's leaves (``jax.tree_util.keystr`` paths)."""
    return {jax.tree_util.keystr(p): (tuple(x.shape), str(x.dtype))
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def type_change(before: dict, after: dict) -> str | None:
    """The first leaf whose type differs between two ``leaf_types``, as a clause: ``['count'] int32[] before,
    float32[] after``; ``None`` if none does."""
    return next((f"{k or 'its state'} {said_type(before.get(k))} before, {said_type(after.get(k))} after"
                 for k in [*before, *after] if before.get(k) != after.get(k)), None)


def said_type(shape_dtype: tuple | None) -> str:
    """A ``leaf_types`` value as a message says it (``float32[16, 28]``), or ``none``."""
    return "none" if shape_dtype is None else f"{shape_dtype[1]}{list(shape_dtype[0])}"


def plural(n: int, noun: str) -> str:
    """``1 window``, ``1,000 windows``."""
    return f"{n:,} {noun}{'s' * (n != 1)}"
