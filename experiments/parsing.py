"""The experiments' command lines: argparse, stricter (``Parser``). No JAX here: the commands parse their
flags before it loads."""

from __future__ import annotations

import argparse
import difflib
import errno
import os
import shlex
import sys
from pathlib import Path

from experiments import stopping

NAME_MAX = 255      # bytes in one name, on every common file system


class Parser(argparse.ArgumentParser):
    """Whole flag names only (a prefix, ``--step`` for ``--steps-per-epoch``, is an error, not a guess),
    each flag once (not the last one silently), errors in one line."""

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)

    def parse_known_args(self, argv=None, namespace=None):
        self._words = list(sys.argv[1:] if argv is None else argv)       # for error's hints
        args = super().parse_known_args(argv, namespace)
        seen: dict[str, str] = {}           # a flag given twice, or with its alias: not the last one silently
        for token in self._words:
            if token == "--":
                break
            action = self._option_string_actions.get(token.split("=", 1)[0])
            if action is None or not action.option_strings or action.dest == "help":
                continue
            typed = token.split("=", 1)[0]
            if action.dest in seen:
                self.error(f"{typed} is given twice; give it once" if seen[action.dest] == typed else
                           f"{seen[action.dest]} and {typed} set the same setting; give one")
            seen[action.dest] = typed
        return args

    def error(self, message: str):
        """argparse's own errors as ours are: one line (not the usage block), and where to look (for a flag
        misspelt, the likeliest one meant)."""
        unknown = message.removeprefix("unrecognized arguments: ").split() if message.startswith(
            "unrecognized arguments: ") else []
        flags = [t.split("=", 1)[0] for t in unknown if t.startswith("--")]
        shown = {o: a for o, a in self._option_string_actions.items() if a.help != argparse.SUPPRESS}
        meant = ([o for o in shown if o.startswith(flags[0])] or difflib.get_close_matches(
            flags[0], list(shown), 1, 0.75)) if flags and flags[0] not in shown else []   # a prefix, a typo
        meant = meant[:1] if len({id(shown[o]) for o in meant}) == 1 else []      # of one flag (its aliases)
        where = f"did you mean {meant[0]}? see" if meant else "see"
        message += self._dashed(message)
        self.exit(2, stopping.argparse_as_typed(f"error: {message} ({where} {self.prog} --help)\n"))

    def _dashed(self, message: str) -> str:
        """For a value argparse took for a flag, as it starts with '-' (``--predict -x``): how to give it."""
        names = message.removeprefix("argument ").removesuffix(": expected one argument").split("/")
        words = getattr(self, "_words", [])
        if message.endswith(": expected one argument"):
            for flag, value in zip(words, words[1:]):
                # Not a flag (a value forgotten), nor one argparse takes (a space in it), nor unprintable.
                known = value == "--" or value.split("=", 1)[0] in self._option_string_actions
                if flag in names and value.startswith("-") and " " not in value and value.isprintable() \
                        and not known:
                    typed = shlex.quote(f"{flag}={value}")
                    return f"; a value that starts with '-' is given after '=': {typed}"
        return ""


def check_names(flag: str, path: str | Path) -> None:
    """``ValueError`` in one sentence if a name in ``path`` (given as ``flag``) is longer than a file system
    takes (Python's own checks of it, ``Path.exists``, would raise), or has bytes that are not UTF-8 (the
    lines that name it could not be printed on a UTF-8 terminal)."""
    try:
        str(path).encode()
    except UnicodeEncodeError:          # undecodable bytes, kept as surrogates
        raise ValueError(f"{flag} {stopping.as_typed(str(path))} has bytes that are not UTF-8 in its path; "
                         "give one without them.") from None
    longest = max((len(os.fsencode(part)) for part in Path(path).parts), default=0)
    if longest > NAME_MAX:
        raise ValueError(f"{flag} has a name of {longest} bytes in its path; the system takes at most "
                         f"{NAME_MAX}.")


def check_link(flag: str, path: Path, kind: str = "folder") -> None:
    """``ValueError`` in one sentence if ``path`` (given as ``flag``, a ``kind``) is a link that leads
    nowhere: to nothing, or round a loop of links."""
    if not path.is_symlink():
        return
    try:
        os.stat(path)
        return
    except OSError as e:
        loop = e.errno == errno.ELOOP
    raise ValueError(f"{flag} {path} is {'in a loop of links' if loop else 'a link to nothing'}; give a new "
                     f"{kind}.")


def check_outside_runs(flag: str, path: Path) -> None:
    """``ValueError`` in one sentence if ``path`` (given as ``flag``) is in a training run's checkpoints
    folder: the run deletes from it, and a restore or resume reads a folder of digits there as a damaged
    checkpoint, setting it aside."""
    from rnnjax.workdir import in_checkpoints       # here: the device check parses flags without JAX
    found = in_checkpoints(Path(path))
    if found:
        raise ValueError(f"{flag} {path} is {found}, which it reads as its own and deletes as it saves; "
                         "choose one outside it.")


def check_output(flag: str, path: str | Path, kind: str = "folder") -> None:
    """The checks of a path a command writes to (given as ``flag``, a ``kind``) that need no file opened:
    ``check_names``, ``check_link``, ``check_outside_runs``."""
    check_names(flag, path)
    check_link(flag, Path(path), kind)
    check_outside_runs(flag, Path(path))


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: distinct whole numbers in [0, 2**32), comma-separated; else ``ValueError`` naming the
    mistake."""
    try:
        seeds = [int(s) for s in text.split(",")] if text.strip() else []
    except ValueError:
        raise ValueError(f"--seeds takes whole numbers separated by commas, got {stopping.said(text)}."
                         ) from None
    if not seeds:
        raise ValueError(f"--seeds needs at least one seed, got {stopping.said(text)}.")
    bad = [s for s in seeds if not 0 <= s < 2 ** 32]
    if bad:
        raise ValueError(f"--seeds must be in [0, 2**32), got {bad[0]}.")
    twice = [s for k, s in enumerate(seeds) if s in seeds[:k]]
    if twice:     # the same run twice, and results.json has one entry per seed
        raise ValueError(f"--seeds names seed {twice[0]} twice; give each seed once.")
    return seeds
