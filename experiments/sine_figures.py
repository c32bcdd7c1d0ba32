"""The files of ``experiments.sine`` in its workdir: d2l's three figures of sec_sequence, both models in each,
and results.json; each written whole or not at all, none of an earlier run overwritten, all of a run whose
write failed removed (so that the same command runs again); a stop names those the workdir holds."""

from __future__ import annotations

import contextlib
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from experiments import stopping
from experiments.parsing import check_output
from rnnjax.lock import lock
from rnnjax.workdir import write_atomically

FIGURES = ("sine-onestep.png", "sine-multistep.png", "sine-ksteps.png")
RESULTS = "results.json"


def check_workdir(workdir: Path) -> None:
    """``ValueError`` unless ``workdir`` is a folder of its own, new or writable, that holds none of
    ``FIGURES`` and ``RESULTS`` (they would be overwritten)."""
    if str(workdir) in ("", "."):
        raise ValueError("--workdir is empty or the current folder; give a folder of its own.")
    check_output("--workdir", workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir} is a file, not a folder.")
    earlier = [name for name in (*FIGURES, RESULTS) if (workdir / name).exists()]
    if earlier:
        raise ValueError(f"--workdir {workdir} holds {', '.join(earlier)} of an earlier run, which this "
                         "one would overwrite; use a new --workdir.")
    try:        # a file made and removed at once: access() says yes to root, also on a read-only mount
        if workdir.is_dir():
            tempfile.TemporaryFile(dir=workdir).close()
    except OSError as e:
        raise ValueError(f"--workdir {workdir} is not writable ({e.strerror}).") from None


@contextlib.contextmanager
def claimed(workdir: Path) -> Iterator[None]:
    """``workdir``'s lock (one run writes it at a time) for the block, ``check_workdir`` again once held:
    another run may have written there since the first check."""
    with lock(workdir, flag="--workdir"):
        check_workdir(workdir)
        yield


def remove(workdir: Path) -> None:
    """Removes ``FIGURES`` and ``RESULTS`` from ``workdir`` where they are: those of a run whose write failed
    (``check_workdir`` let it start only without them)."""
    for name in (*FIGURES, RESULTS):
        with contextlib.suppress(OSError):
            (workdir / name).unlink()


def stopped_message(signum: int, workdir: Path) -> str:
    """The line a stop says: the signal, and which of the exercise's files ``workdir`` holds."""
    held = [name for name in (*FIGURES, RESULTS) if (workdir / name).is_file()]
    signal_name = f"signal {signum}" + (" (Ctrl-C)" if signum == signal.SIGINT else "")
    if not held:
        return (f"Stopped by {signal_name}: nothing written to {workdir} (the figures come when the first "
                f"seed is done, {RESULTS} at the end).")
    missing = "" if RESULTS in held else f", not {RESULTS} (written at the end); run again in a new --workdir"
    return f"Stopped by {signal_name}: {workdir} holds {', '.join(held)}{missing}."


def stop_at_once(workdir: Path):
    """The run's SIGINT/SIGTERM/SIGHUP handler: one line (``stopped_message``) and exit 128 + signal at
    once, not unwinding out of a JAX compile."""
    return lambda signum, frame: stopping.exit_now(stopped_message(signum, workdir), 128 + signum)


def plot(time_T, x_T, results: dict, workdir: Path, tau: int, num_train: int, steps: tuple[int, ...]) -> None:
    """d2l's three figures, both models' ``results`` (predictions by kind) in each, for windows of ``tau``
    values, ``num_train`` of them training, predicted ``steps`` ahead. ``WorkdirError`` (naming the
    file, saying to free space and rerun) where one cannot be written."""
    from matplotlib.figure import Figure     # not pyplot: no backend to switch

    def figure(name, draw, ncols=1):
        fig = Figure(figsize=(6 * ncols, 3), dpi=110)
        axes = fig.subplots(1, ncols, squeeze=False)
        draw(axes[0])
        for ax in axes[0]:
            ax.set_xlabel("time")
            ax.set_ylabel("x")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        # a temporary file, then renamed: never a truncated figure (a full disk)
        write_atomically(workdir / f"sine-{name}.png", save=lambda tmp: fig.savefig(tmp, format="png"))

    def onestep(axes):
        axes[0].plot(time_T, x_T, lw=0.8, label="data")
        for model, preds in results.items():
            axes[0].plot(time_T[tau:], preds["onestep"], lw=0.8, label=f"1-step preds ({model})")

    def multistep(axes):
        axes[0].plot(time_T, x_T, lw=0.8, label="data")
        for model, preds in results.items():
            axes[0].plot(time_T[num_train + tau:], preds["multistep"][num_train + tau:],
                         label=f"multistep ({model})")

    def ksteps(axes):
        for ax, (model, preds) in zip(axes, results.items()):
            rows = preds["ksteps"].shape[0]
            for k in steps:
                ax.plot(time_T[tau + k - 1:tau + k - 1 + rows], preds["ksteps"][:, tau + k - 1], lw=0.8,
                        label=f"{k}-step preds")
            ax.set_title(model, fontsize=9)
            ax.set_ylim(-1.6, 1.6)

    figure("onestep", onestep)
    figure("multistep", multistep)
    figure("ksteps", ksteps, ncols=len(results))
