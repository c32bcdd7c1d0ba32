"""``--init-from W``: a new run that starts from the parameters of the run trained in ``W`` (fine-tuning).

The new run, in the ``--workdir`` given, has the settings of ``W``'s run (of
run ``--run K`` among several trained together; its latest checkpoint, or
with ``--best`` its best), changed by the flags given: lists train runs
together, each from those parameters (``--seed`` then orders the batches).
It trains on the text the flags name (``--text``, or ``--data``: the Time
Machine), else on ``W``'s (a text of one's own as its ``config.json``
records it, its SHA-1 checked; said; the Time Machine from the file ``W``
read, where ``$RNNJAX_TIMEMACHINE`` names none), read in ``W``'s vocabulary
and cleaned as ``W``'s was (tokens it never saw are ``<unk>``, warned of);
where the kind of text changes, the split is that text's default
(``--text``'s tail, or d2l's windows). It says the starting parameters'
validation perplexity on the new text. Its ``config.json`` records the
checkpoint it started from (``init_from``, in every meta too), so the same
command resumes it, as does ``--workdir NEW`` alone; once it holds a
checkpoint, ``--init-from`` is not used (said). Killed before its first
checkpoint, it starts again from that very checkpoint (its meta's checksum
checked), or says why it cannot and where it starts instead.
``rnnjax.fit(..., params=restore(W))`` is the same from Python.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from experiments import flags, settings as settings_lib
from rnnjax import checkpoint, config as config_lib, corpus, meta as meta_lib, restore, runs, saved, source
from rnnjax.spelling import said, spelt
from rnnjax.state import check_params
from rnnjax.stored import UnknownCell


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
        found = saved.init_from(new)
        began = "a run not started from another's parameters" if found is None else \
            f"a run started from {_named(found)}"
        if found is None or not _same(found, origin, found.get("run") if args.run is None else args.run):
            asked = origin if args.run is None else f"{origin}'s run {args.run}"
            raise ValueError(f"{new} holds {began}, not from {asked}: use a new --workdir, or leave "
                             "--init-from out to resume it.")
        args.init_note = f"--init-from is not used: {new} holds a checkpoint of {began}, which resumes"
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
    if args.text is None and args.data is None:         # its text: one of the settings the flags change
        if settings_lib.own_text(vocab):
            _its_text(args, origin, vocab)
        elif vocab.get("text_sha1") == source.SHA1:
            _its_copy(args, origin)
    if (args.text is not None) != settings_lib.own_text(vocab):     # the split follows the text trained on
        d2l = ("val_fraction", "num_train", "num_val", "steps_per_epoch")
        split = {**corpus.TEXT_DEFAULTS, "steps_per_epoch": 0} if args.text is not None else {
            k: getattr(config_lib.Config(), k) for k in d2l}
        settings_lib.text_defaults(args, {k: v for k, v in split.items() if k != "preprocess"})
    tuned = flags.sweep_from_flags(args, base)
    runs.check_runs(tuned)
    unfit = _unfit(tuned[0], base)
    if unfit:
        raise ValueError(f"--init-from {origin}: {unfit}; leave it out.")
    args.init_source = {"workdir": str(origin), "run": run, "best": args.best}
    found = saved.init_from(new)
    if found is not None:           # the same command after a kill: the same start, where it still is
        where = _started(new, found)
        asked = f"this run starts from {origin}'s {'best' if args.best else 'latest'}"
        gone = _gone(found) if _same(found, origin, run) else f"not {origin}'s run {run or 0}"
        if gone is None:
            args.init_source = {**_source(found), "then": args.init_source}
            args.init_note = f"{where}: this run starts from there again (a new --workdir: from what " \
                             "--init-from asks now)"
        else:
            args.init_note = f"{where}, {gone}: {asked}"
    return tuned, new, len(tuned) > 1


def _its_text(args: argparse.Namespace, origin: Path, vocab: dict) -> None:
    """``--text``: the file of one's own that ``origin``'s run trained on, as its config.json records it
    (said), where no flag names a text; ``ValueError`` where it is not there, or holds another text now."""
    (recorded, now), sha1 = _recorded(origin), vocab["text_sha1"]
    if now != sha1:
        why = ("its workdir records no file of it" if recorded is None else
               f"{said(recorded)} is not there" if now is None else f"{said(recorded)} holds another now "
               f"(SHA-1 {now[:12]}...)")
        raise ValueError(f"--init-from {origin}: its run trained on a text of your own (SHA-1 "
                         f"{sha1[:12]}...), and {why}: name the text to train on, --text PATH (or the Time "
                         "Machine, --data PATH).")
    args.text = recorded
    args.text_note = f"text: {recorded}, the text {origin}'s run trained on (--text PATH for another)"


def _its_copy(args: argparse.Namespace, origin: Path) -> None:
    """``--data``: the Time Machine's file ``origin``'s run read as a text (``--text``, or other tokens than
    d2l's), where neither ``$RNNJAX_TIMEMACHINE`` nor a flag names one and that file is still it: no
    download to need."""
    if os.environ.get(source.ENV_PATH):
        return
    recorded, now = _recorded(origin)
    if now != source.SHA1:
        return
    args.data = recorded
    args.text_note = f"text: the Time Machine, from {recorded}, as {origin}'s run read it"


def _recorded(origin: Path) -> tuple[str | None, str | None]:
    """The text file ``origin``'s config.json records, and its SHA-1 now (``None``: none recorded, or gone,
    a folder, unreadable)."""
    recorded = saved.text_path(origin)
    try:
        return recorded, None if recorded is None else source.sha1_of(recorded)
    except OSError:
        return recorded, None


def _gone(found: dict) -> str | None:
    """Why the checkpoint a recorded ``init_from`` names is not there, the same one, in words; ``None``."""
    try:
        meta = checkpoint.read_meta(Path(found["workdir"]), found["step"])
    except (checkpoint.CheckpointError, OSError):
        return "which it no longer holds, whole"
    if found.get(meta_lib.CHECKSUM) not in (None, meta.get(meta_lib.CHECKSUM)):
        return "whose step is another run's now (trained anew there)"
    return None


def _same(found: dict, origin: Path, run: int | None) -> bool:
    """Whether the recorded ``init_from`` names ``origin``'s run ``run`` (of a single run: 0 or None)."""
    return Path(found["workdir"]).resolve() == origin.resolve() and (run or 0) == found.get("run", 0)


