"""Per-epoch metrics as JSON lines, and d2l's perplexity plot."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from pathlib import Path

from rnnjax.config import SWEEPABLE
from rnnjax.spelling import spelt
from rnnjax.stored import CONFIG, METRICS as FILENAME, PLOT, STEPS  # a run's records, moved aside together
from rnnjax.workdir import write_atomically

# What a record needs beside its epoch (what the plot, the summary and the progress lines read).
NEEDED = ("train_ppl", "val_ppl")
# A record's own keys beside its validation's (val_*): a step's metrics, logged by name, may not take them.
RECORD_OWN = ("epoch", "step", "run", *SWEEPABLE, "stopped", "seconds",
              "train_loss", "train_ppl", "train_bpc")


def perplexity(loss: float) -> float:
    """``exp(loss)``; ``inf`` past float range (a diverging run is not an exception here)."""
    return math.exp(loss) if loss < 709.0 else math.inf


def ppl_text(value: float) -> str:
    """A perplexity to two decimals; a diverging run's (up to 1e38) in three digits."""
    return f"{value:.2f}" if abs(value) < 1e6 else f"{value:.3g}"


def ppls_text(record: dict, key: str) -> str:
    """``record[key]`` as ``ppl_text``; of runs trained together (a ``runs`` list), their lowest to their
    highest: a mean would show one diverging run's alone."""
    values = [r[key] for r in record["runs"]] if "runs" in record else [record[key]]
    values = [math.inf if v is None or math.isnan(v) else v for v in values]
    lo, hi = min(values), max(values)
    return ppl_text(lo) if lo == hi else f"{ppl_text(lo)} to {ppl_text(hi)}"


def bits_per_character(loss: float) -> float:
    """The loss in bits, ``log2(perplexity)``: what the model would compress the text to, per character."""
    return loss / math.log(2.0)


def add_steps(sums: dict, call_metrics: list[dict]) -> dict:
    """``sums`` (an epoch's steps so far, ``{}`` for none) plus every step of ``train_steps``' stacked
    metrics (one dict a call), per key, in step order: what a checkpoint in mid-epoch keeps. Once there are
    sums, a key they lack (saved before the metric existed) stays out for the rest of that epoch."""
    keys = [k for k in call_metrics[0] if not sums or k in sums] if call_metrics else list(sums)
    out = {k: float(sums.get(k, 0.0)) for k in keys}
    for m in call_metrics:
        for k in keys:
            for x in m[k]:
                out[k] += float(x)
    return out


def train_name(key: str) -> str:
    """The record's name of a step's metric ``key``: itself, a ``<key>_sum`` as ``train_<key>`` (``loss_sum``:
    ``train_loss``)."""
    key = str(key)
    return "train_" + key.removesuffix("_sum") if key.endswith("_sum") else key


# The keys a validation logs as ``val_<key>`` itself (and none, nor its count): an evaluation's own metrics
# may not take them.
VAL_OWN = ("loss", "ppl", "bpc", "count", "")


def val_name(key: str) -> str:
    """The record's name of an evaluation's ``key``: ``val_<key>``, a ``<key>_sum`` as ``val_<key>`` too
    (``loss_sum``: ``val_loss``)."""
    return "val_" + str(key).removesuffix("_sum")


def epoch_record(epoch: int, step: int, train: dict, steps: int, val: dict, seconds: float) -> dict:
    """One line of ``metrics.jsonl`` from the sums of an epoch's ``steps`` (``add_steps``) and of its
    validation: the mean losses (nats), their perplexities and bits per character; any other metric a step
    reports, its mean over the epoch's steps (``grad_norm``: the global gradient norm before clipping), a
    ``<key>_sum`` as ``train_<key>``, per token (over ``count``, as ``loss_sum`` gives ``train_loss``); any
    other the validation reports, as ``val_<key>``: a ``<key>_sum`` per token, another as it is;
    ``seconds``, the epoch's wall time, its training and validation (the first epoch's with compilation;
    a resumed epoch's from the resume)."""
    train_loss = train["loss_sum"] / train["count"]
    means = {train_name(k): v / train["count"] if str(k).endswith("_sum") else v / steps
             for k, v in train.items() if k not in ("loss_sum", "count")}
    val = {val_name(k): v / val["count"] if str(k).endswith("_sum") else v
           for k, v in val.items() if k != "count"}
    return {"epoch": epoch, "step": step,
            "train_loss": train_loss, "train_ppl": perplexity(train_loss),
            "train_bpc": bits_per_character(train_loss), **means,
            "val_loss": val["val_loss"], "val_ppl": perplexity(val["val_loss"]),
            "val_bpc": bits_per_character(val["val_loss"]), **val, "seconds": seconds}


