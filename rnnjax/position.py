"""Where training stands in a checkpoint (``Position``): the epoch, the next batch, and per run the sums of
that epoch's batches done, why it stopped and its divergence streak; read from a meta of any format
(``Position.read``) and checked as a meta is (``position_problem``, for ``rnnjax.meta.problem``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rnnjax.config import is_int, is_number

POSITION = ("epoch", "batch", "partial", "stopped", "high")


@dataclasses.dataclass
class Position:
    """Where training stands: ``epoch`` (0-based) in progress, ``batch`` next batch of it, and per run (one,
    or those trained together: ``rnnjax.runs``) the sums of the metrics of that epoch's batches done
    (``rnnjax.metrics.add_steps``; ``{}`` for none), why it stopped (``None`` while it trains) and
    ``high``, the epochs in a row its perplexity was far above the uniform guess's (``rnnjax.diverging``).
    An empty list: none of them yet (no sums, no run stopped, no epoch high)."""
    epoch: int = 0
    batch: int = 0
    partial: list = dataclasses.field(default_factory=list)
    stopped: list = dataclasses.field(default_factory=list)
    high: list = dataclasses.field(default_factory=list)

    @classmethod
    def read(cls, meta: dict) -> Position:
        """A checkpoint's, from its ``meta`` of any format: before format 3 a batch's sums were a
        ``[loss_sum, count]`` pair, and a single run's sums and ``high`` were not in a list of runs."""
        position, num_runs = meta["position"], len(meta.get("runs", []))
        partial, high = position.get("partial", []), position.get("high")
        if meta["format"] < 3:
            partial = [_summed(pairs) for pairs in partial] if num_runs else [_summed(partial)]
            high = [high] if isinstance(high, int) else high
        return cls(position["epoch"], position["batch"], partial, position.get("stopped", []), high or [])


def _summed(pairs: list) -> dict:
    """A format-2 run's ``[[loss_sum, count], ...]``, one per batch done, as the sums format 3 keeps."""
    if not pairs:
        return {}
    return {"loss_sum": sum(pair[0] for pair in pairs), "count": sum(pair[1] for pair in pairs)}


def _pairs(partial: Any, batch: int) -> bool:
    """Before format 3: ``[[loss_sum, count], ...]``, one per batch done."""
    return (isinstance(partial, list) and len(partial) == batch
            and all(isinstance(s, list) and len(s) == 2 and all(is_number(x) for x in s) for s in partial))


def _sums(sums: Any, batch: int) -> bool:
    """A run's metric sums: ``{}`` for none, else per key, ``loss_sum`` and ``count`` among them."""
    return isinstance(sums, dict) and (sums == {} or batch > 0 and {"loss_sum", "count"} <= set(sums)
                                       and all(isinstance(k, str) and is_number(v) for k, v in sums.items()))


def position_problem(position: Any, step: int, per_epoch: int, num_runs: int, fmt: int) -> str | None:
    if not isinstance(position, dict):
        return "lacks its position"
    unknown = sorted(set(position) - set(POSITION))
    if unknown or not {"epoch", "batch"} <= set(position):
        return f"has a position with keys {sorted(position)}, not those of {list(POSITION)}"
    epoch, batch = position["epoch"], position["batch"]
    if not (is_int(epoch) and is_int(batch) and epoch >= 0 and 0 <= batch < per_epoch):
        return f"has a position of epoch {epoch!r}, batch {batch!r}: not one of {per_epoch} batches an epoch"
    if epoch * per_epoch + batch != step:
        return (f"says epoch {epoch} batch {batch}, which is step {epoch * per_epoch + batch} at {per_epoch} "
                f"steps an epoch, not its step {step}")
    partial, stopped = position.get("partial", []), position.get("stopped", [])
    if fmt >= 3:
        runs = max(num_runs, 1)
        high = position.get("high", [])
        ok = (isinstance(partial, list) and len(partial) == runs and all(_sums(s, batch) for s in partial)
              and isinstance(high, list) and len(high) == runs)
    elif num_runs:
        high = position.get("high", [0] * num_runs)
        ok = (isinstance(partial, list) and len(partial) == num_runs
              and all(s == [] or _pairs(s, batch) for s in partial)
              and isinstance(high, list) and len(high) == num_runs)
    else:
        high = [position.get("high", 0)]
        ok = _pairs(partial, batch)
    ok = (ok and all(is_int(h) and h >= 0 for h in high) and isinstance(stopped, list)
          and len(stopped) in ((0, num_runs) if num_runs else (0,))
          and all(w is None or isinstance(w, str) for w in stopped))
    return None if ok else "has a position whose partial sums, stopped runs or divergence streak are bad"
