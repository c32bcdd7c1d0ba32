"""Orbax checkpoints of a run, and restoring them for inference.

A workdir holds ``config.json``, ``metrics.jsonl``, ``ppl.png`` and
``checkpoints/<step>/`` with two orbax items: ``state``, the full
``TrainState`` (step, params, optimizer state; ``StandardSave``), and ``meta``,
JSON with the config, the vocabulary and the data-order position
(``JsonSave``). The latest ``keep`` checkpoints and the best by validation
perplexity are kept. Orbax writes each checkpoint to a temporary directory
and renames it when complete, so a half-written one is never listed.

``restore(workdir)`` needs nothing but the workdir: it rebuilds the model from
the saved config and returns params, vocab and a ``predict``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from rnnjax import workdir as workdir_lib
from rnnjax.config import Config
from rnnjax.data import Vocab
from rnnjax.generate import predict, predict_batch
from rnnjax.state import abstract_run_states, abstract_train_state, make_model

SUBDIR = "checkpoints"
DAMAGED = "damaged"          # where a resumed run sets damaged checkpoints aside
FORMAT = 1


class CheckpointError(RuntimeError):
    """A workdir or checkpoint that cannot be used as asked."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint that cannot be read, or whose arrays fail their checksums; ``reason`` says which."""

    def __init__(self, step: int, directory: Path, reason: str):
        super().__init__(f"The checkpoint at step {step} in {directory} {reason}.")
        self.step, self.reason = step, reason


def _reason(e: Exception) -> str:
    """An exception in a few words: its type and first line (orbax's can run to 60 lines)."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:160]}{'...' if len(first) > 160 else ''}"


@dataclasses.dataclass
class _Lowest(policies.PreservationPolicy):
    """Preserves the checkpoint of lowest ``val_ppl``: by orbax's metrics for its own saves, by ``earlier``
    (read from the metas) for those a resumed run found, whose metrics orbax does not know."""
    earlier: dict[int, float]

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        def ppl(c):
            return c.metrics["val_ppl"] if c.metrics is not None else self.earlier.get(c.step)
        scored = [(ppl(c), c.step) for c in checkpoints if ppl(c) is not None]
        best = min(scored)[1] if scored else None
        return [c.step == best for c in checkpoints]


def manager(directory: str | Path, *, keep: int = 3, read_only: bool = False,
            earlier: dict[int, float] | None = None) -> ocp.CheckpointManager:
    """A manager keeping the latest ``keep`` checkpoints and the best by ``val_ppl``, the checkpoints
    found in ``directory`` counted with their ``earlier`` perplexities (``val_ppls``)."""
    preservation = policies.AnyPreservationPolicy([policies.LatestN(keep), _Lowest(dict(earlier or {}))])
    options = ocp.CheckpointManagerOptions(preservation_policy=preservation, create=not read_only,
                                           read_only=read_only)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                 item_names=("state", "meta"))


def _reader(directory: Path) -> ocp.CheckpointManager:
    """A read-only manager: it creates nothing."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns that a read-only manager is read-only
    try:
        return manager(directory, read_only=True)
    finally:
        absl_logger.setLevel(level)


# _steps and read_meta read the files without a manager: making one is a
# barrier across processes, which a process that only looks must not enter.
def _steps(workdir: Path) -> list[int]:
    """The workdir's complete checkpoints; creates nothing."""
    directory = Path(workdir) / SUBDIR
    return ocp.utils.checkpoint_steps(directory) if directory.is_dir() else []


def latest_step(workdir: Path) -> int | None:
    """The step of the workdir's latest complete checkpoint, or ``None``."""
    return max(_steps(workdir), default=None)