def _source(found: dict) -> dict:
    """What ``restored`` reads of a recorded ``init_from``: that very checkpoint."""
    return {"workdir": found["workdir"], "step": found["step"], "run": found.get("run"),
            "checksum": found.get(meta_lib.CHECKSUM)}


def recorded(args: argparse.Namespace, configs: list[config_lib.Config], workdir: Path) -> None:
    """A new run (``configs``) in a workdir whose run was started from another's parameters and left no
    checkpoint, trained without ``--init-from``: from those parameters again, as the workdir records
    (``args.init_source``), where they fit ``configs``; else from its own initialization. Said either way."""
    if args.init_from is not None or args.init_source is not None or not settings_lib.no_checkpoint(workdir):
        return
    try:
        found = saved.init_from(workdir, strict=True)
    except ValueError as e:
        args.init_note = f"{e}: this run starts from its own initialization"
        return
    if found is None:
        return
    where = _started(workdir, found)
    try:                # the source's settings: restored reads its parameters, or says why it cannot
        source = saved.saved_runs(Path(found["workdir"]))
        ran = None if source is None else source[0][min(found.get("run") or 0, len(source[0]) - 1)]
        unfit = "" if ran is None else _unfit(configs[0], ran)
    except UnknownCell as e:
        unfit = f"its cell {e.cell!r} is not registered here"
    except ValueError:
        unfit = ""
    if unfit:
        args.init_note = f"{where}; {unfit}: this run starts from its own initialization"
        return
    args.init_source = _source(found)
    args.init_note = f"{where}: this run starts from there again"


