"""Per-epoch metrics as JSON lines, and d2l's perplexity plot."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

FILENAME = "metrics.jsonl"
PLOT = "ppl.png"


def perplexity(loss: float) -> float:
    """``exp(loss)``; ``inf`` past float range (a diverging run is not an exception here)."""
    return math.exp(loss) if loss < 709.0 else math.inf


def bits_per_character(loss: float) -> float:
    """The loss in bits, ``log2(perplexity)``: what the model would compress the text to, per character."""
    return loss / math.log(2.0)


def epoch_record(epoch: int, step: int, train_loss: float, val_loss: float, seconds: float) -> dict:
    """One line of ``metrics.jsonl``: the mean losses (nats), their perplexities and bits per character."""
    return {"epoch": epoch, "step": step,
            "train_loss": train_loss, "train_ppl": perplexity(train_loss),
            "train_bpc": bits_per_character(train_loss),
            "val_loss": val_loss, "val_ppl": perplexity(val_loss), "val_bpc": bits_per_character(val_loss),
            "seconds": seconds}


class MetricsError(ValueError):
    """``metrics.jsonl`` holds something that is not this run's log; the message names the file and line."""


def _finite_or_null(record: dict) -> dict:
    """Non-finite floats as ``None`` (JSON ``null``): strict JSON has no ``Infinity`` or ``NaN``."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


class MetricsLog:
    """``metrics.jsonl``: one JSON object per epoch (and run), appended as epochs finish.

    Each record is written as one whole line in a single ``write``; non-finite
    values are ``null``. Reading checks every line: a torn last line (a crash
    or a full disk mid-write) is dropped with a warning, anything else that is
    not a record, or epochs out of order, is a ``MetricsError``. Only the writer
    process writes; everyone can read.
    """

    def __init__(self, path: str | Path, writer: bool = True, warn=None):
        self.path, self.writer = Path(path), writer
        self.warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))

    def read(self) -> list[dict]:
        return self._parse(self._text())

    def _text(self) -> str:
        if not self.path.exists():
            return ""
        try:
            return self.path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise MetricsError(f"{self.path} cannot be read ({e}).") from None

    def _parse(self, text: str) -> list[dict]:
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            torn = number == len(lines) and not text.endswith("\n")      # the last line, unterminated
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if torn and not (isinstance(record, dict) and "epoch" in record):
                self.warn(f"{self.path}: dropped a torn last line ({len(line)} characters of an unfinished "
                          "record); the checkpointed epochs are all there.")
                break
            if not (isinstance(record, dict) and isinstance(record.get("epoch"), int)):
                raise MetricsError(f"{self.path}, line {number}, is not a metrics record: {line[:60]!r}. "
                                   "Move the file aside to resume, or use a new --workdir.")
            records.append(record)
        _check_order(records, self.path)
        return records

    def truncate(self, epochs: int) -> None:
        """Keeps the records of the first ``epochs`` epochs: those a resumed run does not redo (and drops a
        torn last line)."""
        if not self.writer or not self.path.exists():
            return
        text = self._text()
        records = self._parse(text)
        kept = [r for r in records if r["epoch"] <= epochs]
        if len(kept) == len(records) and text.endswith("\n"):
            return
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

    def append(self, record: dict) -> None:
        if not self.writer:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(_finite_or_null(record), allow_nan=False) + "\n"
        with open(self.path, "a") as f:        # one write of the whole line
            f.write(line)
            f.flush()


def _check_order(records: list[dict], path: Path) -> None:
    """Epochs in order, each once (per run, for many runs in one workdir)."""
    last: dict = {}
    for r in records:
        run = r.get("run")
        if r["epoch"] <= last.get(run, 0):
            where = "" if run is None else f" of run {run}"
            raise MetricsError(f"{path} has epoch {r['epoch']}{where} after epoch {last[run]}: two runs "
                               "wrote to this workdir, or it was edited. Use a new --workdir.")
        last[run] = r["epoch"]


def plot_perplexity(records: list[dict], path: str | Path) -> Path:
    """d2l's figure: train and val perplexity against epoch, saved headless; records with a ``run``
    field (``rnnjax.runs``) get a color per run, train solid and val dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted({r.get("run") for r in records}, key=lambda run: -1 if run is None else run)
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    for i, run in enumerate(runs):
        mine = [r for r in records if r.get("run") == run]
        epochs, color = [r["epoch"] for r in mine], f"C{i % 10}"
        name = "" if run is None else f" (run {run})"
        ax.plot(epochs, [r["train_ppl"] for r in mine], "-", color=color, label=f"train_ppl{name}")
        ax.plot(epochs, [r["val_ppl"] for r in mine], "--", color=color, label=f"val_ppl{name}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6 if len(runs) > 2 else None)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
