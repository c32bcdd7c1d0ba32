"""d2l's "Concise Implementation of Recurrent Neural Networks", end to end.

Command (d2l's recipe: batch 1024, num_steps 32, hidden 32, lr 1, clip 1, 100 epochs)::

    python -m experiments.timemachine --data ../shared/data/timemachine.txt

Expected: about 8-10 s on a 2-core CPU (compilation included; data parallel over
one CPU device per core); final train perplexity about 5.9 and validation
perplexity about 7.2-7.3 (seed 0: 5.87 / 7.29; d2l's PyTorch tab reaches 7.2-7.4),
and ``predict('it has', 20)`` turns from noise into words.

Writes to ``--workdir`` (default ``runs/timemachine-<time>``): ``metrics.jsonl``
(one line per epoch), ``ppl.png``, ``config.json`` and orbax checkpoints. The
same command with the same ``--workdir`` resumes; ``--predict`` generates from
the workdir's checkpoint without training::

    python -m experiments.timemachine --workdir runs/tm --predict 'it has' --num-preds 50

Without ``--data`` the text comes from ``$RNNJAX_TIMEMACHINE`` or is downloaded
from d2l into ``~/.cache/rnnjax`` and verified.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path

import jax
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

import rnnjax
from rnnjax import checkpoint, metrics, parallel, runtime
from rnnjax.data import DataError, TimeMachine
from rnnjax.train import (CHECKPOINT_EVERY, Config, Interrupted, NonFiniteLoss, create_train_state, fit,
                          make_model)


def parse_args(argv=None) -> argparse.Namespace:
    d = Config()
    p = argparse.ArgumentParser(prog="python -m experiments.timemachine", description=__doc__.split("\n")[0])
    p.add_argument("--data", help="local timemachine.txt (else $RNNJAX_TIMEMACHINE, else download)")
    p.add_argument("--workdir", type=Path,
                   help="run folder: metrics, plot, checkpoints; resumes if it has any")
    # Config flags default to None so that --predict can tell which were given.
    for field, kind, help in [("epochs", int, None), ("seed", int, None),
                              ("batch_size", int, "global, over all devices"), ("num_steps", int, None),
                              ("num_hiddens", int, None), ("lr", float, None), ("clip", float, None),
                              ("unroll", int, "scan unroll factor")]:
        p.add_argument("--" + field.replace("_", "-"), type=kind, dest=field,
                       help=f"{help + '; ' if help else ''}default {getattr(d, field)}")
    p.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY, metavar="N",
                   help=f"epochs between checkpoints (default {CHECKPOINT_EVERY}; the last epoch and an "
                        "interrupted run are always saved)")
    p.add_argument("--keep", type=int, default=3, help="latest checkpoints kept (the best is kept too)")
    p.add_argument("--devices", type=int,
                   help="local devices to train on (default: all; on a CPU one per core, "
                        "or $JAX_NUM_CPU_DEVICES)")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="jax.distributed coordinator (multi-host)")
    p.add_argument("--num-processes", type=int, help="processes in a multi-host run")
    p.add_argument("--process-id", type=int, help="this process's index in a multi-host run")
    p.add_argument("--distributed", action="store_true",
                   help="join a multi-host run whose settings JAX finds itself ($JAX_COORDINATOR_ADDRESS, "
                        "SLURM, Open MPI)")
    p.add_argument("--predict", metavar="PREFIX", help="generate from the workdir's checkpoint; no training")
    p.add_argument("--num-preds", type=int, default=20, help="characters to generate")
    p.add_argument("--best", action="store_true", help="with --predict: the best checkpoint, not the latest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-compilation-cache", action="store_true",
                   help="do not use JAX's persistent compilation cache (~/.cache/rnnjax/jax)")
    return p.parse_args(argv)


@contextlib.contextmanager
def progress_bar(enabled: bool = True):
    """A rich progress bar over training steps, as ``fit``'s ``progress`` callback."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[ppl]}"))
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("steps", total=None, ppl="")

        def update(done: int, total: int, record: dict | None) -> None:
            fields = {}
            if record is not None:
                fields["ppl"] = (f"epoch {record['epoch']}  train ppl {record['train_ppl']:.2f}  "
                                 f"val ppl {record['val_ppl']:.2f}")
            bar.update(task, completed=done, total=total, **fields)
        yield update


def given_config(args: argparse.Namespace) -> dict:
    """The Config fields set on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
            if getattr(args, f.name, None) is not None}


def predict_only(args: argparse.Namespace) -> None:
    if args.workdir is None:
        raise checkpoint.CheckpointError("--predict needs the --workdir of a trained run.")
    restored = checkpoint.restore(args.workdir, best=args.best)
    # Only the hidden size shapes the parameters; the vocabulary comes with the checkpoint.
    requested = given_config(args).get("num_hiddens", restored.config.num_hiddens)
    if requested != restored.config.num_hiddens:
        raise checkpoint.CheckpointError(
            f"The checkpoint in {args.workdir} is a different model: num_hiddens: checkpoint "
            f"{restored.config.num_hiddens}, requested {requested}.")
    print(restored.predict(args.predict, args.num_preds))


def train(args: argparse.Namespace) -> None:
    config = Config(**given_config(args))
    workdir = args.workdir or Path("runs") / time.strftime("timemachine-%Y%m%d-%H%M%S")
    lead = jax.process_index() == 0
    say = print if lead else (lambda *a, **k: None)
    data = TimeMachine(config.batch_size, config.num_steps, config.num_train, config.num_val,
                       path=args.data, seed=config.seed)
    say(f"workdir: {workdir}")
    model = make_model(config, len(data.vocab))
    untrained = create_train_state(config, len(data.vocab)).params
    say(f"untrained: {rnnjax.predict(model, untrained, data.vocab, 'it has', 20)!r}")

    with progress_bar(enabled=lead and not args.no_progress) as progress:
        result = fit(config, data, workdir, params=untrained, devices=args.devices,
                     checkpoint_every=args.checkpoint_every, keep=args.keep, progress=progress)
    if lead and result.history:
        metrics.plot_perplexity(result.history, workdir / metrics.PLOT)
        last = result.history[-1]
        say(f"epoch {last['epoch']}: train perplexity {last['train_ppl']:.2f}, "
            f"val perplexity {last['val_ppl']:.2f}")
    say(f"trained: {rnnjax.predict(model, result.state.params, data.vocab, 'it has', 20)!r}")


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime.keep_freed_memory()
    runtime.use_cpu_cores(args.batch_size or Config.batch_size)
    if not args.no_compilation_cache:
        runtime.enable_compilation_cache()
    try:
        if (args.distributed or args.coordinator or args.num_processes
                or os.environ.get("JAX_COORDINATOR_ADDRESS")):
            parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        predict_only(args) if args.predict is not None else train(args)
    except Interrupted as e:
        print(e, file=sys.stderr)
        return 128 + e.signum
    except (DataError, checkpoint.CheckpointError, NonFiniteLoss, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