def read_meta(workdir: Path, step: int) -> dict:
    """The ``meta`` item (config, vocabulary, position) of the checkpoint at ``step``; creates nothing."""
    directory = Path(workdir) / SUBDIR
    try:
        meta = ocp.JsonCheckpointHandler().restore(directory / str(step) / "meta")
    except Exception as e:  # orbax raises many types for unreadable files
        raise DamagedCheckpoint(step, directory, f"cannot be read ({_reason(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DamagedCheckpoint(step, directory, f"is not an rnnjax checkpoint of format {FORMAT}")
    missing = [k for k in ("config", "vocab", "position") if not isinstance(meta.get(k), dict)]
    if missing:
        raise DamagedCheckpoint(step, directory, f"lacks its {', '.join(missing)}")
    return meta


def set_aside(workdir: Path, step: int) -> Path:
    """Moves the damaged checkpoint ``step`` out of the checkpoints (never deleting it): where it went."""
    target = workdir / DAMAGED / str(step)
    suffix = 1
    while target.exists():
        target, suffix = workdir / DAMAGED / f"{step}.{suffix}", suffix + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    (workdir / SUBDIR / str(step)).rename(target)
    return target


def val_ppls(workdir: Path) -> dict[int, float]:
    """The finite validation perplexity in each complete, readable checkpoint's ``meta``, by step."""
    ppl = {}
    for s in _steps(workdir):
        try:
            p = read_meta(workdir, s).get("val_ppl")
        except DamagedCheckpoint:         # never the best
            continue
        if isinstance(p, (int, float)) and math.isfinite(p):
            ppl[s] = p
    return ppl


def best_step(workdir: Path) -> int | None:
    """The complete checkpoint with the lowest validation perplexity in its ``meta``, or ``None``."""
    scored = [(p, s) for s, p in val_ppls(workdir).items()]
    return min(scored)[1] if scored else None


def make_meta(config: Config, vocab: Vocab, position: dict, **extra: Any) -> dict:
    return {"format": FORMAT, "config": config.to_json(), "vocab": vocab.to_json(),
            "position": position, **extra}


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict,
         val_ppl: float | None = None) -> None:
    """Saves host ``state`` and ``meta`` (with ``val_ppl``, or ``None`` mid-epoch) at ``step``
    (asynchronously); a no-op if it exists."""
    if step in mngr.all_steps():
        return
    meta = {**meta, "val_ppl": val_ppl if val_ppl is None or math.isfinite(val_ppl) else None,
            "checksums": workdir_lib.checksums(state)}
    check_saved(mngr)
    try:
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                meta=ocp.args.JsonSave(meta)),
                  metrics=None if meta["val_ppl"] is None else {"val_ppl": meta["val_ppl"]}, force=True)
    except Exception as e:
        raise _save_failed(mngr, step, e) from None


def check_saved(mngr: ocp.CheckpointManager, wait: bool = False) -> None:
    """``CheckpointError`` if an earlier asynchronous save failed (``wait``: once all have finished)."""
    try:
        mngr.wait_until_finished() if wait else mngr.check_for_errors()
    except Exception as e:
        raise _save_failed(mngr, None, e) from None


def _save_failed(mngr: ocp.CheckpointManager, step: int | None, e: Exception) -> CheckpointError:
    try:                                 # the saves still running count as complete if they finish
        mngr.wait_until_finished()
    except Exception:
        pass
    latest = latest_step(Path(mngr.directory).parent)
    last = ("it has no complete checkpoint" if latest is None
            else f"its last complete checkpoint is step {latest}")
    what = f"step {step}" if step is not None else "a checkpoint"
    return CheckpointError(f"Saving {what} to {mngr.directory} failed ({_reason(e)}); training stopped "
                           f"there and {last}. Free space (or fix the cause) and run the same command to "
                           "resume.")


