"""Your own text at scale: preparing 1, 10 and 100 MB corpora, and training on the largest.

Command::

    python -m experiments.benchmark.corpus [--sizes 1,10,100] [--data timemachine.txt]

Runtime on a 2-core CPU: about 1 minute, more the first time (it generates the texts). Each text is
generated once into ``--out`` (default ``runs/bench-corpus``; a new or empty
folder, or an earlier run's, whose texts it reuses where their ``.sha1``
still matches): words of a Zipf-distributed vocabulary of 30,000
made-up words, capitals, digits, punctuation, non-ASCII letters, lines.
Each preparation runs in a fresh process (``rnnjax.corpus.Corpus``, a fresh
cache, then the same again: the cache hit), which reports its seconds and its
peak resident memory. Then one fresh process trains d2l's model and batch as
``fit`` does (one CPU device per core, 10 steps a call) on the 100 MB text
(raw characters, and d2l's 28 tokens; ``--steps-per-epoch``'s random
windows) and on the Time Machine if ``--data`` or ``$RNNJAX_TIMEMACHINE``
gives it, in interleaved rounds (A B C A B C ...): ms a step, median (min-max).
It says first what it makes, on which devices and where it writes; one run
writes ``--out`` at a time. It rewrites ``corpus.json`` after each part
(``"complete": false`` until the last: a stopped or failed run keeps what it
measured); a stop (exit 128 + signal) or failure (exit 1) says so in one line
and removes a text cut short. Figures and the command that made them are in
``docs/performance.md`` ("Your own text").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import stat
import sys
import time
from pathlib import Path

from experiments import stopping
from experiments.benchmark.corpus_parts import devices, made, prepare, read_head, train
from experiments.benchmark.outputs import Stop, check_writable
from experiments.parsing import Parser, check_names, check_output
from rnnjax import spelling
from rnnjax.lock import LOCKFILE, WorkdirError, lock
from rnnjax.workdir import write_atomically

MAX_MB = 4096


def _ours(path: Path) -> bool:
    """Whether ``path`` is a file this benchmark writes into ``--out``: a text with its SHA-1 beside it (or
    beside an earlier version's corpus.json, which wrote none), that SHA-1, a write cut short, corpus.json."""
    try:        # regular files only: a FIFO would hang a read, a folder fail the write
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        if path.name == LOCKFILE:       # rnnjax.lock's, as --out is written: empty, or its holder's pid
            pid = read_head(path, 32).strip()
            return path.stat().st_size < 32 and (pid == b"" or pid.isdigit())
        if re.fullmatch(r"(text-\d+mb\.(txt|sha1)|corpus\.json)(\.tmp)?(\.tmp)?", path.name) is None:
            return False
        if path.name.endswith((".tmp", ".sha1")):
            return True
        if path.name.endswith(".txt"):
            return path.with_suffix(".sha1").is_file() or _ours(path.parent / "corpus.json")
        return {"machine", "prepare", "train"} <= json.loads(path.read_text()).keys()
    except (OSError, ValueError, AttributeError):
        return False


def _fresh(what: str, *args: str, env: dict) -> dict:
    """What this module prints, run with ``args`` in a fresh process; ``ValueError`` in one line if not."""
    out = stopping.run_child([sys.executable, "-m", "experiments.benchmark.corpus", *args], env=env)
    last = (out.stderr.strip().splitlines() or ["it said nothing"])[-1]
    if out.returncode:          # the child's own "error: ..." as it is, else its last line (a traceback's)
        raise ValueError(last.removeprefix("error: ") if last.startswith("error: ") else
                         f"{what} failed in a fresh process ({stopping.ended(out.returncode)}): {last}")
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise ValueError(f"{what} in a fresh process printed no result ({last})") from None


def parser() -> Parser:
    p = Parser(prog="python -m experiments.benchmark.corpus", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1,10,100", help="text sizes in MB (default 1,10,100)")
    p.add_argument("--tokens", default="char,word", help="token kinds prepared (default char,word)")
    p.add_argument("--steps", type=int, default=100,
                   help="steps a round of the training runs, a multiple of 10 (default 100)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--data", help="timemachine.txt, to train on it alike (else $RNNJAX_TIMEMACHINE)")
    p.add_argument("--out", default="runs/bench-corpus", help="where the texts and corpus.json go: a new or "
                   "empty folder, or an earlier run's (default runs/bench-corpus); one run at a time")
    p.add_argument("--prepare", nargs=2, metavar=("PATH", "TOKEN"), help=argparse.SUPPRESS)
    p.add_argument("--train", nargs=2, metavar=("PATH", "TIMEMACHINE"), help=argparse.SUPPRESS)
    p.add_argument("--devices", action="store_true", help=argparse.SUPPRESS)
    return p


class _Stop(Stop):
    """The benchmark's stop (one line, 128 + signal, what corpus.json keeps), removing a text cut short."""

    def __init__(self, out: Path):
        super().__init__(out / "corpus.json")
        self.out, self.removed, self.held, self.began = out, [], False, False

    def kept(self) -> str:          # the texts are not "nothing": only corpus.json may be as it was
        cut = f"; {', '.join(self.removed)}, cut short, removed" if self.removed else ""
        return f"{super().kept().replace('nothing was written', 'no figure was written')}; the texts made " \
               f"whole stay{cut}"

    def remove_partial(self) -> None:
        """Removes a text cut short while this run holds --out's lock: never the one another run makes."""
        if self.held:
            self.removed = _remove_partial(self.out)

    def __call__(self, signum, frame):
        self.remove_partial()
        super().__call__(signum, frame)


def _remove_partial(out: Path) -> list[str]:
    """Removes what a stopped or killed run was writing (``.tmp``: never read, made anew); their names."""
    removed = []
    for f in sorted(out.glob("*.tmp")):
        if _ours(f):
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f.name)
    return removed


@spelling.flag_spelling()
def main(argv=None) -> int:
    previous = stopping.handle(stopping.stopped_while_loading)
    try:
        p = parser()
        args = p.parse_args(argv)
        try:
            if args.prepare or args.train or args.devices:     # a part, in a fresh process: JSON, one line
                print(json.dumps(prepare(*args.prepare) if args.prepare else devices() if args.devices else
                                 train(args.train[0], args.train[1] or None, args.steps, args.rounds)))
                return 0
            sizes, tm = check_args(args)
            out = Path(args.out)
            check_writable(f"--out {out}", out)
            found = _fresh("checking the devices", "--devices", env=dict(os.environ))
        except (ValueError, WorkdirError) as e:        # DataError and an unusable $JAX_PLATFORMS too
            stopping.tell(f"error: {e}")
            return 1
        stop = _Stop(out)
        stopping.handle(stop)
        try:
            with stopping.guarded_stdout(), lock(out, flag="--out"):
                try:
                    stop.held = stop.began = True
                    check_out(args.out)         # again, now that it is held
                    _remove_partial(out)        # a killed run's
                    measure(args, sizes, tm, out, found)
                except Exception:
                    stop.remove_partial()
                    raise
                finally:
                    stop.held = False
        except (BrokenPipeError, stopping.OutputError) as e:       # stdout's, not --out's
            if isinstance(e, BrokenPipeError):
                return stopping.output_closed(stop.kept())
            stopping.tell(f"Stopped: {e.strerror} (writing the output); {stop.kept()}.")
            return 1
        except (ValueError, OSError, WorkdirError) as e:     # a child failed, a full disk: the figures stay
            why = e if isinstance(e, (ValueError, WorkdirError)) else f"cannot write {out} ({e.strerror})"
            kept = f"; {stop.kept()}" if stop.began else ""      # not of another run's --out, held
            stopping.tell(f"error: {str(why).rstrip('.')}{kept}.")
            return 1
        return 0
    finally:
        stopping.put_back(previous)


def measure(args, sizes: list[int], tm: str, out: Path, found: dict) -> None:
    """Makes the texts, prepares and trains on them, rewriting ``out/corpus.json`` whole after each part."""
    cpu = platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), cpu)
    result = {"machine": f"{cpu}, {os.cpu_count()} cores", "devices": found,
              "date": time.strftime("%Y-%m-%d"), "prepare": {}, "train": {},
              "complete": False}        # True once every part is in: a stopped or failed run's stays False

    def save():
        write_atomically(out / "corpus.json", json.dumps(result, indent=1) + "\n")
    earlier = "an earlier run's, whose texts it reuses" if any(out.glob("text-*")) else "new"
    also = f"and on the Time Machine {tm}" if tm else "(not on the Time Machine: no --data)"
    print(f"{', '.join(f'{s} MB' for s in sizes)} text(s), {args.tokens.replace(',', ' and ')} tokens; "
          f"training on the largest {also} on {found['count']} {found['kind']} "
          f"device{'s' * (found['count'] > 1)}; writing to {out} ({earlier})", flush=True)
    for size in sizes:
        path, t0 = out / f"text-{size}mb.txt", time.perf_counter()
        if made(path, size):
            print(f"generated {path} in {time.perf_counter() - t0:.1f} s", flush=True)
        for token in args.tokens.split(","):
            with stopping.scratch() as cache:
                fresh = {**os.environ, "RNNJAX_CACHE": cache}
                cold = _fresh(f"preparing {path}", "--prepare", str(path), token, env=fresh)
                warm = _fresh(f"preparing {path} again", "--prepare", str(path), token, env=fresh)
            result["prepare"][f"{size}MB {token}"] = {"cold": cold, "cached": warm}
            save()
            print(f"{size} MB, {token}s: {cold['tokens']:,} tokens, vocabulary {cold['vocab']:,}; prepared "
                  f"in {cold['seconds']:.2f} s (cached: {warm['seconds']:.2f} s), peak RSS "
                  f"{cold['peak_rss_mb']:.0f} MB (after imports {cold['rss_before_mb']:.0f} MB; cached "
                  f"{warm['peak_rss_mb']:.0f} MB)",
                  flush=True)
    largest = out / f"text-{max(sizes)}mb.txt"
    with stopping.scratch() as cache:        # the user's cache keeps no generated text
        result["train"] = _fresh(f"training on {largest}", "--train", str(largest), tm, "--steps",
                                 str(args.steps), "--rounds", str(args.rounds),
                                 env={**os.environ, "RNNJAX_CACHE": cache})
    result["complete"] = True
    save()
    for name, r in result["train"]["runs"].items():
        print(f"train on the {name if name == 'Time Machine' else f'{max(sizes)} MB text, {name}'} "
              f"({r['tokens']:,} tokens on each device, vocabulary {r['vocab']}): {r['ms_per_step']:.2f} ms "
              f"a step ({r['ms_min']:.2f}-{r['ms_max']:.2f}), {r['steps_per_s']:.0f} steps/s; loaded in "
              f"{r['load_s']:.1f} s", flush=True)
    print(f"peak RSS of the training process: {result['train']['peak_rss_mb']:.0f} MB; wrote "
          f"{out / 'corpus.json'}", flush=True)


