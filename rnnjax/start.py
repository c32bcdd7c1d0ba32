"""How a run starts: new or resumed from which checkpoint, on which devices, and every check
that depends on nothing but the arguments and the workdir, made before anything is written."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax

from rnnjax import checkpoint, kernels, metrics, precision, workdir as workdir_lib
from rnnjax.backend import available_cores
from rnnjax.config import SWEEPABLE, Config
from rnnjax.data import TimeMachine, Vocab
from rnnjax.parallel import DataParallel
from rnnjax.state import abstract_run_states, abstract_train_state, loss_path, make_model


@dataclasses.dataclass
class Position:
    """Where training stands: ``epoch`` (0-based) in progress, ``batch`` next batch of it,
    and the ``[loss_sum, count]`` of the batches of it already done; of runs trained together
    (``rnnjax.runs``), why each one stopped (``None`` while it trains; empty: none stopped)."""
    epoch: int = 0
    batch: int = 0
    partial: list = dataclasses.field(default_factory=list)
    stopped: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What ``fit`` will do, found by ``plan`` before anything is written."""
    config: Config
    workdir: Path
    dp: DataParallel
    path: str                    # the loss path, in words
    step: int | None = None      # the checkpoint it resumes from
    position: Position = dataclasses.field(default_factory=Position)
    runs: tuple[Config, ...] = ()  # several runs trained together (rnnjax.runs)
    state: Any = None              # the checkpoint's state (host arrays), verified
    damaged: tuple[tuple[int, str], ...] = ()   # newer checkpoints that failed: (step, why)

    @property
    def finished(self) -> bool:
        return self.position.epoch >= self.config.epochs

    def describe(self) -> str:
        """One line: new or resumed (from which step), devices, loss path, matmuls' precision, where it
        writes."""
        devices = f"{self.dp.num_shards} {self.dp.devices[0].platform.upper()} device(s)"
        if jax.process_count() > 1:
            devices += f" over {jax.process_count()} processes"
        if self.step is None:
            what = f"new run of {self.config.epochs} epochs"
            if self.runs:
                from rnnjax.runs import label
                what = (f"{len(self.runs)} new runs of {self.config.epochs} epochs in one program "
                        f"({'; '.join(label(c, list(self.runs)) for c in self.runs)})")
        elif self.finished:
            return (f"{self.workdir} holds {self.position.epoch} trained epochs (step {self.step}), "
                    f"--epochs asks for {self.config.epochs}: nothing to train; a larger --epochs trains on.")
        else:
            what = (f"resuming {f'{len(self.runs)} runs ' if self.runs else ''}from step {self.step} (epoch "
                    f"{self.position.epoch + 1} of {self.config.epochs}, batch {self.position.batch})")
        hint = "".join(f"; checkpoint step {step} {why}, set aside in "
                       f"{self.workdir / checkpoint.DAMAGED}" for step, why in self.damaged)
        # Advice for whoever got one device without asking (not for --devices 1 of several).
        if self.dp.devices[0].platform == "cpu" and len(jax.local_devices()) == 1 and available_cores() > 1:
            hint += ("; one CPU device on a machine of several cores: call "
                     "rnnjax.backend.use_cpu_cores(batch_size) before JAX starts to train on all of them")
        c = self.config
        matmuls = precision.describe(c.compute_dtype, c.matmul_precision, self.dp.devices[0])
        return f"{what} on {devices}, {self.path}, {matmuls}; writing to {self.workdir}{hint}"


