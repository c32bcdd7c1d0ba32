"""What a command of ``experiments.timemachine`` trains, and where: the settings its flags ask for.

``settings(args)`` is what a run trains: the preset changed by the flags, or,
given a ``--workdir`` that holds a run (and no ``--preset``), that run's own
settings, read from it, the flags given checked against them; so ``--workdir
W --epochs 200`` resumes a run made with any preset and flags (runs trained
together, of one config too, as such; a text of one's own read again from the
file its ``config.json`` names, its SHA-1 checked). A workdir whose run left
no checkpoint holds nothing to resume: flags that ask for other settings start
anew there.
``default_workdir`` names the folder the same command finds again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import warnings
from pathlib import Path

from experiments import fine_tune, flags
from rnnjax import checkpoint, config as config_lib, corpus, runs, source, spelling
from rnnjax.saved import saved_runs, text_path, text_read, which_runs
from rnnjax.stored import UnknownCell
from rnnjax.vocab import Vocab

# What a run says as it starts anew in a workdir whose earlier run left its config.json and no checkpoint.
ANEW = "{} holds no checkpoint of its earlier run: starting anew with {}"


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
    named = preset if text is None else re.sub(r"[^\w.-]", "_", Path(text).stem)
    key = changed if text is None else [str(Path(text).resolve()), changed]
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    # Not hidden (.notes), nor read as a flag (-x): a name starts with neither; such a run made before
    # this rule is found where it is.
    earlier = Path("runs") / f"{named}-{digest}"
    name = named.lstrip(".-") or "text"
    return earlier if name != named and earlier.is_dir() else Path("runs") / f"{name}-{digest}"


@spelling.flag_spelling()        # its messages name the command's flags
def settings(args: argparse.Namespace) -> tuple[list[config_lib.Config], Path, bool]:
    """The runs to train (one, or several in one program), their workdir, and whether they train together
    (``rnnjax.fit_runs``: several, or the one run of a workdir trained so): the preset changed by the flags
    given; or, given a ``--workdir`` that holds a run and no ``--preset``, that run's settings, changed by
    the resumable flags (``--epochs``), any other flag given checked against them. A workdir whose earlier
    run left no checkpoint has nothing to resume: flags (or a ``--preset``) that ask for other settings
    start a new run there (``args.anew`` says so), from the parameters it started from where it was
    fine-tuned (``experiments.fine_tune``). ``ValueError`` in one sentence; reads nothing but the workdir's
    ``config.json`` (or its newest checkpoint's meta) and its checkpoints' steps."""
    configs, workdir, together = _settings(args)
    fine_tune.recorded(args, configs, workdir)
    given = flags.given(args)
    if args.settings_from is None and "optimizer" in given and "lr" not in given and configs[0].lr > 0.1 \
            and configs[0].optimizer == "adam":      # the preset's rate is SGD's: Adam diverges at it
        warnings.warn(f"--optimizer adam trains at --lr {configs[0].lr:g}, the rate the settings give SGD; "
                      "Adam's are nearer 0.001 to 0.01 (--lr 0.01)")
    return configs, workdir, together


def _settings(args: argparse.Namespace) -> tuple[list[config_lib.Config], Path, bool]:
    saved, args.anew, base = None, None, None
    if args.init_from is not None:
        started = fine_tune.tuned(args)     # None: the new workdir holds a checkpoint, which resumes
        if started is not None:
            return started
    if args.workdir is not None and not args.preset_given:
        saved = _saved(args)
    if saved is not None and no_checkpoint(args.workdir):
        try:
            return _resumed(args, saved)
        except ValueError:             # other settings than the flags': nothing trained is left behind
            if args.text is None and own_text(saved[1]):     # no flag asked for another text: its own
                raise
            if (args.text is not None) == own_text(saved[1]):      # the same kind of text
                listed = any(getattr(args, k) is not None for k in config_lib.SWEEPABLE)
                if len(saved[0]) > 1 and not listed:        # runs trained together: each of them
                    fixed = {k: v for k, v in flags.given(args).items() if k not in config_lib.SWEEPABLE}
                    configs = [c.replace(**fixed) for c in saved[0]]
                    runs.check_runs(configs)
                    args.anew = ANEW.format(args.workdir, "its runs' settings changed by the flags")
                    return configs, args.workdir, True
                base, said = saved[0][0], "its settings changed by the flags"
            else:
                said = f"--preset {args.preset}'s settings changed by the flags"
            args.anew = ANEW.format(args.workdir, said)
    if saved is None or args.anew:
        if args.text is not None and base is None:     # the preset, changed by these, then by the flags
            text_defaults(args, corpus.TEXT_DEFAULTS)
        configs = flags.sweep_from_flags(args, base)
        runs.check_runs(configs)
        together = len(configs) > 1
        if args.workdir is not None and args.preset_given:
            together = _check_preset_fits(args, configs) or together
        return configs, args.workdir or default_workdir(args.preset, configs, args.text), together
    return _resumed(args, saved)


def text_defaults(args: argparse.Namespace, defaults: dict) -> None:
    """``defaults`` (``corpus.TEXT_DEFAULTS``'s, of ``--text``) for the flags not given; ``ValueError`` where
    ``--val-fraction 0`` is given without the ``--num-train`` it then needs."""
    if args.val_fraction == 0 and args.num_train is None and defaults.get("num_train") == 0:
        raise ValueError("--val-fraction 0 splits --text as d2l does (the first --num-train windows train, "
                         "the next --num-val validate), and --text's default --num-train 0 (every window) "
                         "leaves none to validate: add --num-train N, or leave --val-fraction out.")
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


@spelling.flag_spelling()
def trained_in(args: argparse.Namespace) -> Path:
    """The workdir a training command of these flags writes (``settings``'), for ``--predict`` without
    ``--workdir``: with ``--sample``, ``--seed`` seeds the draws, not a run."""
    return settings(argparse.Namespace(**{**vars(args), "seed": None if args.sample else args.seed}))[1]


def _saved(args: argparse.Namespace, anew: str | None = None) -> tuple | None:
    """``saved_runs(args.workdir)``; of a cell not registered here, with no checkpoint: ``None`` where
    ``--cell`` (or, ``anew`` given, ``--preset``) asks for a cell (``args.anew`` says it starts anew),
    else a ``ValueError`` naming both ways."""
    try:
        saved = saved_runs(args.workdir)
        if saved is not None and not no_checkpoint(args.workdir):     # a fine-tuned run's: another run's
            args.saved_vocab = Vocab.from_json(saved[1])
        return saved
    except UnknownCell as e:
        if not no_checkpoint(args.workdir):     # a cell typed (--cell, --preset's) other than the run's
            asked = args.cell if args.cell is not None else \
                config_lib.PRESETS[args.preset].cell if args.preset_given else None
            raise UnknownCell(args.workdir, e.cell, e.registered, asked) from None
        if args.cell is None and anew is None:
            raise ValueError(f"{args.workdir} holds no checkpoint of its earlier run, whose cell {e.cell!r} "
                             "is not registered here: give --cell (or --preset) to start anew there, or "
                             f"register it (rnnjax.CELLS[{e.cell!r}] = <the cell class>, in a script that "
                             "then calls experiments.timemachine.main()) to take its settings.") from None
        preset = f"--preset {args.preset}'s settings changed by the flags"
        args.anew = f"{anew or ANEW.format(args.workdir, preset)} (its cell {e.cell!r} is not registered " \
                    "here)"
        return None


def _resumed(args: argparse.Namespace, saved: tuple) -> tuple[list[config_lib.Config], Path, bool]:
    """``settings`` of the run ``saved`` in ``args.workdir`` (``rnnjax.saved.saved_runs``'s)."""
    configs, vocab, source, together = saved
    if own_text(vocab) and args.text is None:
        recorded = text_path(args.workdir)
        if recorded is None or not os.path.isfile(recorded):
            raise ValueError(f"{args.workdir} holds a run trained on a text of your own (SHA-1 "
                             f"{vocab['text_sha1'][:12]}...{text_read(args.workdir)}): give that file again, "
                             "--text PATH, to resume it.")
        args.text = recorded           # its SHA-1 is checked as the run starts
        args.text_note = f"text: {recorded}, as its config.json records"
    if "text_sha1" not in vocab and args.text is not None:
        raise ValueError(f"{args.workdir} holds a run trained on the Time Machine, not on --text: leave "
                         "--text out to resume it, or use a new --workdir.")
    resumed = flags.resumed_from_flags(args, configs, str(args.workdir))
    args.settings_from = source                # said as the run starts
    return resumed, args.workdir, together


def own_text(vocab: dict) -> bool:
    """Whether a saved vocabulary's run trained on a text of the user's own: the Time Machine tokenized
    otherwise than d2l (--token word, --preprocess raw) names its SHA-1 too."""
    return vocab.get("text_sha1") not in (None, source.SHA1, source.PREPROCESSED_SHA1)


def no_checkpoint(workdir: Path) -> bool:
    """Whether ``workdir`` holds no checkpoint (a run stopped before its first save); a checkpoints folder
    that cannot be read counts as one (the run's start says what is wrong with it)."""
    try:
        return not checkpoint.steps(workdir)
    except checkpoint.CheckpointError:
        return False


def _check_preset_fits(args: argparse.Namespace, configs: list[config_lib.Config]) -> bool:
    """A ``--workdir`` that holds a run of other settings than ``--preset`` (and the flags given) asks for:
    ``ValueError`` saying so, the preset named as what set them (the user typed none of its values); with
    no checkpoint of that run, ``args.anew`` says that --preset's settings changed by the flags start anew.
    Whether the runs of ``configs`` were trained together there (``rnnjax.fit_runs``, of one config too)."""
    anew = ANEW.format(args.workdir, f"--preset {args.preset}'s settings changed by the flags")
    saved = _saved(args, anew)
    if saved is None:
        return False
    have = saved[0]
    asks = " and the flags given ask" if flags.given(args) else " asks"
    fix = "Leave --preset{} out to train it on with its own settings, or use a new --workdir."
    names = dict.fromkeys(n for c, s in zip(configs, have) for n in s.differences(c))
    if (names or len(have) != len(configs)) and no_checkpoint(args.workdir):
        args.anew = anew
    elif len(have) != len(configs):
        ask = which_runs(configs if len(configs) > 1 else [])
        listed = " (and the lists of --seeds, --lr, --clip)" * (len(configs) > 1)
        raise ValueError(f"{args.workdir} holds {which_runs(have if saved[3] else [])}, not {ask} as "
                         f"--preset {args.preset}{asks} for. {fix.format(listed)}")
    elif names:
        differ = [spelling.disagreement(n, list(dict.fromkeys(getattr(c, n) for c in configs)),
                                        list(dict.fromkeys(getattr(s, n) for s in have))) for n in names]
        raise ValueError(f"{args.workdir} holds a run of other settings than --preset {args.preset}{asks} "
                         f"for: {'; '.join(differ)}. {fix.format('')}")
    return saved[3] and not args.anew
