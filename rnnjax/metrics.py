"""Per-epoch metrics as JSON lines, and d2l's perplexity plot."""

from __future__ import annotations

import json
import math
import os
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
            "train_loss": train_loss, "train_ppl": perplexity(train_loss), "train_bpc": bits_per_character(train_loss),
            "val_loss": val_loss, "val_ppl": perplexity(val_loss), "val_bpc": bits_per_character(val_loss),
            "seconds": seconds}


class MetricsLog:
    """``metrics.jsonl``: one JSON object per epoch, appended as epochs finish.

    Only the writer process writes; everyone can read.
    """

    def __init__(self, path: str | Path, writer: bool = True):
        self.path, self.writer = Path(path), writer

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, epochs: int) -> None:
        """Keeps the records of the first ``epochs`` epochs: those a resumed run does not redo."""
        records = self.read()
        kept = [r for r in records if r["epoch"] <= epochs]
        if not self.writer or len(kept) == len(records):
            return
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

    def append(self, record: dict) -> None:
        if not self.writer:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


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
