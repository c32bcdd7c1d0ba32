"""d2l's "Concise Implementation of Recurrent Neural Networks", end to end.

Command (d2l's recipe, ``rnnjax.config.PRESETS['d2l']``)::

    python -m experiments.timemachine --data ../shared/data/timemachine.txt

Expected: 10-17 s on a 2-core CPU, compilation included; final train
perplexity 5.87-6.00, validation 7.20-7.43 (by seed, CPU and device count:
the README's results table), and ``predict('it has', 20)`` turns from noise
into words.

It says first what it does (new or resumed, devices, loss path, workdir),
then writes to ``--workdir`` (default ``runs/<preset>``, or
``runs/<preset>-<hash>`` when flags change the preset's settings; ``--epochs``
and ``--kernel`` do not count): ``metrics.jsonl``, ``ppl.png``,
``config.json`` and orbax checkpoints. The same command resumes;
``--predict`` generates from the workdir's checkpoint without training
(``--sample``, ``--temperature`` or ``--top-k`` draw instead of the argmax).
``--text PATH`` trains on any UTF-8 file instead, characters or words
(``--token word``), its tail validating (``rnnjax.corpus``). ``--seeds
0,1,2,3`` (and lists of ``--lr``, ``--clip``) trains every combination in one
program (``rnnjax.runs``). Every ``rnnjax.config.Config`` field is a flag.
The logic lives in ``rnnjax``; this file is intentionally kept short.
"""

from __future__ import annotations

import os
import signal
import sys


def _stopped_while_loading(signum, frame):
    _exit_now(f"Stopped by signal {signum} while starting, before anything was written.", 128 + signum)


def _exit_now(message: str, status: int):
    """Says ``message`` and exits at once: unwinding out of half-loaded or half-compiled JAX can crash
    the interpreter's teardown."""
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)


if __name__ == "__main__":     # a signal while JAX loads: one line and 130/143, not a traceback
    signal.signal(signal.SIGINT, _stopped_while_loading)
    signal.signal(signal.SIGTERM, _stopped_while_loading)

import argparse  # noqa: E402 (after the handlers: loading JAX takes a while)
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

import rnnjax  # noqa: E402
from rnnjax import backend, checkpoint, config as config_lib, corpus, memory  # noqa: E402
from rnnjax import metrics, parallel, runs  # noqa: E402
from rnnjax.data import DataError  # noqa: E402
from rnnjax.generate import MAX_PREDS  # noqa: E402
from rnnjax.start import planned  # noqa: E402
from rnnjax.train import CHECKPOINT_EVERY, Interrupted, NonFiniteLoss, fit  # noqa: E402
from rnnjax.workdir import WorkdirError  # noqa: E402

