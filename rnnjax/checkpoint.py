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

from rnnjax.config import SWEEPABLE, Config
from rnnjax.data import Vocab
from rnnjax.generate import predict, predict_batch
from rnnjax.state import abstract_run_states, abstract_train_state, make_model

SUBDIR = "checkpoints"
FORMAT = 1


class CheckpointError(RuntimeError):
    """A workdir or checkpoint that cannot be used as asked."""


def check_workdir(workdir: Path) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise CheckpointError(f"The workdir {workdir} exists and is not a directory.")


def manager(directory: str | Path, *, keep: int = 3, read_only: bool = False,
            best: int | None = None) -> ocp.CheckpointManager:
    """A manager keeping the latest ``keep`` checkpoints, the best by ``val_ppl`` of its own saves, and
    step ``best``: the best of the runs before (orbax knows only the metrics of its own saves)."""
    preservation = policies.AnyPreservationPolicy([
        policies.LatestN(keep),
        policies.BestN(get_metric_fn=lambda m: m["val_ppl"], reverse=True, n=1,
                       keep_checkpoints_without_metrics=False),
        *([policies.CustomSteps([best])] if best is not None else []),
    ])
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
        raise CheckpointError(
            f"The checkpoint at step {step} in {directory} cannot be read ({type(e).__name__}: {e}).") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"The checkpoint at step {step} in {directory} is not an "
                              f"rnnjax checkpoint of format {FORMAT}.")
    return meta


def best_step(workdir: Path) -> int | None:
    """The complete checkpoint with the lowest validation perplexity in its ``meta``, or ``None``."""
    ppl = {s: read_meta(workdir, s).get("val_ppl") for s in _steps(workdir)}
    scored = [(p, s) for s, p in ppl.items() if isinstance(p, (int, float)) and math.isfinite(p)]
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
    meta = {**meta, "val_ppl": val_ppl}
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)),
              metrics=None if val_ppl is None else {"val_ppl": val_ppl}, force=True)


def restore_state(mngr: ocp.CheckpointManager, step: int, target: Any) -> Any:
    """The saved state, as host arrays shaped and typed like ``target``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    except Exception as e:
        raise CheckpointError(
            f"The checkpoint at step {step} in {mngr.directory} cannot be restored "
            f"({type(e).__name__}: {e}).") from e
    return jax.device_get(restored["state"])


def check_compatible(meta: dict, config: Config, vocab: Vocab, workdir: Path, runs: tuple[Config, ...] = ()
                     ) -> None:
    """A resumed run must be the same run: same config but for ``RESUMABLE`` fields (and the same ``runs``
    trained together, if several)."""
    saved_runs = [Config.from_json(c) for c in meta.get("runs", [])]

    def fixed(c: Config) -> dict:
        return {k: v for k, v in c.to_json().items() if k not in Config.RESUMABLE}
    if [fixed(c) for c in saved_runs] != [fixed(c) for c in runs]:
        def what(configs):
            return f"{len(configs)} runs trained together ({_sweep(configs)})" if configs else "a single run"
        raise CheckpointError(f"{workdir} holds {what(saved_runs)}, not {what(list(runs))}. Use a new --workdir, "
                              "or the checkpoint's settings to resume it.")
    saved = Config.from_json(meta["config"])
    diff = [f"{f.name}: checkpoint {getattr(saved, f.name)!r}, requested {getattr(config, f.name)!r}"
            for f in dataclasses.fields(config)
            if f.name not in config.RESUMABLE and getattr(saved, f.name) != getattr(config, f.name)]
    if diff:
        raise CheckpointError(
            f"{workdir} holds a run with another configuration ({'; '.join(diff)}). Use a new "
            "--workdir, or the checkpoint's settings to resume it.")
    if Vocab.from_json(meta["vocab"]) != vocab:
        raise CheckpointError(f"{workdir} holds a run trained on another vocabulary.")


def _sweep(configs: list[Config]) -> str:
    return "; ".join(f"{k} {', '.join(f'{v:g}' for v in dict.fromkeys(getattr(c, k) for c in configs))}"
                     for k in SWEEPABLE)


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
        """Greedy, or sampled given ``temperature``, ``top_k`` or ``key`` (``rnnjax.generate.predict_batch``)."""
        return predict(self.model, self.params, self.vocab, prefix, num_preds, **sampling)

    def predict_batch(self, prefixes: list[str], num_preds: int, **sampling) -> list[str]:
        return predict_batch(self.model, self.params, self.vocab, prefixes, num_preds, **sampling)


def restore(workdir: str | Path, step: int | None = None, best: bool = False, run: int | None = None) -> Restored:
    """Restores a run's checkpoint for inference: the latest, ``step``, or the ``best``. A workdir of
    several runs trained together (``rnnjax.runs``) needs ``run``, the index of one of them (its best
    is the lowest mean validation perplexity of the runs)."""
    workdir = Path(workdir)
    directory = workdir / SUBDIR
    if not directory.is_dir():
        what = "does not exist" if not workdir.exists() else "holds no checkpoints"
        raise CheckpointError(f"The workdir {workdir} {what}; train with --workdir {workdir} first.")
    mngr = _reader(directory)
    steps = mngr.all_steps()
    if not steps:
        raise CheckpointError(f"The workdir {workdir} holds no complete checkpoint.")
    if best:
        step = best_step(workdir)
        if step is None:
            raise CheckpointError(f"No checkpoint in {workdir} has a validation perplexity.")
    elif step is None:
        step = mngr.latest_step()
    elif step not in steps:
        raise CheckpointError(f"{workdir} has no checkpoint at step {step}; it has {sorted(steps)}.")
    meta = read_meta(workdir, step)
    config, vocab = Config.from_json(meta["config"]), Vocab.from_json(meta["vocab"])
    runs = [Config.from_json(c) for c in meta.get("runs", [])]
    if runs and (run is None or not 0 <= run < len(runs)):
        raise CheckpointError(f"{workdir} holds {len(runs)} runs trained together; choose one with run=K "
                              f"(--run K), K from 0 to {len(runs) - 1}{'' if run is None else f', not {run}'}.")
    if run not in (None, 0) and not runs:
        raise CheckpointError(f"{workdir} holds a single run; leave out run={run} (--run).")
    if runs:
        config = runs[run]
        state = jax.tree.map(lambda x: x[run], restore_state(mngr, step, abstract_run_states(runs, len(vocab))))
    else:
        state = restore_state(mngr, step, abstract_train_state(config, len(vocab)))
    mngr.close()
    return Restored(config, vocab, state.params, step, meta)