def check_out(typed: str) -> Path:
    """``ValueError`` unless ``--out`` (``typed``) is, or can be made, a folder holding only what this
    benchmark writes (an earlier run's)."""
    out = Path(typed)
    check_output("--out", out)
    try:
        first = next((f for f in (out, *out.parents) if f.exists() or f.is_symlink()), None)
        if not typed or first is None or not first.is_dir():   # the folder, or its nearest parent, a file
            raise ValueError(f"--out must be a folder, got {stopping.said(typed)}.")
        theirs = sorted(f.name for f in out.iterdir() if not _ours(f)) if out.is_dir() else []
    except OSError as e:            # a name too long, a folder it may not read
        raise ValueError(f"--out {typed} cannot be used ({e.strerror}).") from None
    if theirs:
        raise ValueError(f"--out {typed} holds {', '.join(theirs[:3])}{', ...' if theirs[3:] else ''}, "
                         "which this benchmark did not write (or which is damaged); move it aside (an "
                         "earlier run's texts are reused), or give a new or empty folder.")
    return out


def check_args(args) -> tuple[list[int], str]:
    """Before any text is made: ``ValueError`` in one sentence, else the sizes in MB and the Time Machine's
    path (verified; ``""``: none given)."""
    from rnnjax.source import timemachine_path
    from rnnjax.train import STEPS_PER_CALL
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        sizes = []
    if not sizes or not all(1 <= s <= MAX_MB for s in sizes) or len(set(sizes)) < len(sizes):
        raise ValueError(f"--sizes must be distinct whole numbers of MB from 1 to {MAX_MB:,} separated by "
                         f"commas, got {stopping.said(args.sizes)}.")
    tokens = args.tokens.split(",")
    if not tokens or not set(tokens) <= {"char", "word"} or len(set(tokens)) < len(tokens):
        raise ValueError(f"--tokens must be char, word or char,word, got {stopping.said(args.tokens)}.")
    if args.steps < STEPS_PER_CALL or args.steps % STEPS_PER_CALL:      # trained as fit does: whole calls
        raise ValueError(f"--steps must be a positive multiple of {STEPS_PER_CALL}, the steps of a compiled "
                         f"call, got {args.steps}.")
    if args.rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {args.rounds}.")
    for flag, value, high in (("--steps", args.steps, 100_000), ("--rounds", args.rounds, 1000)):
        if value > high:            # the benchmark's limits (its LIMITS): more is a typo's hours of measuring
            raise ValueError(f"{flag} must be at most {high:,}, got {value:,}.")
    if args.data == "":         # '' would silently mean none
        raise ValueError("--data is empty; give a path (a shell variable that was not set?).")
    check_out(args.out)
    tm = args.data or os.environ.get("RNNJAX_TIMEMACHINE") or ""
    if tm:
        check_names("--data", tm)       # its lines name it
    return sizes, str(timemachine_path(tm)) if tm else ""       # DataError, a ValueError


if __name__ == "__main__":
    stopping.run(main)
