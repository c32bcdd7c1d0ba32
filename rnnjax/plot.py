"""d2l's figure of a run: train and val perplexity against epoch (the CLI's ``ppl.png``), of runs trained
together a color per run, named by the settings that differ."""

from __future__ import annotations

import math
from pathlib import Path

from rnnjax.config import SWEEPABLE
from rnnjax.metrics import NEEDED
from rnnjax.spelling import shown
from rnnjax.workdir import write_atomically


def y_scale(records: list[dict]) -> str:
    """``plot_perplexity``'s y axis: d2l's linear one, or a log one where the perplexities span over 100x
    (a diverging run of a sweep beside the others would flatten their curves to 0)."""
    values = [r[k] for r in records for k in NEEDED if r[k] is not None and math.isfinite(r[k])]
    return "log" if values and max(values) > 100 * min(values) else "linear"


def plot_perplexity(records: list[dict], path: str | Path) -> Path:
    """d2l's figure: train and val perplexity against epoch, saved headless; records with a ``run``
    field (``rnnjax.runs``) get a color per run, train solid and val dashed."""
    from matplotlib.figure import Figure     # not pyplot: the caller's backend (a notebook's) stays as it is

    runs = sorted({r.get("run") for r in records}, key=lambda run: -1 if run is None else run)
    first = {run: next(r for r in records if r.get("run") == run) for run in runs}      # a run's settings
    varied = [k for k in SWEEPABLE if len({str(first[run].get(k)) for run in runs}) > 1]
    fig = Figure(figsize=(4.5, 3.2), dpi=120)
    ax = fig.subplots()
    for i, run in enumerate(runs):
        mine = [r for r in records if r.get("run") == run]
        epochs, color = [r["epoch"] for r in mine], f"C{i % 10}"
        said = "".join(f", {k} {shown(first[run].get(k))}" for k in varied)
        name = "" if run is None else f" (run {run}{said})"
        for key, style in (("train_ppl", "-"), ("val_ppl", "--")):      # infinite: a gap
            values = [r[key] if r[key] is not None and math.isfinite(r[key]) else math.nan for r in mine]
            ax.plot(epochs, values, style, color=color, label=f"{key}{name}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_yscale(y_scale(records))
    ax.grid(alpha=0.3)
    if len(runs) <= 10:          # beyond, a legend would cover the plot: its colors repeat anyway
        ax.legend(fontsize=6 if len(runs) > 2 else None)
    fig.tight_layout()
    # a whole file or none, never opened in place (it could be a FIFO)
    write_atomically(Path(path), save=lambda tmp: fig.savefig(tmp, format="png"))
    return Path(path)