def plan(config: Config, data: TimeMachine, workdir: str | Path, *, devices: int | None = None,
         runs: list[Config] | None = None) -> Plan:
    """Every check ``fit`` makes before it starts: data, devices, the workdir and any checkpoint in it
    (for ``rnnjax.runs.fit_runs``, ``runs`` are the configs trained together, ``config`` the first).

    Reads the workdir, writes nothing. Raises ``ValueError`` (``DataError``,
    ``CheckpointError``) with one sentence on what to change.
    """
    workdir = Path(workdir)
    if config.bidirectional:
        raise ValueError("A bidirectional RNN cannot be trained as a language model: its reverse direction "
                         "reads the characters it is asked to predict. Use it where whole sequences are "
                         "given, e.g. for classification.")
    kernels.check(config)
    if data.num_val < 1:
        raise ValueError("fit validates every epoch, so the data needs num_val >= 1 validation windows.")
    if (data.batch_size, data.num_steps) != (config.batch_size, config.num_steps):
        raise ValueError(f"The data's batches are {data.batch_size} x {data.num_steps}, the config's "
                         f"{config.batch_size} x {config.num_steps}.")
    if (data.steps_per_epoch, data.vocab.kind) != (config.steps_per_epoch, config.token):
        raise ValueError(f"The data has {data.steps_per_epoch} steps an epoch and {data.vocab.kind} tokens, "
                         f"the config {config.steps_per_epoch} and {config.token}: make it with "
                         "rnnjax.corpus.load(config, ...).")
    dp = DataParallel.create(devices)
    dp.check_batch_size(config.batch_size)
    check_memory(config, len(data.vocab), dp.num_shards, len(runs or [None]))
    workdir_lib.check_writable(workdir)
    if jax.process_index() == 0:
        workdir_lib.check_unlocked(workdir)
    metrics.MetricsLog(workdir / metrics.FILENAME, warn=lambda message: None).read()   # MetricsError if bad
    path = loss_path(make_model(config, len(data.vocab)))
    runs = tuple(runs or ())
    steps = sorted(checkpoint._steps(workdir), reverse=True)
    if not steps:
        return Plan(config, workdir, dp, path, runs=runs)
    target = (abstract_run_states(list(runs), len(data.vocab)) if runs
              else abstract_train_state(config, len(data.vocab)))
    damaged = []
    reader = checkpoint._reader(workdir / checkpoint.SUBDIR)
    try:
        for step in steps:       # the newest good checkpoint; damaged ones are reported and set aside
            try:
                meta = checkpoint.read_meta(workdir, step)
                check_compatible(meta, config, data.vocab, workdir, runs=runs)
                state = checkpoint.restore_state(reader, step, target, meta)
            except checkpoint.DamagedCheckpoint as e:
                damaged.append((step, e.reason))
                continue
            return Plan(config, workdir, dp, path, step, Position(**meta["position"]), runs, state,
                        tuple(damaged))
    finally:
        reader.close()
    raise checkpoint.CheckpointError(
        f"Every checkpoint in {workdir / checkpoint.SUBDIR} is damaged (steps "
        f"{', '.join(str(s) for s, _ in damaged)}; step {damaged[0][0]}: {damaged[0][1]}). Move that folder "
        "aside to start anew, or use a new --workdir.")


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
        raise checkpoint.CheckpointError(f"{workdir} holds {what(saved_runs)}, not {what(list(runs))}. Use a "
                                         "new --workdir, or the checkpoint's settings to resume it.")
    saved = Config.from_json(meta["config"])
    diff = [f"{f.name}: checkpoint {getattr(saved, f.name)!r}, requested {getattr(config, f.name)!r}"
            for f in dataclasses.fields(config)
            if f.name not in config.RESUMABLE and getattr(saved, f.name) != getattr(config, f.name)]
    if diff:
        raise checkpoint.CheckpointError(
            f"{workdir} holds a run with another configuration ({'; '.join(diff)}). Use a new "
            "--workdir, or the checkpoint's settings to resume it.")
    why = Vocab.from_json(meta["vocab"]).differs(vocab)
    if why:
        raise checkpoint.CheckpointError(f"{workdir} holds a run trained on {why}. Use a new --workdir, or "
                                         "the data it was trained on to resume it.")


def _sweep(configs: list[Config]) -> str:
    return "; ".join(f"{k} {', '.join(f'{v:g}' for v in dict.fromkeys(getattr(c, k) for c in configs))}"
                     for k in SWEEPABLE)


# Bytes of float32 work per token and hidden unit of a training step (activations, gradients and
# the fused kernel's buffers), and per token and vocabulary entry: a generous bound, not a profile.
_BYTES_PER_TOKEN_HIDDEN, _BYTES_PER_TOKEN_VOCAB = 64, 16


def check_memory(config: Config, vocab_size: int, num_shards: int, num_runs: int = 1) -> None:
    """``ValueError`` if one device's training step cannot fit in this machine's memory (estimated)."""
    tokens = config.batch_size // num_shards * config.num_steps * num_runs
    width = config.num_hiddens * config.num_layers * (2 if config.bidirectional else 1)
    need = tokens * (width * _BYTES_PER_TOKEN_HIDDEN + (vocab_size + 16) * _BYTES_PER_TOKEN_VOCAB)
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):      # not a POSIX system: no estimate
        return
    if jax.default_backend() == "cpu" and need * num_shards > have:
        raise ValueError(f"--batch-size {config.batch_size} x --num-steps {config.num_steps} needs about "
                         f"{need * num_shards / 2 ** 30:.0f} GiB for a training step, more than this "
                         f"machine's {have / 2 ** 30:.0f} GiB; use a smaller batch.")
