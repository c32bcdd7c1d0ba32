"""How a run starts: new or resumed from which checkpoint, on which devices, and every check
that depends on nothing but the arguments and the workdir, made before anything is written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from rnnjax import checkpoint
from rnnjax.backend import available_cores
from rnnjax.config import Config
from rnnjax.data import TimeMachine
from rnnjax.parallel import DataParallel
from rnnjax.state import loss_path, make_model


@dataclasses.dataclass
class Position:
    """Where training stands: ``epoch`` (0-based) in progress, ``batch`` next batch of it,
    and the ``[loss_sum, count]`` of the batches of it already done."""
    epoch: int = 0
    batch: int = 0
    partial: list = dataclasses.field(default_factory=list)


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

    @property
    def finished(self) -> bool:
        return self.position.epoch >= self.config.epochs

    def describe(self) -> str:
        """One line: new or resumed (from which step), devices, loss path, where it writes."""
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
        hint = ""
        if self.dp.devices[0].platform == "cpu" and self.dp.num_shards == 1 and available_cores() > 1:
            hint = ("; one CPU device on a machine of several cores: call "
                    "rnnjax.backend.use_cpu_cores(batch_size) before JAX starts to train on all of them")
        return f"{what} on {devices}, {self.path}; writing to {self.workdir}{hint}"


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
    if data.num_val < 1:
        raise ValueError("fit validates every epoch, so the data needs num_val >= 1 validation windows.")
    if (data.batch_size, data.num_steps) != (config.batch_size, config.num_steps):
        raise ValueError(f"The data's batches are {data.batch_size} x {data.num_steps}, the config's "
                         f"{config.batch_size} x {config.num_steps}.")
    dp = DataParallel.create(devices)
    dp.check_batch_size(config.batch_size)
    checkpoint.check_workdir(workdir)
    path = loss_path(make_model(config, len(data.vocab)))
    step = checkpoint.latest_step(workdir)
    runs = tuple(runs or ())
    if step is None:
        return Plan(config, workdir, dp, path, runs=runs)
    meta = checkpoint.read_meta(workdir, step)
    checkpoint.check_compatible(meta, config, data.vocab, workdir, runs=runs)
    return Plan(config, workdir, dp, path, step, Position(**meta["position"]), runs)
