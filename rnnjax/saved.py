"""The settings a workdir's run was trained with: its ``config.json``, else its newest readable checkpoint's,
refused where the two disagree. Read without a manager, creating nothing (``rnnjax.stored``); and a
checkpoint's settings checked against a resume's (``check_compatible``)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import jax

from rnnjax import meta as meta_lib, optimizers
from rnnjax.config import SWEEPABLE, Config
from rnnjax.spelling import as_flags, disagreement, plural, said, shown, spelt
from rnnjax.stored import CONFIG, CheckpointError, DamagedCheckpoint, UnknownCell, read_meta, steps
from rnnjax.state import abstract_train_state
from rnnjax.vocab import Vocab


def config_json(workdir: Path) -> dict | None:
    """``workdir``'s ``config.json``, if it is a regular file holding a JSON object; else ``None``."""
    path = Path(workdir) / CONFIG
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):     # a FIFO would hang the reader
            return None
        d = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):     # RecursionError: brackets nested thousands deep
        return None
    return d if isinstance(d, dict) else None


def config_settings(workdir: Path) -> tuple[list[Config], dict, bool] | None:
    """``meta.settings`` of ``workdir``'s ``config.json``, if it is a regular file, whole and valid;
    ``UnknownCell`` if it names a cell not registered here."""
    d = config_json(workdir)
    if d is None:
        return None
    cell = meta_lib.unregistered_cell(d, sealed=False)
    if cell is not None:
        raise UnknownCell(Path(workdir), cell)
    return meta_lib.settings(d)


def saved_runs(workdir: Path) -> tuple[list[Config], dict, str, bool] | None:
    """The configs of the run ``workdir`` holds (one, or one per run trained together), its vocabulary's
    JSON, where they were read, in words: from ``config.json``, written as a run starts, else from the
    newest checkpoint whose meta reads; and whether they were trained together (``rnnjax.fit_runs``, of one
    config too). ``None`` where neither is there, or reads. ``ValueError`` if the
    two disagree (a ``config.json`` edited by hand): the checkpoint is what would resume; ``UnknownCell``
    (a ``ValueError`` too) if either names a cell not registered here."""
    newest = _newest_settings(workdir)
    try:
        found = config_settings(workdir)
    except UnknownCell as e:        # config.json's alone: the checkpoint is what resumes
        if newest is None:
            raise
        found, differ = None, f"cell: config.json {e.cell!r}, which is not registered here, checkpoint " \
                              f"{newest[0][0].cell!r}"
    else:
        differ = _differences(found[:2], newest[:2]) if found and newest else ""
    if differ:
        raise ValueError(f"{Path(workdir) / 'config.json'} disagrees with the checkpoint step "
                         f"{newest[2]} that would resume ({differ}): put the checkpoint's values back "
                         "in it, or delete it to resume with them.")
    if found:
        return *found[:2], "its config.json", found[2]
    if newest:
        path = Path(workdir) / CONFIG
        why = ("missing" if not path.exists() else "unreadable" if not os.access(path, os.R_OK)
               else "damaged")
        source = f"its checkpoint step {newest[2]}, config.json being {why}"
        return *newest[:2], source, newest[3]
    return None


def _newest_settings(workdir: Path) -> tuple[list[Config], dict, int, bool] | None:
    """The configs and vocabulary of the newest checkpoint whose meta reads, its step, and whether its runs
    were trained together."""
    newest = _newest_meta(workdir)
    if newest is None:
        return None
    meta, step = newest
    configs = [Config.from_json(c) for c in meta.get("runs") or [meta["config"]]]
    return configs, meta["vocab"], step, "runs" in meta


def _newest_meta(workdir: Path) -> tuple[dict, int] | None:
    """The meta of the newest checkpoint whose meta reads, and its step."""
    try:
        for step in sorted(steps(workdir), reverse=True):
            try:
                return read_meta(workdir, step), step
            except DamagedCheckpoint:
                continue
    except UnknownCell:
        raise
    except (CheckpointError, OSError):      # the run's own checks say what is wrong, as it starts
        pass
    return None


def _differences(given: tuple[list[Config], dict], saved: tuple[list[Config], dict]) -> str:
    """What ``given`` (``config.json``'s) sets otherwise than ``saved`` (a checkpoint's), but for the fields
    a resumed run may change; '' if nothing."""
    (configs, vocab), (saved_configs, saved_vocab) = given, saved
    if len(configs) != len(saved_configs):
        return f"{len(configs)} run(s) against {len(saved_configs)}"
    differ = dict.fromkeys(f"{name}: config.json {getattr(c, name)!r}, checkpoint {getattr(s, name)!r}"
                           for c, s in zip(configs, saved_configs) for name in s.differences(c))
    other_vocab = Vocab.from_json(vocab).differs(Vocab.from_json(saved_vocab))
    return "; ".join([*differ, *(["the vocabulary"] if other_vocab else [])])


