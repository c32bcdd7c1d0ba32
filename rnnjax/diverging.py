"""What stops a run from within: a non-finite loss, a diverging perplexity (signals: ``rnnjax.stops``).

Of runs trained together (``rnnjax.runs``) such a run stops alone (``StoppedRuns``) and the others
train on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax

from rnnjax.config import Config, label
from rnnjax.metrics import add_steps
from rnnjax.spelling import spelt


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite, or the run diverged; ``reason`` says which, in a clause."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


# A run whose train perplexity stays this many times the uniform guess's (the vocabulary size) for
# DIVERGED_EPOCHS epochs in a row is diverging: stop it rather than train on to perplexity 1e52.
DIVERGED_FACTOR, DIVERGED_EPOCHS = 4, 3


def check_divergence(record: dict, epochs_high: int, vocab_size: int) -> bool:
    """Whether ``record``'s epoch is far above the uniform guess; ``NonFiniteLoss`` once that has lasted
    ``DIVERGED_EPOCHS`` epochs (at once if the train perplexity overflows: a validation one past float range
    may be the text's, a run trained on one letter and validated on another's)."""
    ppl = record["train_ppl"]
    high = not ppl <= DIVERGED_FACTOR * vocab_size
    if high and (epochs_high + 1 >= DIVERGED_EPOCHS or not math.isfinite(ppl)):
        epoch = record["epoch"]
        reason = (f"its train perplexity stayed above {DIVERGED_FACTOR} times the uniform guess's "
                  f"{vocab_size} for {epochs_high + 1} epochs, {ppl:.4g} at epoch {epoch}"
                  if math.isfinite(ppl) else
                  f"its train perplexity is {ppl} at epoch {epoch}, the uniform guess's {vocab_size}")
        raise NonFiniteLoss(f"The run is diverging: {reason}; stopped. Train again in a new "
                            f"{spelt('workdir')} with a smaller {spelt('lr')}.", reason)
    return high


def check_finite(call_metrics: list[dict], epoch: int, start: int, steps_per_epoch: int) -> None:
    """``NonFiniteLoss`` naming the first step whose ``loss_sum`` is not finite in ``train_steps``' stacked
    metrics (one dict a call, from step ``start`` of the epoch on)."""
    losses = [(float(loss_sum), float(count)) for m in call_metrics
              for loss_sum, count in zip(m["loss_sum"], m["count"], strict=True)]
    for i, (loss_sum, count) in enumerate(losses):
        if not math.isfinite(loss_sum):
            reason = (f"the training loss is {loss_sum / count} at epoch {epoch + 1}, step {start + i + 1} "
                      f"of {steps_per_epoch}")
            if epoch == 0 and start + i == 0:       # before any update: no learning rate made it
                reason += ", the run's first, of its starting parameters"
                said = (f"{reason[0].upper()}{reason[1:]}: the parameters it starts from (fit's params, or "
                        "the cell's initialization) or the cell's step give it, not the learning rate; it "
                        "stopped without saving.")
                raise NonFiniteLoss(said, reason)
            raise NonFiniteLoss(
                f"{reason[0].upper()}{reason[1:]}: the run diverged, and stopped without saving it (its "
                f"checkpoints stay as they were). Train again in a new {spelt('workdir')} with a smaller "
                f"{spelt('lr')}.", reason)


class StoppedRuns:
    """Which runs have stopped and why. A run whose loss turns non-finite or that diverges (``check_finite``,
    ``check_divergence``) stops; of several, alone, named in the log, while the others train on."""

    def __init__(self, configs: list[Config], stopped: list, log: Callable[[str], Any] | None, several: bool):
        self.configs, self.log, self.several = configs, log, several
        self.why = list(stopped) or [None] * len(configs)
        self.unsaid: list[int] = []         # stopped by this epoch's checks, said once they are all made

    @property
    def live(self) -> list[int]:
        return [r for r, why in enumerate(self.why) if why is None]

    def check(self, r: int, check: Callable, *args) -> Any:
        """``check(*args)``, or ``None`` where it raises ``NonFiniteLoss``: run ``r`` then stops (a single
        run: the error is raised)."""
        try:
            return check(*args)
        except NonFiniteLoss as e:
            if not self.several:
                raise
            self.why[r] = e.reason
            self.unsaid.append(r)
            return None

    def epoch_sums(self, steps_RxS: list[dict], partial: list[dict], epoch: int, start: int,
                   steps_per_epoch: int) -> list[dict]:
        """Each run's metrics summed over its epoch's steps (after ``partial``, a resumed epoch's sums);
        a run with a step that is not finite stops, its sums empty."""
        sums: list[dict] = [{} for _ in partial]
        for r in self.live:
            steps = [jax.tree.map(lambda x: x[r], m) for m in steps_RxS]
            self.check(r, check_finite, steps, epoch, start, steps_per_epoch)
            if self.why[r] is None:
                sums[r] = add_steps(partial[r], steps)
        self.check_any_live(say=False)         # said after the divergence checks, with the final count
        return sums

    def check_any_live(self, say: bool = True) -> None:
        """``NonFiniteLoss`` if no run trains on; else, if ``say`` (the epoch's last check), says which runs
        this epoch stopped and how many train on."""
        if say and self.log and self.live:
            for r in self.unsaid:
                self.log(f"run {r} ({label(self.configs[r], self.configs)}) stopped: {self.why[r]}; "
                         f"{len(self.live)} run(s) train on.")
        if say or not self.live:
            self.unsaid = []
        if not self.live:
            whys = "; ".join(f"run {r} ({label(c, self.configs)}): {why}"
                             for r, (c, why) in enumerate(zip(self.configs, self.why)))
            raise NonFiniteLoss(f"Every run stopped: {whys}. Train again in a new {spelt('workdir')} with a "
                                f"smaller {spelt('lr')}.")
