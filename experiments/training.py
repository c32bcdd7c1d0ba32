"""The command's training: a run (or runs trained together) checked, its text read, planned under the
workdir's lock, said, trained and plotted (``experiments.timemachine`` parses and handles the signals)."""

from __future__ import annotations

import argparse
import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import jax

import rnnjax
from experiments import cli, fine_tune
from rnnjax import arguments, checkpoint, config as config_lib, corpus, memory, metrics, runs, source
from rnnjax.data import WindowedText
from rnnjax.plot import plot_perplexity
from rnnjax.start import planned
from rnnjax.train import fit

OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Out of memory")      # in XLA's errors


@contextlib.contextmanager
def _resuming(args: argparse.Namespace, workdir: Path, errors: type = ValueError) -> Iterator[None]:
    """``errors`` of a resumed run's settings saying where a setting read from the workdir comes from."""
    try:
        yield
    except errors as e:
        if args.settings_from is None:
            raise
        raise ValueError(f"resuming the run in {workdir} (its saved settings, the flags given applied): "
                         f"{e}") from None


def _data(args: argparse.Namespace, config: config_lib.Config, workdir: Path,
          start: checkpoint.Restored | None) -> WindowedText:
    """The text the run trains on, in the tokens of the run it fine-tunes (``start``) or resumes."""
    with _resuming(args, workdir, config_lib.ConfigError):     # a cell's step on the text's width, say
        try:
            data = corpus.load(config, text=args.text, data=args.data, vocab=start and start.vocab)
        except source.NotTheTimeMachine as e:
            if args.settings_from is not None:          # a Time Machine run resumed: --text is not for it
                raise
            raise source.DataError(f"{str(e).removesuffix('.')}; a text of your own trains with --text "
                                   "PATH.") from None
        resumed = None if args.anew else args.saved_vocab
        if resumed is not None and resumed.differs(data.vocab) == "another vocabulary":
            # The same text in another run's tokens: a run fine-tuned from that one (corpus.load's vocab),
            # whose <unk> share corpus.load would warn of again at each resume.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = corpus.load(config, text=args.text, data=args.data, vocab=args.saved_vocab)
    return data


def _then(say: Callable[[str], object], line: str) -> Callable[[str], None]:
    """``say``, which says ``line`` after the first line it says (``fit_runs``' plan, as a run's is said)."""
    pending = [line]

    def saying(text: str) -> None:
        say(text)
        while pending:
            say(pending.pop())
    return saying


def train(args: argparse.Namespace, configs: list[config_lib.Config], workdir: Path, several: bool) -> None:
    """Trains ``configs`` in ``workdir``, ``several`` trained together (``rnnjax.fit_runs``; of one too)."""
    config = configs[0]
    say = print if jax.process_index() == 0 else (lambda *a, **k: None)
    # What needs no data is checked before a large --text is read and tokenized.
    together = configs if several else None
    with _resuming(args, workdir):
        arguments.check_arguments(config, workdir, devices=args.devices, runs=together)
    if args.text_note:          # before the text is read (and its SHA-1 found another's)
        say(args.text_note)
    start = None if args.init_source is None else fine_tune.restored(args, config)
    data = _data(args, config, workdir, start)
    if args.settings_from is not None:      # what follows the text: a cell's step on its width, runs' states
        with _resuming(args, workdir):
            arguments.check(config, data, workdir, devices=args.devices, runs=together)
    # The plan is made under the workdir's lock, held until the plot is written; said once it is held.
    with planned(config, data, workdir, devices=args.devices, runs=together) as p:
        if args.settings_from is not None:
            say(f"settings: those of the run in {workdir} ({args.settings_from}), the flags given checked "
                "against them")
        for line in (args.anew, args.init_note):
            if line:
                say(line)
        if not several:               # fit_runs says it, and then which runs stop as they stop
            say(p.describe())
            say(data.describe())
        model, untrained = rnnjax.make_model(config, len(data.vocab)), None
        if start is not None and p.step is None:
            untrained = start
            here = rnnjax.score.perplexity(config, data.vocab, start.params, data)
            say(f"starting from {start.workdir}'s {cli.describe_checkpoint(start, here)}: "
                f"{rnnjax.predict(model, start.params, data.vocab, data.prompt, 20)!r}")
        elif p.step is None and not several:   # fit starts from these, not from a second init (and compile)
            untrained = rnnjax.create_train_state(config, len(data.vocab)).params
            say(f"untrained: {rnnjax.predict(model, untrained, data.vocab, data.prompt, 20)!r}")
        options = dict(devices=args.devices, checkpoint_every=args.checkpoint_every, keep=args.keep, log=None,
                       plan=p)
        try:
            show = jax.process_index() == 0 and not args.no_progress and not p.finished
            with cli.progress_output(show, config.epochs) as progress:
                if several:
                    result = runs.fit_runs(configs, data, workdir, progress=progress, params=start,
                                           **{**options, "log": _then(say, data.describe())})
                else:
                    result = fit(config, data, workdir, params=untrained, progress=progress, **options)
        except (jax.errors.JaxRuntimeError, MemoryError) as e:
            if not (isinstance(e, MemoryError) or any(m in str(e) for m in OUT_OF_MEMORY)):
                raise
            lower = memory.advice(config, len(data.vocab), p.dp.num_shards, len(configs))
            raise ValueError(f"The machine ran out of memory training this run ({type(e).__name__}); the "
                             f"workdir keeps its last checkpoint; lower {lower}.") from None
        plot, records = workdir / metrics.PLOT, workdir / metrics.FILENAME
        # A finished run's plot is drawn again where a stop cut it short: missing, or older than its records.
        if result.history and jax.process_index() == 0 and (
                not p.finished or not plot.exists() or plot.stat().st_mtime_ns < records.stat().st_mtime_ns):
            plot_perplexity(result.history, plot)
    cli.say_trained(say, result, configs, several, model, data, workdir, p.finished)
    if jax.process_index():         # its lines are process 0's
        print(f"process {jax.process_index()} of {jax.process_count()}: done; process 0 said how the run "
              f"went {'in' if p.finished else 'and wrote'} {workdir}")