def _unfit(config: config_lib.Config, source: config_lib.Config) -> str:
    """What of ``config`` the parameters and vocabulary of ``source``'s run cannot take, in words
    (``--num-hiddens 64 does not fit its parameters (--num-hiddens 16)``); '' if nothing."""
    for name, what in flags.FIXED.items():
        if getattr(config, name) != getattr(source, name):
            return (f"{spelt(name, getattr(config, name))} does not fit its {what} "
                    f"({spelt(name, getattr(source, name))})")
    return ""


def _started(workdir: str | Path, found: dict) -> str:
    """What a recorded ``init_from`` says of ``workdir``'s run, which left no checkpoint."""
    return (f"{workdir}'s run, which left no checkpoint, started from {_named(found)} (its config.json's "
            "init_from)")


def _named(found: dict) -> str:
    """A recorded ``init_from`` in words: ``W's step N`` (``W's run K at step N``)."""
    run = found.get("run")
    return f"{found['workdir']}'s {'' if run is None else f'run {run} at '}step {found['step']}"


def restored(args: argparse.Namespace, config: config_lib.Config) -> checkpoint.Restored:
    """The checkpoint ``args.init_source`` names, its parameters checked against ``config``'s: ``ValueError``
    (or ``CheckpointError``) in one sentence."""
    s = args.init_source
    try:
        if "step" in s and not Path(s["workdir"]).is_dir():
            raise checkpoint.CheckpointError(f"{s['workdir']} is no longer a workdir")
        try:
            run = checkpoint.restore(s["workdir"], step=s.get("step"), best=s.get("best", False),
                                     run=s["run"])
        except checkpoint.DamagedCheckpoint as e:
            if "step" in s:
                raise
            run = checkpoint.restore(s["workdir"], best=s["best"], run=s["run"], fallback=True)
            _note(args, f"{s['workdir']}'s checkpoint step {e.step} is damaged ({e.reason}): this run starts "
                        f"from step {run.step}")
        if s.get("checksum") not in (None, run.meta.get(meta_lib.CHECKSUM)):
            raise checkpoint.CheckpointError(f"that checkpoint is another run's now: {s['workdir']} was "
                                             "trained anew since")
        check_params(run.params, config, len(run.vocab))
    except (checkpoint.CheckpointError, ValueError) as e:
        why = str(e).removesuffix(".")
        why = why[0].lower() + why[1:] if why[:2].istitle() else why        # a sentence, now a clause
        if "step" not in s:
            raise ValueError(f"--init-from {s['workdir']}: {why}.") from None
        if "then" in s:         # the same command: what --init-from asks for, as the note says
            args.init_source = s["then"]
            args.init_note = None       # this line says it instead
            _note(args, f"{_started(args.workdir, s)}, which cannot be read back ({why}): this run starts "
                        f"from {s['workdir']}'s {'best' if s['then']['best'] else 'latest'}")
            return restored(args, config)
        run = "" if s.get("run") is None else " --run K"
        raise ValueError(f"{args.workdir}'s run started from {_named(s)} (its config.json's init_from), "
                         f"which cannot be read back ({why}): --init-from W{run} starts it from the newest "
                         f"good checkpoint of the run in W.") from None
    return run


def _note(args: argparse.Namespace, line: str) -> None:
    """``line`` added to what the run says of where it starts (``args.init_note``)."""
    args.init_note = line if not args.init_note else f"{args.init_note}\n{line}"


def _run(args: argparse.Namespace, origin: Path, configs: list, together: bool) -> int | None:
    """Which of ``origin``'s runs starts the new one: ``--run K`` of several trained together."""
    try:
        run = restore.chosen_run(len(configs) if together else 0, origin, args.run)
    except checkpoint.CheckpointError as e:
        raise ValueError(f"--init-from {e}") from None
    return run if together else None
