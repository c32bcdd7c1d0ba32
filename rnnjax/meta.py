"""A checkpoint's ``meta`` item, sealed with a checksum and checked like its arrays.

The meta is JSON: the format, the config (and the configs of runs trained
together), what its cell's name was registered as (``cells.registered_as``),
the vocabulary, the data-order position, the validation perplexity, the
CRC-32 of every array of the state, and a CRC-32 of all of that
(``meta_checksum``). ``problem(meta, step)`` says in a clause what is
wrong with a meta read back, or ``None``: a changed digit (the checksum), a
missing, unknown or ill-typed key, a position that does not lead to its step
(``step == epoch * steps_per_epoch + batch``). ``unregistered_cell(meta)``
names a cell of one's own that the meta's run was trained with and
``rnnjax.cells.CELLS`` lacks here: not damage; nor is what ``newer(meta)``
names, written by a newer rnnjax. Checkpoints of older formats
(1: before the meta had its checksum and its steps per epoch; 2: before the
position kept per-key sums of every run's metrics) are checked for what they
hold; ``rnnjax.position.Position.read`` reads any of them. A meta says how its run computed
(``rnnjax.computing``) and which step functions trained it, from which step
(``trained_by``; older metas do not say).
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from rnnjax import optimizers
from rnnjax.cells import CELLS, registered_as
from rnnjax.computing import HOW, SINCE
from rnnjax.config import KERNELS, Config, is_int, is_number
from rnnjax.position import position_problem
from rnnjax.vocab import Vocab

FORMAT = 3                    # 2: the meta carries its own checksum; 3: metric sums per key, per run
READABLE = (1, 2, 3)
CHECKSUM = "meta_checksum"
REGISTERED = "cell_registered"    # what CELLS[config.cell] was (cells.registered_as): a partial's arguments
OPTIMIZER = "optimizer_registered"      # what OPTIMIZERS[config.optimizer] was (optimizers.registered_as)
TRAINED_BY = "trained_by"       # [first step, the step function's name] of each step that trained it (writer)
INIT_FROM = "init_from"         # the checkpoint a fine-tuned run started from (Restored.address)
# Every config ever saved has these; a config missing one is damaged, not an older version.
_CORE = ("batch_size", "num_steps", "num_hiddens", "cell", "num_layers", "lr", "clip", "epochs", "seed",
         "num_train", "num_val")


def _crc(meta: dict) -> str:
    text = json.dumps({k: v for k, v in meta.items() if k != CHECKSUM}, sort_keys=True,
                      separators=(",", ":"), allow_nan=False)
    return f"{zlib.crc32(text.encode()):08x}"


def make(config: Config, vocab: Vocab, position: dict, steps_per_epoch: int, **extra: Any) -> dict:
    """A meta, unsealed (``checkpoint.save`` adds the arrays' checksums, then ``seal``s it)."""
    return {"format": FORMAT, "config": config.to_json(), "vocab": vocab.to_json(), "position": position,
            "steps_per_epoch": steps_per_epoch, REGISTERED: registered_as(config.cell),
            OPTIMIZER: optimizers.registered_as(config.optimizer), **extra}


def seal(meta: dict) -> dict:
    """``meta`` with its checksum."""
    return {**meta, CHECKSUM: _crc(meta)}


def _config(d: Any, what: str) -> tuple[Config | None, str | None]:
    if not isinstance(d, dict):
        return None, f"lacks its {what}"
    missing = [k for k in _CORE if k not in d]
    if missing:
        return None, f"has a {what} without {', '.join(missing)}"
    try:        # fields a newer rnnjax wrote: read_meta names them (newer), config.json passes them over
        return Config.from_json({k: v for k, v in d.items() if k not in Config.unknown_fields(d)}), None
    except Exception as e:                 # ConfigError, TypeError: any bad value
        return None, f"has a {what} that is not a valid config ({str(e).rstrip('.')})"


def _vocab(d: Any) -> str | None:
    tokens = d.get("idx_to_token") if isinstance(d, dict) else None
    if not (isinstance(tokens, list) and all(isinstance(t, str) and t for t in tokens)):
        return "lacks its vocabulary"
    if len(set(tokens)) != len(tokens) or "<unk>" not in tokens:
        return "has a vocabulary with a repeated token or without <unk>"
    if d.get("token", "char") not in ("char", "word") or not isinstance(d.get("text_sha1", ""), str):
        return "has a vocabulary of an unknown kind of token or text"
    return None


def settings(d: Any) -> tuple[list[Config], dict, bool] | None:
    """The configs (one, or one per run trained together), the vocabulary's JSON and whether the runs were
    trained together (``rnnjax.fit_runs``, of one config too: a list of ``runs``) of a workdir's
    ``config.json`` (``{"config", "vocab", "runs"?}``), if it is whole and valid; else ``None``."""
    if not isinstance(d, dict):
        return None
    runs = d.get("runs") or [d.get("config")]
    configs = [_config(c, "config")[0] for c in (runs if isinstance(runs, list) else [None])]
    if None in configs or _config(d.get("config"), "config")[1] or _vocab(d.get("vocab")):
        return None
    return configs, d["vocab"], "runs" in d


def _seal(meta: Any) -> str | None:
    """What is wrong with ``meta``'s format or checksum, as ``problem`` says it, or ``None``."""
    if not isinstance(meta, dict) or meta.get("format") not in READABLE:
        return f"is not an rnnjax checkpoint of format {' or '.join(map(str, READABLE))}"
    if meta["format"] >= 2:
        if CHECKSUM not in meta:
            return "has a meta without its checksum"
        try:
            if meta[CHECKSUM] != _crc(meta):
                return "has a meta that fails its checksum (config, vocabulary or position changed)"
        except ValueError:                 # NaN or Infinity: never written by save
            return "has a meta with a non-finite number"
    return None


def _config_dicts(d: dict) -> list[dict]:
    """The configs a meta (or config.json) holds, as saved: its own and its runs', those that are dicts."""
    runs = d.get("runs")
    return [c for c in [d.get("config"), *(runs if isinstance(runs, list) else [])] if isinstance(c, dict)]


def unregistered_cell(d: Any, sealed: bool = True) -> str | None:
    """The cell that ``d``'s config (or one of its runs') names and ``rnnjax.cells.CELLS`` lacks: a run of a
    cell of one's own, read where it is not registered. ``d`` is a checkpoint's meta, or with ``sealed=False``
    a workdir's ``config.json``; ``None`` if there is none, or if the meta fails its checksum (damaged)."""
    if not isinstance(d, dict) or (sealed and _seal(d)):
        return None
    for c in _config_dicts(d):
        cell = c.get("cell")
        if isinstance(cell, str) and cell not in CELLS:
            return cell
    return None


def newer(d: Any) -> str | None:
    """What in ``d``, a meta whose checksum holds, only a newer rnnjax writes: a later format, or config
    fields this one lacks, in words; ``None`` if nothing (or if the meta is damaged)."""
    if not isinstance(d, dict):
        return None
    if is_int(d.get("format")) and d["format"] > FORMAT:       # sealed as this rnnjax seals, it says
        try:
            return f"format {d['format']}" if d.get(CHECKSUM) == _crc(d) else None
        except ValueError:
            return None
    if _seal(d):
        return None
    for c in _config_dicts(d):
        unknown = Config.unknown_fields(c)
        if unknown:
            return f"the config field{'s' * (len(unknown) > 1)} {', '.join(unknown)}"
    return None


def problem(meta: Any, step: int) -> str | None:
    """What is wrong with the ``meta`` of the checkpoint at ``step``, as a clause (``is ...``, ``has ...``,
    ``lacks ...``), or ``None``. A cell ``rnnjax.cells.CELLS`` lacks makes its config invalid here: ask
    ``unregistered_cell`` first."""
    why = _seal(meta)
    if why:
        return why
    config, why = _config(meta.get("config"), "config")
    if why:
        return why
    runs = meta.get("runs", [])
    if not isinstance(runs, list):
        return "has a list of runs that is not a list"
    for k, c in enumerate(runs):
        why = _config(c, f"config of run {k}")[1]
        if why:
            return why
    # Format 1 did not save the steps an epoch: the config's (its data had the config's windows).
    per_epoch = meta.get("steps_per_epoch", -(-config.num_train // config.batch_size))
    if not (is_int(per_epoch) and per_epoch >= 1) or (meta["format"] >= 2 and "steps_per_epoch" not in meta):
        return "lacks its steps per epoch"
    why = (_vocab(meta.get("vocab"))
           or position_problem(meta.get("position"), step, per_epoch, len(runs), meta["format"]))
    if why:
        return why
    sums = meta.get("checksums")
    if not (isinstance(sums, dict) and sums and all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in sums.items())):
        return "lacks the checksums of its arrays"
    how = {k: meta[k] for k in HOW if k in meta}
    if not (how.get("kernel", KERNELS[0]) in KERNELS and is_int(how.get("num_devices", 1))
            and how.get("num_devices", 1) >= 1
            and all(isinstance(how.get(k, ""), str) for k in ("platform", "matmul_precision"))):
        return f"says it computed as {how!r}, not with a known kernel on a count of devices"
    since = meta.get(SINCE, 0)
    if not (is_int(since) and 0 <= since <= step):
        return f"says it computed otherwise since step {since!r}"
    if not isinstance(meta.get(REGISTERED, ""), str):
        return f"says its cell was registered as {meta[REGISTERED]!r}"
    if not isinstance(meta.get(OPTIMIZER, ""), (str, type(None))):
        return f"says its optimizer was registered as {meta[OPTIMIZER]!r}"
    by = meta.get(TRAINED_BY, [])
    if not (isinstance(by, list) and all(isinstance(e, list) and len(e) == 2 and is_int(e[0])
                                         and isinstance(e[1], str) for e in by)
            and [e[0] for e in by] == sorted({e[0] for e in by}) and all(0 <= e[0] <= step for e in by)):
        return f"says it was trained by {by!r:.200}"
    if INIT_FROM in meta and init_from_problem(meta[INIT_FROM]):
        return f"says it started from {meta[INIT_FROM]!r:.200}"
    ppl = meta.get("val_ppl")
    if not (ppl is None or is_number(ppl)):
        return f"has a validation perplexity of {ppl!r}"
    each = meta.get("run_val_ppls", [None] * len(runs))
    if not (isinstance(each, list) and len(each) == len(runs)
            and all(p is None or is_number(p) for p in each)):
        return f"has runs' validation perplexities of {each!r}"
    return None


def init_from_problem(value: Any) -> str | None:
    """What is wrong with a recorded ``init_from`` (``Restored.address``: a workdir, a step, a run or none),
    in words; ``None`` if nothing."""
    if not (isinstance(value, dict) and set(value) <= {"workdir", "step", "run", CHECKSUM}):
        return "not a workdir, a step and a run"
    if not isinstance(value.get(CHECKSUM, ""), str):
        return f"its {CHECKSUM} is {value[CHECKSUM]!r}"
    if not (isinstance(value.get("workdir"), str) and value["workdir"]):
        return f"its workdir is {value.get('workdir')!r}"
    for key in ("step", "run"):
        if (key in value or key == "step") and not (is_int(value.get(key)) and value[key] >= 0):
            return f"its {key} is {value.get(key)!r}"
    return None
