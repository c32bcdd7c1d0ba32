"""The figures of ``experiments.sine``: d2l's three of sec_sequence, both models in each."""

from __future__ import annotations

from pathlib import Path


def plot(time_T, x_T, results: dict, workdir: Path, tau: int, num_train: int, steps: tuple[int, ...]) -> None:
    """d2l's three figures, both models' ``results`` (predictions by kind) in each, for windows of ``tau``
    values, ``num_train`` of them training, predicted ``steps`` ahead."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def figure(name, draw, ncols=1):
        fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 3), dpi=110, squeeze=False)
        draw(axes[0])
        for ax in axes[0]:
            ax.set_xlabel("time")
            ax.set_ylabel("x")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(workdir / f"sine-{name}.png")
        plt.close(fig)

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