def restore_state(mngr: ocp.CheckpointManager, step: int, target: Any, meta: dict | None = None) -> Any:
    """The saved state, as host arrays shaped and typed like ``target``, its checksums (in ``meta``, read
    unless given) verified: ``DamagedCheckpoint`` if it cannot be read or any array differs from what was
    saved."""
    meta = read_meta(Path(mngr.directory).parent, step) if meta is None else meta
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        state = jax.device_get(restored["state"])
    except Exception as e:
        raise DamagedCheckpoint(step, mngr.directory, f"cannot be restored ({_reason(e)})") from None
    bad = workdir_lib.verify(state, meta["checksums"]) if "checksums" in meta else []
    if bad:
        raise DamagedCheckpoint(step, mngr.directory, f"is damaged: {len(bad)} array(s) fail their checksums "
                                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    return state


def write_config(workdir: Path, config: Config, vocab: Vocab, runs: list[Config] | None = None) -> None:
    """``config.json`` for people and tools; the checkpoints carry their own copy."""
    workdir.mkdir(parents=True, exist_ok=True)
    content = {"config": config.to_json(), "vocab": vocab.to_json()}
    if runs:
        content["runs"] = [c.to_json() for c in runs]
    text = json.dumps(content, indent=1)
    tmp = workdir / "config.json.tmp"
    tmp.write_text(text + "\n")
    tmp.replace(workdir / "config.json")


@dataclasses.dataclass
class Restored:
    """A trained model from a checkpoint: enough to generate text, nothing of the data."""
    config: Config
    vocab: Vocab
    params: Any
    step: int
    meta: dict

    @property
    def model(self):
        return make_model(self.config, len(self.vocab))

    def predict(self, prefix: str, num_preds: int, **sampling) -> str:
        """Greedy, or sampled given ``temperature``, ``top_k`` or ``key`` (``generate.predict_batch``)."""
        return predict(self.model, self.params, self.vocab, prefix, num_preds, **sampling)

    def predict_batch(self, prefixes: list[str], num_preds: int, **sampling) -> list[str]:
        return predict_batch(self.model, self.params, self.vocab, prefixes, num_preds, **sampling)


def restore(workdir: str | Path, step: int | None = None, best: bool = False, run: int | None = None,
            fallback: bool = False) -> Restored:
    """Restores a run's checkpoint for inference: the latest, ``step``, or the ``best``. A workdir of
    several runs trained together (``rnnjax.runs``) needs ``run``, the index of one of them (its best
    is the lowest mean validation perplexity of the runs). A damaged checkpoint raises
    ``DamagedCheckpoint``; with ``fallback`` the newest good one older than it is taken instead."""
    workdir = Path(workdir)
    directory = workdir / SUBDIR
    if not directory.is_dir():
        what = "does not exist" if not workdir.exists() else "holds no checkpoints"
        raise CheckpointError(f"The workdir {workdir} {what}; train with --workdir {workdir} first.")
    if step is not None and not (isinstance(step, int) and not isinstance(step, bool)):
        if not (isinstance(step, str) and step.isdigit()):
            raise CheckpointError(f"step must be a whole number, got {step!r}.")
        step = int(step)
    steps = _steps(workdir)
    if not steps:
        raise CheckpointError(f"The workdir {workdir} holds no complete checkpoint.")
    if best:
        step = best_step(workdir)
        if step is None:
            raise CheckpointError(f"No checkpoint in {workdir} has a validation perplexity.")
    elif step is None:
        step = max(steps)
    elif step not in steps:
        raise CheckpointError(f"{workdir} has no checkpoint at step {step}; it has {sorted(steps)}.")
    mngr = _reader(directory)
    try:
        for candidate in sorted((s for s in steps if s <= step), reverse=True):
            try:
                return _restore_for_inference(mngr, workdir, candidate, run)
            except DamagedCheckpoint:
                if not fallback or candidate == min(steps):
                    raise
    finally:
        mngr.close()


def _restore_for_inference(mngr: ocp.CheckpointManager, workdir: Path, step: int, run: int | None
                           ) -> Restored:
    meta = read_meta(workdir, step)
    config, vocab = Config.from_json(meta["config"]), Vocab.from_json(meta["vocab"])
    runs = [Config.from_json(c) for c in meta.get("runs", [])]
    if runs and (run is None or not 0 <= run < len(runs)):
        given = "" if run is None else f", not {run}"
        raise CheckpointError(f"{workdir} holds {len(runs)} runs trained together; choose one with run=K "
                              f"(--run K), K from 0 to {len(runs) - 1}{given}.")
    if run not in (None, 0) and not runs:
        raise CheckpointError(f"{workdir} holds a single run; leave out run={run} (--run).")
    if runs:
        config, why = runs[run], (meta["position"].get("stopped") or [None] * len(runs))[run]
        if why is not None:
            raise CheckpointError(f"Run {run} of {workdir} stopped early ({why}): restore another run, or a "
                                  "step from before it stopped.")
        stacked = restore_state(mngr, step, abstract_run_states(runs, len(vocab)), meta)
        state = jax.tree.map(lambda x: x[run], stacked)
    else:
        state = restore_state(mngr, step, abstract_train_state(config, len(vocab)), meta)
    return Restored(config, vocab, state.params, step, meta)
