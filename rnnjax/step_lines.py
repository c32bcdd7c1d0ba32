"""``steps.jsonl``: a JSON line per training step (and run), for curves within an epoch.

Each line is a step's metrics as ``metrics.jsonl`` names an epoch's
(``metrics.epoch_record``), over that step's tokens alone: ``train_loss``, any
``<key>_sum`` as ``train_<key>`` per token, any other metric as the step gave it
(``grad_norm``: the global gradient norm before clipping; ``count``, its tokens,
by which an epoch's ``train_loss`` weighs them: a ragged last batch has fewer),
with the ``step`` it brings the run to and its ``epoch``. They are written as
each epoch ends (and as a run stops in one) before that epoch's checks, so a
step whose loss is not finite is there to find; a resume drops the lines past
its checkpoint, as ``metrics.jsonl``'s, and a new run moves them aside with
them (``steps.N.jsonl``). Read back by ``StepsLog(path).read()``. A line that
cannot be written (a full disk) is said once and training goes on: the steps
trained since the last checkpoint are worth more than their lines.
"""

from __future__ import annotations

import math

from rnnjax.metrics import MetricsLog, train_name
from rnnjax.stored import STEPS as FILENAME


class StepsLog(MetricsLog):
    """``steps.jsonl``, read, truncated (to a step) and appended as ``MetricsLog`` does ``metrics.jsonl``,
    but for a failed write: said (``warn``), and nothing more appended (a torn line stays last)."""
    NAME, KIND = FILENAME, "a log of steps"
    ORDER = "step"
    NEEDED = ("train_loss",)
    WHAT = "a step's record (a step, an epoch, train_loss)"

    def _unwritten(self, e: OSError, records: tuple[dict, ...]) -> None:
        self.writer = False
        self.warn(f"{self.path} cannot be written ({e.strerror or e}): the steps from {records[0]['step']} "
                  "on may be missing from it, and stay so (training goes on)")


def step_records(epoch: int, first: int, steps: list[dict], run: int | None = None) -> list[dict]:
    """The lines of ``steps``, a run's metrics of consecutive steps (one dict each, of numbers) of ``epoch``
    (1-based), the first bringing the run to step ``first``; of runs trained together, naming ``run``."""
    named = {} if run is None else {"run": run}
    lines = []
    for i, m in enumerate(steps):
        count = float(m["count"])
        per_token = {train_name(k): float(v) / count if count else math.nan
                     for k, v in m.items() if str(k).endswith("_sum")}
        other = {str(k): float(v) for k, v in m.items() if not str(k).endswith("_sum")}
        lines.append({**named, "epoch": epoch, "step": first + i, **per_token, **other})
    return lines
