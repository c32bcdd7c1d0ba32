"""``--init-from W``: a new run that starts from the parameters of the run trained in ``W`` (fine-tuning).

The new run, in the ``--workdir`` given, has the settings of ``W``'s run
(of run ``--run K`` among several trained together; its latest checkpoint,
or with ``--best`` its best), changed by the flags given: lists train runs
together, each from those parameters (``--seed`` then orders the batches).
It trains on the text the flags name (the Time Machine, or ``--text``), read
in ``W``'s vocabulary and cleaned as ``W``'s was (tokens it never saw are
``<unk>``, warned of); where the kind of text changes, the split is that
text's default (``--text``'s tail, or d2l's windows). It says the starting
parameters' validation perplexity on the new text. Its ``config.json``
records the checkpoint it started from (``init_from``), so the same command
resumes it, as does ``--workdir NEW`` alone (with ``--text PATH`` of a text of
one's own); once it holds a checkpoint, ``--init-from`` is not used (said).
``rnnjax.fit(..., params=restore(W))`` is the same from Python.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments import flags, settings as settings_lib
from rnnjax import checkpoint, config as config_lib, corpus, runs, saved
from rnnjax.spelling import flag
from rnnjax.state import check_params

# What W's parameters and vocabulary fix: a flag may only repeat it.
FIXED = {"cell": "parameters", "num_hiddens": "parameters", "num_layers": "parameters",
         "bidirectional": "parameters", "token": "vocabulary", "min_freq": "vocabulary"}


def check_flags(args: argparse.Namespace) -> None:
    """The checks of ``--init-from`` that need nothing but the flags (``cli.parse_args``)."""
    if args.init_from is None:
        return
    if args.predict is not None:
        raise ValueError("--init-from starts a training run from another run's parameters; --predict "
                         "generates from --workdir's: give one.")
    if args.workdir is None:
        raise ValueError(f"--init-from {args.init_from} trains a new run from that run's parameters: name "
                         "the new run's folder with --workdir NEW.")
    if Path(args.init_from).absolute() == args.workdir.absolute() or (
            args.workdir.exists() and Path(args.init_from).exists()
            and Path(args.init_from).samefile(args.workdir)):
        raise ValueError(f"--init-from and --workdir name the same folder, {args.workdir}: the new run needs "
                         "a folder of its own (the same command resumes it there).")
    if args.preset_given:
        raise ValueError(f"--init-from takes the settings of the run in {args.init_from}, changed by the "
                         "flags given; leave --preset out.")


def tuned(args: argparse.Namespace) -> tuple[list[config_lib.Config], Path, bool] | None:
    """What ``--init-from`` trains (``experiments.settings.settings``' answer), or ``None`` where the new
    workdir holds a checkpoint of the run started so: it resumes, ``--init-from`` not used
    (``args.init_note`` says so). ``args.init_source`` is what ``restored`` reads."""
    new, origin = args.workdir, Path(args.init_from)
    if not settings_lib.no_checkpoint(new):
        recorded = saved.init_from(new)
        if recorded is None or Path(recorded["workdir"]) != origin.absolute():
            began = "a run not started from another's parameters" if recorded is None else \
                f"a run started from {recorded['workdir']}"
            raise ValueError(f"{new} holds {began}, not from {origin}: use a new --workdir, or leave "
                             "--init-from out to resume it.")
        args.init_note = (f"--init-from is not used: {new} holds a checkpoint of the run started from "
                          f"{origin}'s step {recorded['step']}, which resumes")
        args.init_from = None
        return None
    try:
        found = saved.saved_runs(origin)
    except ValueError as e:
        raise ValueError(f"--init-from {origin}: {e}") from None
    if found is None or settings_lib.no_checkpoint(origin):
        what = "does not exist" if not origin.exists() else "holds no checkpoint of a run"
        raise ValueError(f"--init-from {origin} {what}; give the workdir of a trained run.")
    configs, vocab, _, together = found
    run = _run(args, origin, configs, together)
    base = configs[run or 0]
    if (args.text is not None) != settings_lib.own_text(vocab):     # the split follows the text trained on
        split = corpus.TEXT_DEFAULTS if args.text is not None else {k: getattr(config_lib.Config(), k)
                                                                    for k in ("val_fraction", "num_train",
                                                                              "num_val")}
        settings_lib.text_defaults(args, {k: v for k, v in split.items() if k != "preprocess"})
    for name, value in flags.given(args).items():
        if name in FIXED and value != getattr(base, name):
            raise ValueError(f"--init-from {origin} starts from its run's {FIXED[name]}, which "
                             f"{flag(name)} {value} does not fit (its run has "
                             f"{getattr(base, name)}); leave it out.")
    tuned = flags.sweep_from_flags(args, base)
    runs.check_runs(tuned)
    args.init_source = {"workdir": str(origin), "run": run, "best": args.best}
    return tuned, new, len(tuned) > 1


def recorded(args: argparse.Namespace) -> None:
    """A workdir whose run was started from another's parameters and stopped before its first checkpoint,
    resumed with its settings: it starts from them again, as its ``config.json`` records
    (``args.init_source``)."""
    found = saved.init_from(args.workdir)
    if found is not None and settings_lib.no_checkpoint(args.workdir) and not args.anew:
        args.init_source = {"workdir": found["workdir"], "step": found["step"], "run": found.get("run")}
        args.init_note = (f"{args.workdir} holds no checkpoint of its run, which started from "
                          f"{found['workdir']}'s step {found['step']} (its config.json's init_from): it "
                          "starts from there again")


def restored(args: argparse.Namespace, config: config_lib.Config) -> checkpoint.Restored:
    """The checkpoint ``args.init_source`` names, its parameters checked against ``config``'s: ``ValueError``
    (or ``CheckpointError``) in one sentence."""
    s = args.init_source
    try:
        run = checkpoint.restore(s["workdir"], step=s.get("step"), best=s.get("best", False), run=s["run"])
        check_params(run.params, config, len(run.vocab))
    except (checkpoint.CheckpointError, ValueError) as e:
        if "step" not in s:
            raise ValueError(f"--init-from {s['workdir']}: {str(e).removesuffix('.')}.") from None
        raise ValueError(f"{args.workdir}'s run started from {s['workdir']}'s step {s['step']} (its "
                         f"config.json's init_from), which cannot be read back ({str(e).removesuffix('.')}): "
                         "--init-from W starts it from the latest checkpoint of the run in W.") from None
    return run


def _run(args: argparse.Namespace, origin: Path, configs: list, together: bool) -> int | None:
    """Which of ``origin``'s runs starts the new one: ``--run K`` of several trained together."""
    if together and args.run is None:
        raise ValueError(f"--init-from {origin} holds {len(configs)} runs trained together; choose the one "
                         f"to start from with --run K, K from 0 to {len(configs) - 1}.")
    if not together and args.run not in (None, 0):
        raise ValueError(f"--init-from {origin} holds a single run; leave out --run {args.run}.")
    if together and not 0 <= args.run < len(configs):
        raise ValueError(f"--init-from {origin} holds {len(configs)} runs trained together: --run is from 0 "
                         f"to {len(configs) - 1}, not {args.run}.")
    return args.run if together else None
