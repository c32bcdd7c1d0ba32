"""The command line of ``experiments.timemachine`` (and ``experiments.overfit``): its flags, checked
before any work, and what it shows (progress, perplexities, the checkpoint it generates from). What the
flags ask to train, and where, is ``experiments.settings``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

import rnnjax
from experiments import fine_tune, flags
from experiments.parsing import Parser
from rnnjax import agree, checkpoint, config as config_lib, corpus, parallel, runs, spelling
from rnnjax.data import WindowedText
from rnnjax.generate import MAX_PREDS, MAX_TEMPERATURE
from rnnjax.metrics import ppl_text, ppls_text
from rnnjax.loop import CHECKPOINT_EVERY, FitResult
from rnnjax.train import epoch_lines

# Flags that only training reads.
TRAINING_ONLY = ("data", "text", "devices", "keep", "checkpoint_every")
DESCRIPTION = 'd2l\'s "Concise Implementation of Recurrent Neural Networks", end to end.'


def parse_args(argv=None, *, prog: str = "python -m experiments.timemachine", preset: str = "d2l",
               description: str = DESCRIPTION) -> argparse.Namespace:
    """The flags; ``prog``, ``preset`` (the default ``--preset``) and ``description`` for a script built on
    this one (``experiments.overfit``)."""
    p = Parser(prog=prog, description=description)
    p.add_argument("--data", help="local timemachine.txt, SHA-1 checked (else $RNNJAX_TIMEMACHINE, else "
                                  "download): d2l's text, the default corpus")
    p.add_argument("--text", metavar="PATH",
                   help="train on this UTF-8 file instead of the Time Machine (no hash check; its SHA-1 goes "
                        "into the checkpoints, and resuming needs the same file): characters, or words with "
                        "--token word, the vocabulary from the training part; unless given, --preprocess "
                        f"{corpus.TEXT_DEFAULTS['preprocess']} (every character kept), --val-fraction "
                        f"{corpus.TEXT_DEFAULTS['val_fraction']} (the tail validates) and --num-train "
                        f"{corpus.TEXT_DEFAULTS['num_train']} (every window of the training part); "
                        "--steps-per-epoch N for a large text. Tokenized once, cached in "
                        "~/.cache/rnnjax/corpus")
    p.add_argument("--workdir",
                   help="run folder: metrics, plot, checkpoints (default runs/<preset>, or "
                        "runs/<preset>-<hash> if flags change the preset's settings: the same command "
                        "resumes). One that holds a run resumes it with its settings, read from it: "
                        "--workdir W --epochs 200 is enough (other flags given must agree with them, "
                        "unless it holds no checkpoint yet: then they start it anew)")
    flags.add_flags(p, preset)
    p.set_defaults(preset=None)           # to tell whether it was given: if not, a workdir's settings rule
    run = p.add_argument_group("checkpoints, devices, generation")
    run.add_argument("--checkpoint-every", type=int, metavar="N",
                     help=f"epochs between checkpoints (default {CHECKPOINT_EVERY}; the last epoch and an "
                          "interrupted run are always saved)")
    run.add_argument("--keep", type=int,
                     help=f"latest checkpoints kept (default {checkpoint.KEEP}; the best is kept too, and of "
                          "runs trained together each one's own best)")
    run.add_argument("--devices", type=int, help="local devices to train on (default: all; on a CPU one per "
                                                 "core, or $JAX_NUM_CPU_DEVICES)")
    run.add_argument("--coordinator", metavar="HOST:PORT", help="jax.distributed coordinator (multi-host)")
    run.add_argument("--num-processes", type=int, help="processes in a multi-host run")
    run.add_argument("--process-id", type=int, help="this process's index in a multi-host run")
    run.add_argument("--distributed", action="store_true",
                     help="join a multi-host run whose settings JAX finds itself ($JAX_COORDINATOR_ADDRESS, "
                          "SLURM, Open MPI)")
    run.add_argument("--join-timeout", type=flags.real, metavar="SECONDS",
                     help="how long a multi-host run waits for all its processes to join (default "
                          f"{parallel.JOIN_TIMEOUT_S})")
    run.add_argument("--init-from", metavar="W",
                     help="start a new run (in --workdir) from the parameters of the run trained in W "
                          "(fine-tuning; --run K of several, --best for its best checkpoint): W's settings "
                          "changed by the flags given (--seed then orders the batches), the text (--text, "
                          "--data: the Time Machine, else W's) read in W's vocabulary and cleaned as W's "
                          "was, split as that text's default")
    run.add_argument("--predict", metavar="PREFIX",
                     help="generate from the workdir's checkpoint (without --workdir: of the run these "
                          "flags train); no training")
    run.add_argument("--num-preds", type=int,
                     help="with --predict: tokens to generate, characters or words (default 20)")
    run.add_argument("--best", action="store_true",
                     help="with --predict (or --init-from): the checkpoint of lowest validation "
                          "perplexity, not the latest; the best of those saved (every --checkpoint-every "
                          "epochs and the last), which misses a better epoch between saves")
    run.add_argument("--run", type=int, metavar="K",
                     help="with --predict (or --init-from) on a workdir of several runs (--seeds, "
                          "--lr/--clip lists): run K")
    run.add_argument("--sample", action="store_true",
                     help="with --predict: sample the tokens (seeded by --seed) instead of the argmax")
    run.add_argument("--temperature", type=flags.real, metavar="T",
                     help="with --predict: sample, from the logits divided by T (default 1; d2l's q ~ "
                          "P^alpha: T = 1/alpha); implies --sample")
    run.add_argument("--top-k", type=int, metavar="K",
                     help="with --predict: sample among the K likeliest tokens only; implies --sample")
    run.add_argument("--no-progress", action="store_true", help="no progress output")
    run.add_argument("--no-compilation-cache", action="store_true",
                     help="do not use JAX's persistent compilation cache (the jax folder in "
                          "$RNNJAX_CACHE, else $XDG_CACHE_HOME/rnnjax, else ~/.cache/rnnjax)")
    args = p.parse_args(argv)
    args.preset_given, args.preset = args.preset is not None, args.preset or preset
    for name in ("data", "text", "workdir", "init_from"):    # '' would mean the default file, or this folder
        if getattr(args, name) == "":
            raise ValueError(f"--{name.replace('_', '-')} is empty; give a path (a shell variable that was "
                             "not set?).")
    args.workdir = None if args.workdir is None else Path(args.workdir)
    if args.text is not None and args.data is not None:
        raise ValueError("--text trains on your own file, --data names the Time Machine's; give one.")
    args.settings_from = args.saved_vocab = args.init_source = args.init_note = args.text_note = None
    fine_tune.check_flags(args)
    if args.num_preds is not None and args.predict is None:
        raise ValueError("--num-preds says how much --predict generates; add --predict PREFIX.")
    args.num_preds = 20 if args.num_preds is None else args.num_preds
    for name, low in (("checkpoint_every", 1), ("keep", 1), ("num_preds", 0)):
        if getattr(args, name) is not None and getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}.")
    if args.devices is not None and args.devices < 1:
        raise ValueError(f"--devices must be at least 1, got {args.devices}.")
    if args.num_preds > MAX_PREDS:
        raise ValueError(f"--num-preds must be at most {MAX_PREDS:,}, got {args.num_preds:,}.")
    args.sample = args.sample or args.temperature is not None or args.top_k is not None
    if args.sample and args.predict is None:
        raise ValueError("--sample, --temperature and --top-k choose how --predict generates; "
                         "add --predict PREFIX.")
    if args.run is not None and args.predict is None and args.init_from is None:
        raise ValueError("--run chooses the run of a workdir that --predict generates from (or --init-from "
                         "starts from); add --predict PREFIX.")
    if args.best and args.predict is None and args.init_from is None:
        raise ValueError("--best chooses the checkpoint that --predict generates from (or --init-from starts "
                         "from); add --predict PREFIX.")
    args.multi_host = bool(args.distributed or args.coordinator or args.num_processes
                           or os.environ.get("JAX_COORDINATOR_ADDRESS"))
    if args.join_timeout is not None and not args.multi_host:
        raise ValueError("--join-timeout says how long a multi-host run waits for its processes; add "
                         "--coordinator HOST:PORT, --num-processes and --process-id, or --distributed.")
    args.join_timeout = parallel.JOIN_TIMEOUT_S if args.join_timeout is None else args.join_timeout
    parallel.check_distributed(args.coordinator, args.num_processes, args.process_id,
                               auto=args.distributed or bool(os.environ.get("JAX_COORDINATOR_ADDRESS")),
                               timeout_s=args.join_timeout)
    if args.sample and args.seed is not None and len(args.seed) > 1:     # else the training command's seeds
        raise ValueError(f"--predict --sample draws with one --seed, got {len(args.seed)}: with --sample, "
                         "--seed seeds the draws, so name the runs trained together by their --workdir "
                         "(and --run K).")
    if args.predict is not None and args.seed is not None and not 0 <= args.seed[0] < 2 ** 32:
        raise ValueError(f"--seed must be in [0, 2**32), got {args.seed[0]}.")
    if args.temperature is not None and not 0 < args.temperature <= MAX_TEMPERATURE:   # NaN fails this too
        greedy = ("; the likeliest token each time is --predict without --temperature, --sample or --top-k"
                  if args.temperature == 0 else "")
        raise ValueError(f"--temperature must be a positive number up to {MAX_TEMPERATURE:.3g} (float32's "
                         f"largest), got {spelling.shown(args.temperature)}{greedy}.")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}.")
    # With --predict, training's flags (a training command with --predict added) are noted, not used; the
    # model's flags given are checked against the checkpoint's, but not a preset's (a training recipe).
    resumable = {k: v for k, v in flags.given(args).items() if k in config_lib.Config.RESUMABLE}
    training = [name for name in TRAINING_ONLY if getattr(args, name) is not None] + list(resumable) + \
        ["preset"] * args.preset_given
    args.not_used = [f"--{name.replace('_', '-')}" for name in training] if args.predict is not None else []
    if args.predict is not None:      # not used, but a value no run could take is still a mistake to name
        config_lib.Config().replace(**resumable)
    args.checkpoint_every = CHECKPOINT_EVERY if args.checkpoint_every is None else args.checkpoint_every
    args.keep = checkpoint.KEEP if args.keep is None else args.keep
    return args


@contextlib.contextmanager
def progress_output(enabled: bool, epochs: int):
    """``fit``'s ``progress`` callback: a rich bar on a terminal, else a line every tenth of the epochs;
    ``False`` (off) where not ``enabled``."""
    if not enabled or sys.stdout is None:         # None: started with stdout closed (>&-)
        yield False
    elif not sys.stdout.isatty():
        yield epoch_lines(lambda line: print(line, flush=True), epochs)
    else:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        columns = (TextColumn("steps"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[ppl]}"))
        bar = Progress(*columns)
        bar.start()
        task = bar.add_task("steps", total=None, ppl="")

        def update(done: int, total: int, record: dict | None) -> None:
            if record is not None:
                bar.update(task, ppl=f"epoch {record['epoch']}  train ppl {ppls_text(record, 'train_ppl')}  "
                                     f"val ppl {ppls_text(record, 'val_ppl')}")
            bar.update(task, completed=done, total=total)
        try:
            yield update
        finally:
            try:
                bar.stop()
            except OSError:       # the terminal is gone (a hang-up): what stopped the run is what to say
                pass


def describe_checkpoint(restored: checkpoint.Restored, here: float | None = None) -> str:
    """Which checkpoint generates: its step, its epoch, its validation perplexity (its run's, of several);
    ``here``: a fine-tuned run's, the parameters' perplexity on its own validation before training."""
    position, run, own = restored.meta.get("position", {}), restored.run, restored.val_ppl
    epoch, batch = position.get("epoch", 0), position.get("batch", 0)
    where = f"epoch {epoch + 1} at batch {batch}" if batch else f"after epoch {epoch}"
    val_ppl = own if own is not None or run is None else restored.meta.get("val_ppl")    # older: the mean
    said = "" if val_ppl is None else f", val ppl {ppl_text(val_ppl)}"
    if said and run is not None:
        said += f" (run {run}'s)" if own is not None else " (the mean of its runs)"
    if here is not None:
        said += f"{' there' * bool(said)}; val ppl {ppl_text(here)} on this run's text, before training"
    return f"checkpoint step {restored.step} ({where}{said})"


def shared_settings(args: argparse.Namespace, configs: list | None, workdir: Path | None, together: bool
                    ) -> dict:
    """What every process of a multi-host run must be given alike, compared as they join (``rnnjax.agree``):
    the command, and the runs it trains (as the flags resolve: no --seed is --seed 0) or the checkpoint it
    reads."""
    if args.predict is not None:
        return {"command": "--predict", "workdir": os.path.abspath(args.workdir), "run": args.run,
                "best": args.best}
    start = args.init_source and {**args.init_source, "workdir": os.path.abspath(args.init_source["workdir"])}
    return {"command": "training", "init_from": start,
            **agree.of_training(configs, together, workdir, args.devices or len(jax.local_devices()),
                                args.checkpoint_every, args.keep)}


def _unknown(data: WindowedText) -> str:
    """The share of the validation's tokens that are ``<unk>``, where any are: one class for all of them,
    which makes a perplexity look better than the text's tokens would score."""
    unknown = total = 0
    for b in data.val_batches():
        targets = np.asarray(b.Y)[np.asarray(b.mask) > 0]
        unknown, total = unknown + int(np.sum(targets == data.vocab.unk)), total + targets.size
    share = unknown / total if total else 0.0
    return f" (<unk> is {share:.0%} of the validation's tokens, one class for them all)" if share >= 0.005 \
        else ""


def say_trained(say: Callable[[str], Any], result: FitResult, configs: list, several: bool, model: Any,
                data: WindowedText, workdir: Path, finished: bool) -> None:
    """The run's last perplexities and its text, or of ``several`` trained together each one's and their
    range: what the command ends with (nothing where nothing trained)."""
    if not result.history:
        return
    if several:
        for k, c in enumerate(configs):
            if result.stopped[k] is not None:
                say(f"run {k} ({config_lib.label(c, configs)}): stopped, {result.stopped[k]}")
                continue
            last = [r for r in result.history if r["run"] == k][-1]
            params = jax.tree.map(lambda x: x[k], result.state.params)
            text = rnnjax.predict(model, params, data.vocab, data.prompt, 20)
            say(f"run {k} ({config_lib.label(c, configs)}): train perplexity {ppl_text(last['train_ppl'])}, "
                f"val perplexity {ppl_text(last['val_ppl'])}, {text!r}")
        lines = []
        for name, members in runs.groups(configs).items():      # of each rate (and clip): the seeds' range
            if len(members) == 1:           # its run's line said it
                continue
            trained_on = sum(result.stopped[k] is None for k in members)
            count = f"{trained_on} of {len(members)}" if trained_on < len(members) else f"{len(members)}"
            of = f"run{'s' * (len(members) > 1)}{f' of {name}' if name else ''}"
            if not trained_on:
                lines.append(f"{count} {of}: stopped")
                continue
            table = runs.summary(result.history, result.stopped, members)
            said = (f"{k} mean {ppl_text(v['mean'])} (min {ppl_text(v['min'])}, max {ppl_text(v['max'])})"
                    for k, v in table.items())
            lines.append(f"{count} {of}, epoch {result.history[-1]['epoch']}:  " + "  ".join(said))
        lines = lines or [f"{len(configs)} runs, epoch {result.history[-1]['epoch']}, each one's line above"]
        lines[-1] += f"{_unknown(data)}; {'in' if finished else 'wrote'} {workdir}"
        for line in lines:
            say(line)
        return
    last = result.history[-1]
    unit = "word" if data.vocab.kind == "word" else "character"
    say(f"epoch {last['epoch']}: train perplexity {ppl_text(last['train_ppl'])} "
        f"({last['train_bpc']:.2f} bits per {unit}), val perplexity {ppl_text(last['val_ppl'])} "
        f"({last['val_bpc']:.2f} bits){_unknown(data)}; {'in' if finished else 'wrote'} {workdir}")
    say(f"trained: {rnnjax.predict(model, result.state.params, data.vocab, data.prompt, 20)!r}")