def check_compatible(meta: dict, config: Config, vocab: Vocab, workdir: Path, runs: tuple[Config, ...] = (),
                     steps_per_epoch: int | None = None) -> None:
    """A resumed run must be the same run: same config but for ``RESUMABLE`` fields (and the same ``runs``
    trained together, if several), the same vocabulary and steps an epoch."""
    saved_runs = [Config.from_json(c) for c in meta.get("runs", [])]
    if len(saved_runs) != len(runs) or any(s.differences(c) for s, c in zip(saved_runs, runs)):
        raise CheckpointError(f"{workdir} holds {which_runs(saved_runs)}, not {which_runs(list(runs))}. Use "
                              f"a new {spelt('workdir')}, or the checkpoint's settings to resume it.")
    saved = Config.from_json(meta["config"])
    diff = [disagreement(name, (getattr(config, name),), [getattr(saved, name)])
            for name in saved.differences(config)]
    if diff:
        raise CheckpointError(
            f"{workdir} holds a run of another configuration than the one given: {'; '.join(diff)}. Use a "
            f"new {spelt('workdir')}, or the checkpoint's settings to resume it"
            f"{_from_its_params(saved, config, len(Vocab.from_json(meta['vocab'])))}.")
    why = Vocab.from_json(meta["vocab"]).differs(vocab)
    if why:
        raise CheckpointError(f"{workdir} holds a run trained on {why}{text_read(workdir)}. Use a new "
                              f"{spelt('workdir')}, or the data it was trained on to resume it.")
    was, now = meta.get(meta_lib.OPTIMIZER), optimizers.registered_as(config.optimizer)     # older: unsaid
    if isinstance(was, str) and now is not None and was != now:     # the same state, stepped otherwise
        raise CheckpointError(f"{workdir} holds a run trained with rnnjax.OPTIMIZERS[{config.optimizer!r}] = "
                              f"{was}, which is {now} here: register the one it was trained with to resume "
                              f"it, or use a new {spelt('workdir')}.")
    if steps_per_epoch is not None and meta.get("steps_per_epoch", steps_per_epoch) != steps_per_epoch:
        raise CheckpointError(f"{workdir} holds a run of {meta['steps_per_epoch']} steps an "
                              f"epoch; this data has {steps_per_epoch}. Use a new {spelt('workdir')}, or "
                              "the checkpoint's data to resume it.")


def init_from(workdir: Path, strict: bool = False) -> dict | None:
    """The checkpoint the workdir's run was fine-tuned from (``Restored.address``: workdir, step, run), as
    its newest checkpoint's meta records it, else its ``config.json``; ``None`` where neither does, or
    one cannot be read (``strict``: a ``ValueError`` saying why)."""
    try:
        newest = _newest_meta(workdir)
    except UnknownCell:         # the run's own checks say so
        newest = None
    if newest is not None and meta_lib.INIT_FROM in newest[0]:      # checked as the meta was read
        return newest[0][meta_lib.INIT_FROM]
    return config_init_from(workdir, strict)


def config_init_from(workdir: Path, strict: bool = False) -> dict | None:
    """``init_from`` as the workdir's ``config.json`` alone records it (a meta at hand lacks it)."""
    found = (config_json(workdir) or {}).get(meta_lib.INIT_FROM)
    why = None if found is None else meta_lib.init_from_problem(found)
    if why and strict:
        raise ValueError(f"{Path(workdir) / CONFIG}'s init_from cannot be read ({why})")
    return None if why else found


def text_path(workdir: Path) -> str | None:
    """The file of one's own text the workdir's ``config.json`` names (its run was read from it); ``None``."""
    text = (config_json(workdir) or {}).get("text")
    return text if isinstance(text, str) else None


def text_read(workdir: Path) -> str:
    """``, read from PATH``: the file of one's own text the workdir's ``config.json`` names, '' where none."""
    text = text_path(workdir)
    return "" if text is None else f", read from {said(text)}"


def _from_its_params(saved: Config, config: Config, vocab_size: int) -> str:
    """How to train on from a run's parameters with other settings, from Python (the command line says
    --init-from, ``experiments.flags``), where they fit those (lr, clip; not another cell or size)."""
    if as_flags():
        return ""
    try:        # what fit's check_params compares the parameters given with
        shapes = [jax.tree.map(lambda x: x.shape, abstract_train_state(c, vocab_size).params)
                  for c in (saved, config)]
    except Exception:       # a cell's own init failing here is no reason to hide the refusal
        return ""
    return (" (or train a new workdir from its parameters: fit(config, data, new_workdir, "
            "params=rnnjax.checkpoint.restore(workdir)))") if shapes[0] == shapes[1] else ""


def which_runs(runs: list[Config]) -> str:
    """'a single run' (``runs`` empty), else how many were trained together (``fit_runs``) and their sweep."""
    return f"{plural(len(runs), 'run')} trained together ({_sweep(runs)})" if runs else "a single run"


def _sweep(configs: list[Config]) -> str:
    return "; ".join(f"{k} {', '.join(map(shown, dict.fromkeys(getattr(c, k) for c in configs)))}"
                     for k in SWEEPABLE)
