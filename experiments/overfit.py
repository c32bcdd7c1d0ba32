"""d2l's exercise 1 of the section: "Can you make the RNN model overfit using the high-level APIs?"

Command::

    python -m experiments.overfit [--workdir runs/overfit] [any experiments.timemachine flag]

Expected: 8-20 s on a 2-core CPU. Yes: d2l's RNN with the knobs of
``PRESETS['overfit']`` turned (4x the hidden units, 128; a fifth of the
training windows, 2000, about 2000 characters of text; batches of 64 instead
of 1024, so 32 steps an epoch instead of 10; 60 epochs) learns that text by heart.
At seed 0 the train perplexity falls to 1.29 while the validation perplexity
is lowest at epoch 4 (11.6) and then rises to 59.6-62.5 (by CPU and JAX release).
Without gradient clipping (``--clip 1e6``) it overfits alike: at seed 0 the
validation perplexity is lowest at epoch 4 (11.5), 56.9 at epoch 60 (jax 0.10.2).
``ppl.png`` in the workdir shows both curves; ``metrics.jsonl`` has them by
epoch.
"""

from __future__ import annotations

import sys

from experiments import stopping

if __name__ == "__main__":     # a signal while JAX loads: one line and 128 + signal, no traceback
    stopping.while_loading()
    stopping.load_jax()

from experiments import cli, settings, timemachine  # noqa: E402 (after the handlers: JAX loads slowly)
from rnnjax import metrics, spelling  # noqa: E402
from rnnjax.metrics import ppl_text  # noqa: E402

OPTIONS = dict(prog="python -m experiments.overfit", preset="overfit", description=__doc__.split("\n")[0])


@spelling.flag_spelling()
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    status = timemachine.main(argv, **OPTIONS)
    if status != 0:
        return status
    args = cli.parse_args(argv, **OPTIONS)
    if args.predict is not None:
        return status
    workdir = settings.settings(args)[1]
    records = metrics.MetricsLog(workdir / metrics.FILENAME).read()
    for run in sorted({r.get("run", -1) for r in records}):       # each run of several on its own, in order
        mine = [r for r in records if r.get("run", -1) == run]
        best, last = min(mine, key=lambda r: r["val_ppl"]), mine[-1]
        which = "" if run == -1 else f" run {run}:"
        if last.get("stopped"):         # a run that diverged turned up for no overfitting
            print(f"overfit:{which} stopped: {last['stopped']}")      # which says its epoch
            continue
        at = f"{best['epoch']} ({ppl_text(best['val_ppl'])})"
        lowest = (f"lowest at epoch {at}, then {ppl_text(last['val_ppl'])} at epoch {last['epoch']},"
                  if last is not best else f"lowest at the last epoch, {at}, not turned up yet,")
        print(f"overfit:{which} validation perplexity {lowest} while train perplexity ends at "
              f"{ppl_text(last['train_ppl'])}")
    return status


if __name__ == "__main__":
    stopping.run(main)
