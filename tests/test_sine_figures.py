import numpy as np

from experiments import sine_figures


def test_the_three_figures_are_written_with_every_model(tmp_path):
    T, tau, num_train, steps = 40, 4, 24, (1, 4)
    time_T, x_T = np.arange(1, T + 1), np.sin(0.1 * np.arange(T))
    preds = {"onestep": x_T[tau:], "multistep": x_T, "ksteps": np.zeros((T - tau - max(steps) + 1, tau + 4))}
    sine_figures.plot(time_T, x_T, {"linear": preds, "rnn": preds}, tmp_path, tau, num_train, steps)
    for name in ("onestep", "multistep", "ksteps"):
        assert (tmp_path / f"sine-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