USAGE_ERRORS = (DataError, checkpoint.CheckpointError, NonFiniteLoss, ValueError, WorkdirError)
OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Out of memory")      # in XLA's errors


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """argparse's own errors as ours are: one line (not the usage block), and where to look."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parse_args(argv=None, *, prog: str = "python -m experiments.timemachine", preset: str = "d2l",
               description: str = __doc__.split("\n")[0]) -> argparse.Namespace:
    """The flags; ``prog``, ``preset`` (the default ``--preset``) and ``description`` for a script built on
    this one (``experiments.overfit``)."""
    p = _Parser(prog=prog, description=description)
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
                   help="run folder: metrics, plot, checkpoints; resumes if it has any (default "
                        "runs/<preset>, or runs/<preset>-<hash> if flags change the preset's settings: "
                        "the same command resumes)")
    config_lib.add_flags(p, preset)
    run = p.add_argument_group("checkpoints, devices, generation")
    run.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY, metavar="N",
                     help=f"epochs between checkpoints (default {CHECKPOINT_EVERY}; the last epoch and an "
                          "interrupted run are always saved)")
    run.add_argument("--keep", type=int, default=3, help="latest checkpoints kept (the best is kept too)")
    run.add_argument("--devices", type=int, help="local devices to train on (default: all; on a CPU one per "
                                                 "core, or $JAX_NUM_CPU_DEVICES)")
    run.add_argument("--coordinator", metavar="HOST:PORT", help="jax.distributed coordinator (multi-host)")
    run.add_argument("--num-processes", type=int, help="processes in a multi-host run")
    run.add_argument("--process-id", type=int, help="this process's index in a multi-host run")
    run.add_argument("--distributed", action="store_true",
                     help="join a multi-host run whose settings JAX finds itself ($JAX_COORDINATOR_ADDRESS, "
                          "SLURM, Open MPI)")
    run.add_argument("--predict", metavar="PREFIX",
                     help="generate from the workdir's checkpoint; no training")
    run.add_argument("--num-preds", type=int, default=20, help="tokens to generate (characters or words)")
    run.add_argument("--best", action="store_true",
                     help="with --predict: the checkpoint of lowest validation perplexity, not the latest; "
                          "the best of those saved (every --checkpoint-every epochs and the last), which "
                          "misses a better epoch between saves")
    run.add_argument("--run", type=int, metavar="K",
                     help="with --predict on a workdir of several runs (--seeds, --lr/--clip lists): run K")
    run.add_argument("--sample", action="store_true",
                     help="with --predict: sample the characters (seeded by --seed) instead of the argmax")
    run.add_argument("--temperature", type=float, metavar="T",
                     help="with --predict: sample, from the logits divided by T (default 1; d2l's q ~ "
                          "P^alpha: T = 1/alpha); implies --sample")
    run.add_argument("--top-k", type=int, metavar="K",
                     help="with --predict: sample among the K likeliest characters only; implies --sample")
    run.add_argument("--no-progress", action="store_true", help="no progress output")
    run.add_argument("--no-compilation-cache", action="store_true",
                     help="do not use JAX's persistent compilation cache (~/.cache/rnnjax/jax)")
    args = p.parse_args(argv)
    for name in ("data", "text", "workdir"):    # '' would mean the default file, or the current folder
        if getattr(args, name) == "":
            raise ValueError(f"--{name} is empty; give a path (a shell variable that was not set?).")
    args.workdir = None if args.workdir is None else Path(args.workdir)
    if args.text is not None and args.data is not None:
        raise ValueError("--text trains on your own file, --data names the Time Machine's; give one.")
    if args.text is not None and args.predict is None:     # the preset, changed by these, then by the flags
        for name, value in corpus.TEXT_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    for name, low in (("checkpoint_every", 1), ("keep", 1), ("num_preds", 0)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}.")
    if args.num_preds > MAX_PREDS:
        raise ValueError(f"--num-preds must be at most {MAX_PREDS:,}, got {args.num_preds:,}.")
    args.sample = args.sample or args.temperature is not None or args.top_k is not None
    if args.sample and args.predict is None:
        raise ValueError("--sample, --temperature and --top-k choose how --predict generates; "
                         "add --predict PREFIX.")
    if args.run is not None and args.predict is None:
        raise ValueError("--run chooses the run of a workdir that --predict generates from; add --predict "
                         "PREFIX.")
    parallel.check_distributed(args.coordinator, args.num_processes, args.process_id,
                               auto=args.distributed or bool(os.environ.get("JAX_COORDINATOR_ADDRESS")))
    if args.predict is not None and args.seed is not None and len(args.seed) > 1:
        raise ValueError(f"--predict samples with one --seed, got {len(args.seed)}.")
    if args.temperature is not None and not args.temperature > 0:   # NaN fails this too
        raise ValueError(f"--temperature must be a positive number, got {args.temperature}.")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}.")
    return args


@contextlib.contextmanager
def progress_output(enabled: bool, epochs: int):
    """``fit``'s ``progress`` callback: a rich bar on a terminal, else a line every tenth of the epochs."""
    if not enabled:
        yield None
    elif not sys.stdout.isatty():
        every = max(1, epochs // 10)

        def line(done: int, total: int, record: dict | None) -> None:
            if record and (record["epoch"] % every == 0 or record["epoch"] == epochs):
                print(f"epoch {record['epoch']}/{epochs}  step {done}/{total}  train ppl "
                      f"{record['train_ppl']:.2f}  val ppl {record['val_ppl']:.2f}", flush=True)
        yield line
    else:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        columns = (TextColumn("steps"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[ppl]}"))
        with Progress(*columns) as bar:
            task = bar.add_task("steps", total=None, ppl="")

            def update(done: int, total: int, record: dict | None) -> None:
                if record is not None:
                    bar.update(task, ppl=f"epoch {record['epoch']}  train ppl {record['train_ppl']:.2f}  "
                                         f"val ppl {record['val_ppl']:.2f}")
                bar.update(task, completed=done, total=total)
            yield update


def predict_only(args: argparse.Namespace) -> None:
    if args.workdir is None:
        raise checkpoint.CheckpointError("--predict needs the --workdir of a trained run.")
    sampling = {}
    if args.sample:       # --seed seeds the draws here, not the model
        sampling = {"temperature": args.temperature, "top_k": args.top_k,
                    "key": jax.random.PRNGKey(args.seed[0] if args.seed is not None else 0)}
    restored = checkpoint.restore(args.workdir, best=args.best, run=args.run)
    # The model comes from the checkpoint; flags that say otherwise are a mistake worth naming.
    requested = {k: v[0] if k in config_lib.SWEEPABLE and len(v) == 1 else v
                 for k, v in config_lib.given(args).items()
                 if not (args.sample and k == "seed") and k not in config_lib.Config.RESUMABLE}
    differ = [f"{k}: checkpoint {getattr(restored.config, k)!r}, requested {v!r}"
              for k, v in requested.items() if v != getattr(restored.config, k)]
    if differ:
        raise checkpoint.CheckpointError(f"The checkpoint in {args.workdir} is a different model: "
                                         f"{'; '.join(differ)}.")
    text = restored.predict(args.predict, args.num_preds, **sampling)
    # stderr: stdout is the text alone, for pipes.
    print(f"from {args.workdir}: {describe_checkpoint(restored)}", file=sys.stderr)
    print(text)


def describe_checkpoint(restored: checkpoint.Restored) -> str:
    """Which checkpoint generates: its step, its epoch, its validation perplexity."""
    position, val_ppl = restored.meta.get("position", {}), restored.meta.get("val_ppl")
    epoch, batch = position.get("epoch", 0), position.get("batch", 0)
    where = f"epoch {epoch + 1} at batch {batch}" if batch else f"after epoch {epoch}"
    ppl = "" if val_ppl is None else f", val ppl {val_ppl:.2f}"
    if ppl and restored.meta.get("runs"):
        ppl += " (the mean of its runs)"
    return f"checkpoint step {restored.step} ({where}{ppl})"


def default_workdir(preset: str, configs: list[config_lib.Config], text: str | None = None) -> Path:
    """``runs/<preset>``, or ``runs/<preset>-<hash>`` of the settings the flags change (``--text``:
    ``runs/<file name>-<hash>``, the file's path in the hash): the name the same command gives again, so
    it resumes. Resumable fields (``--epochs``) are left out of the hash: a larger ``--epochs`` trains the
    same run on."""
    base = config_lib.PRESETS[preset].to_json()
    changed = [{k: v for k, v in c.to_json().items() if v != base[k] and k not in config_lib.Config.RESUMABLE}
               for c in configs]
    if text is None and len(configs) == 1 and not changed[0]:
        return Path("runs") / preset
    name = preset if text is None else re.sub(r"[^\w.-]", "_", Path(text).stem) or "text"
    key = changed if text is None else [str(Path(text).resolve()), changed]
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return Path("runs") / f"{name}-{digest}"


def train(args: argparse.Namespace, configs: list[config_lib.Config]) -> None:
    config = configs[0]
    workdir = args.workdir or default_workdir(args.preset, configs, args.text)
    say = print if jax.process_index() == 0 else (lambda *a, **k: None)
    data = corpus.load(config, text=args.text, data=args.data)
    several = len(configs) > 1
    # The plan is made under the workdir's lock, held until the plot is written.
    with planned(config, data, workdir, devices=args.devices, runs=configs if several else None) as p:
        if not several:               # fit_runs says it, and then which runs stop as they stop
            say(p.describe())
        model, untrained = rnnjax.make_model(config, len(data.vocab)), None
        if p.step is None and not several:   # fit starts from these, not from a second init (and compile)
            untrained = rnnjax.create_train_state(config, len(data.vocab)).params
            say(f"untrained: {rnnjax.predict(model, untrained, data.vocab, data.prompt, 20)!r}")
        options = dict(devices=args.devices, checkpoint_every=args.checkpoint_every, keep=args.keep, log=None,
                       plan=p)
        try:
            with progress_output(jax.process_index() == 0 and not args.no_progress and not p.finished,
                                 config.epochs) as progress:
                if several:
                    result = runs.fit_runs(configs, data, workdir, progress=progress,
                                           **{**options, "log": say})
                else:
                    result = fit(config, data, workdir, params=untrained, progress=progress, **options)
        except (jax.errors.JaxRuntimeError, MemoryError) as e:
            if not (isinstance(e, MemoryError) or any(m in str(e) for m in OUT_OF_MEMORY)):
                raise
            lower = memory.advice(config, len(data.vocab), p.dp.num_shards, len(configs))
            raise ValueError(f"The machine ran out of memory training this run ({type(e).__name__}); the "
                             f"workdir keeps its last checkpoint; lower {lower}.") from None
        plot = workdir / metrics.PLOT
        if result.history and jax.process_index() == 0 and (not p.finished or not plot.exists()):
            metrics.plot_perplexity(result.history, plot)
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
            say(f"run {k} ({config_lib.label(c, configs)}): train perplexity {last['train_ppl']:.2f}, "
                f"val perplexity {last['val_ppl']:.2f}, {text!r}")
        table = runs.summary(result.history)
        finished = sum(why is None for why in result.stopped)
        count = f"{finished} of {len(configs)}" if finished < len(configs) else f"{len(configs)}"
        say(f"{count} runs, epoch {result.history[-1]['epoch']}:  " + "  ".join(
            f"{k} mean {v['mean']:.2f} (min {v['min']:.2f}, max {v['max']:.2f})" for k, v in table.items())
            + f"; wrote {workdir}")
        return
    last = result.history[-1]
    unit = "word" if data.vocab.kind == "word" else "character"
    say(f"epoch {last['epoch']}: train perplexity {last['train_ppl']:.2f} ({last['train_bpc']:.2f} bits "
        f"per {unit}), val perplexity {last['val_ppl']:.2f} ({last['val_bpc']:.2f} bits); wrote {workdir}")
    say(f"trained: {rnnjax.predict(model, result.state.params, data.vocab, data.prompt, 20)!r}")


def _stopped_at_start_up(signum, frame):
    _exit_now(f"Stopped by signal {signum} before training began (or after it ended); run the same command "
              "again to go on.", 128 + signum)


def main(argv=None, **parser_options) -> int:
    """The command; ``parser_options`` go to ``parse_args`` (``experiments.overfit``)."""
    # Until fit takes over the signals (it saves, then stops): one line and 130/143, not a traceback.
    previous = signal.signal(signal.SIGTERM, _stopped_at_start_up), signal.signal(signal.SIGINT,
                                                                                  signal.default_int_handler)
    try:
        return _main(argv, parser_options)
    except Interrupted as e:
        print(e, file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("Stopped by signal 2 (Ctrl-C), with nothing saved since the workdir's last checkpoint "
              "(if any); run the same command again to resume or start.", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def _main(argv, parser_options: dict) -> int:
    try:
        args = parse_args(argv, **parser_options)
        configs = config_lib.sweep_from_flags(args)
        runs.check_runs(configs)
    except ValueError as e:          # checks of the arguments alone, before JAX starts
        print(f"error: {e}", file=sys.stderr)
        return 1
    backend.keep_freed_memory()
    backend.use_cpu_cores(configs[0].batch_size)
    if not args.no_compilation_cache:
        backend.enable_compilation_cache()
    try:
        if (args.distributed or args.coordinator or args.num_processes
                or os.environ.get("JAX_COORDINATOR_ADDRESS")):
            parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        predict_only(args) if args.predict is not None else train(args, configs)
    except USAGE_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    status = main()
    if status:     # stopped or failed: at once, before orbax's threads, cut short, report at teardown
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