class MetricsError(ValueError):
    """``metrics.jsonl`` holds something that is not this run's log; the message names the file and line."""


class MetricsLog:
    """``metrics.jsonl``: one JSON object per epoch (and run), appended as epochs finish.

    Each record is written as one whole line in a single ``write``; non-finite
    values are ``null`` (strict JSON has no ``NaN``; one found is read so),
    read back as ``nan``, rnnjax's ``train_ppl``/``val_ppl`` as ``inf`` (a
    loss past float range; a NaN training loss writes no record). Reading
    checks every line: a torn last line (a crash or a full disk mid-write) is
    dropped with a warning, anything else that is not a record (an epoch,
    ``NEEDED``), epochs out of order, or a file that is not a regular file (a
    FIFO would hang) is a ``MetricsError``. Only the writer process writes;
    everyone can read. (``rnnjax.step_lines.StepsLog``: the same of steps.)
    """
    NAME, KIND, WHAT = FILENAME, "a metrics log", f"a metrics record (an epoch, {', '.join(NEEDED)})"
    ORDER, NEEDED = "epoch", NEEDED     # what orders a run's records; numbers (null: inf) each record has

    def __init__(self, path: str | Path, writer: bool = True, warn=None):
        self.path, self.writer = Path(path), writer
        self.warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))

    def read(self, missing_ok: bool = False) -> list[dict]:
        """The records; a file that does not exist holds none where ``missing_ok`` (a new workdir's), and is
        a ``MetricsError`` where not: a path mistyped is not an empty log."""
        if not missing_ok and not os.path.exists(self.path):
            raise MetricsError(f"{self.path} does not exist.")
        return self._parse(self._text())

    def _text(self) -> str:
        try:
            mode = os.stat(self.path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return ""
        except OSError as e:
            raise MetricsError(f"{self.path} cannot be read ({e.strerror}).") from None
        if stat.S_ISDIR(mode) and (self.path / self.NAME).is_file():         # a workdir given for its log
            raise MetricsError(f"{self.path} is a folder, a workdir: read its log, {self.path / self.NAME}.")
        if not stat.S_ISREG(mode):
            raise MetricsError(f"{self.path} is not a regular file; move it aside to resume, or use a new "
                               f"{spelt('workdir')}.")
        try:
            return self.path.read_text()
        except OSError as e:
            raise MetricsError(f"{self.path} cannot be read ({e.strerror or e}).") from None
        except UnicodeDecodeError as e:
            raise MetricsError(f"{self.path} is not {self.KIND} (byte 0x{e.object[e.start]:02x} at offset "
                               f"{e.start} is not UTF-8); move it aside to resume, or use a new "
                               f"{spelt('workdir')}.") from None

    def _parse(self, text: str) -> list[dict]:
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            torn = number == len(lines) and not text.endswith("\n")      # the last line, unterminated
            try:
                record = json.loads(line, parse_constant=lambda constant: None)     # NaN, Infinity: null
            except (ValueError, RecursionError):       # RecursionError: brackets nested thousands deep
                record = None
            if torn and not (isinstance(record, dict) and self.ORDER in record):
                self.warn(f"{self.path}: dropped a torn last line ({len(line)} characters of an unfinished "
                          "record).")
                break
            if not (isinstance(record, dict)
                    and all(type(record.get(k)) is int for k in ("epoch", self.ORDER))
                    and type(record.get("run", 0)) is int and record.get("run", 0) >= 0
                    and all(k in record and _number_or_null(record[k]) for k in self.NEEDED)):
                steps = isinstance(record, dict) and "train_loss" in record and self.ORDER == "epoch"
                raise MetricsError(f"{self.path}, line {number}, is not {self.WHAT}: {line[:60]!r}. " + (
                    "A log of steps is read by rnnjax.step_lines.StepsLog." if steps else
                    f"Move the file aside to resume, or use a new {spelt('workdir')}."))
            records.append({k: v if v is not None else math.inf if k in NEEDED else math.nan
                            for k, v in record.items()})
        _check_order(records, self.path, self.ORDER)
        return records

    def truncate(self, epochs: int) -> None:
        """Keeps the records of the first ``epochs`` epochs (``ORDER``'s): those a resumed run does not redo
        (and drops a torn last line)."""
        if not self.writer or not self.path.exists():
            return
        text = self._text()
        records = self._parse(text)
        kept = [r for r in records if r[self.ORDER] <= epochs]
        strict = "NaN" not in text and "Infinity" not in text
        if len(kept) < len(records) or text and not text.endswith("\n") or not strict:   # or a torn line
            write_atomically(self.path, "".join(map(_line, kept)))

    def append(self, *records: dict) -> None:
        """Appends ``records`` in one write; ``MetricsError`` in one sentence if the disk is full (the last
        line is then torn or absent, which resuming mends)."""
        if not self.writer or not records:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:        # one write of the whole line
                f.write("".join(map(_line, records)))
                f.flush()
        except OSError as e:
            self._unwritten(e, records)

    def _unwritten(self, e: OSError, records: tuple[dict, ...]) -> None:
        raise MetricsError(f"{self.path} cannot be written ({e.strerror or e}); training stopped at epoch "
                           f"{records[0].get('epoch')}. Free space (or fix the cause) and run the same "
                           "command to resume.") from None


def _number_or_null(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def aside(workdir: Path, records: bool = True) -> tuple[tuple[Path, Path], ...]:
    """Where a new run moves an earlier run's records (its epochs' and steps') with their settings (if
    ``records``) and plot, those there, as (from, to) pairs: ``metrics.N.jsonl``, ``steps.N.jsonl``,
    ``config.N.json`` and ``ppl.N.png`` for the first N free for all."""
    def numbered(name: str, n: int) -> Path:
        return workdir / Path(name).with_suffix(f".{n}{Path(name).suffix}")
    names = (FILENAME, STEPS, CONFIG, PLOT) if records else (PLOT,)
    n = 1
    while any(numbered(name, n).exists() for name in (FILENAME, STEPS, CONFIG, PLOT)):
        n += 1
    return tuple((workdir / name, numbered(name, n)) for name in names if (workdir / name).exists())


def check_records_runs(records: list[dict], num_runs: int, path: Path) -> None:
    """``MetricsError`` unless every record is of one of the ``num_runs`` runs trained together (0: a
    single run's records name none)."""
    for number, rec in enumerate(records, 1):
        run = rec.get("run")
        if (run is None) != (num_runs == 0) or (run is not None and run >= num_runs):
            held = f"{num_runs} run{'s' * (num_runs != 1)} trained together" if num_runs else "a single run"
            raise MetricsError(f"{path}, record {number}, is of {'no run' if run is None else f'run {run}'}, "
                               f"and the workdir holds {held}: it was edited, or is another run's. Move the "
                               "file aside to resume (its records go; the checkpoints are kept).")


def lost_epochs(records: list[dict], epochs: int, stopped: list, num_runs: int) -> str:
    """The first ``epochs`` epochs (checkpointed) that ``records`` lack, of a run still training (of
    ``num_runs`` trained together, 0 for a single run: ``stopped`` says why each stopped, or ``None``), in
    words; '' if none."""
    stopped = stopped or [None] * num_runs
    live = [why is None for why in (stopped if num_runs else [None])]
    missing = sorted({e for alive in live if alive for e in range(1, epochs + 1)}
                     - {rec["epoch"] for rec in records if not num_runs or live[rec.get("run", 0)]})
    if not missing:
        return ""
    spans, first = [], missing[0]
    for a, b in zip(missing, missing[1:] + [None]):
        if b != a + 1:
            spans.append(str(a) if a == first else f"{first}-{a}")
            first = b
    return f"the records of epoch(s) {', '.join(spans)}"


def _line(record: dict) -> str:
    """``record``'s line, non-finite floats as ``null``: strict JSON has no ``Infinity`` or ``NaN``."""
    strict = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    return json.dumps(strict, allow_nan=False) + "\n"


def _check_order(records: list[dict], path: Path, key: str) -> None:
    """Epochs (``key``: steps) in order, each once (per run, for many runs in one workdir)."""
    last: dict = {}
    for r in records:
        run = r.get("run")
        if r[key] <= last.get(run, 0):
            where = "" if run is None else f" of run {run}"
            raise MetricsError(f"{path} has {key} {r[key]}{where} after {key} {last[run]}: two runs "
                               "wrote to this workdir, or it was edited. Move the file aside to resume (its "
                               f"records go; the checkpoints are kept), or use a new {spelt('workdir')}.")
        last[run] = r[key]
