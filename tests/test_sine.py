"""d2l's sine exercise (``python -m experiments.sine``): both models, d2l's three predictions."""

import json

import numpy as np
import pytest

from experiments import sine


@pytest.fixture(scope="module")
def data():
    time_T, x_T = sine.make_data(0)
    return x_T, *sine.windows(x_T)


def test_data_and_windows_are_d2ls(data):
    x_T, features, labels = data
    assert x_T.shape == (sine.T,) and features.shape == (sine.T - sine.TAU, sine.TAU)
    np.testing.assert_array_equal(features[10], x_T[10:14])
    assert labels[10] == x_T[14]
    noise = x_T - np.sin(0.01 * np.arange(1, sine.T + 1))
    assert abs(noise.std() - 0.2) < 0.02 and abs(noise.mean()) < 0.03


@pytest.mark.slow
def test_one_step_ahead_of_the_k_step_predictions_is_the_one_step_prediction(data):
    """For both models: column tau of the k-step table is what the one-step predictions say."""
    x_T, features, labels = data
    linear = sine.Linear()
    params = sine.train_linear(linear, features, labels)
    lin = sine.predictions(lambda f: np.asarray(linear.apply(params, f)), x_T, features)
    rnn = sine.RNNForecaster(8)
    rnn_preds = sine.rnn_predictions(rnn, sine.train_rnn(rnn, x_T, 1, warmup=20, horizon=8), x_T)
    for preds in (lin, rnn_preds):
        rows = preds["ksteps"].shape[0]
        np.testing.assert_allclose(preds["ksteps"][:, sine.TAU], preds["onestep"][:rows], rtol=1e-5,
                                   atol=1e-6)
        known = sine.NUM_TRAIN + sine.TAU
        np.testing.assert_array_equal(preds["multistep"][:known], x_T[:known])
    # d2l's linear model learns: one step ahead it is near the noise's variance (0.04), not the signal's.
    assert sine.errors(lin, x_T)["onestep_test"] < 0.06


@pytest.mark.slow
def test_the_experiment_writes_figures_and_the_error_table_over_seeds(tmp_path, capsys):
    assert sine.main(["--workdir", str(tmp_path), "--rnn-epochs", "1", "--seeds", "0,1"]) == 0
    for name in ("onestep", "multistep", "ksteps"):
        assert (tmp_path / f"sine-{name}.png").read_bytes()[:4] == b"\x89PNG"
    tables = json.loads((tmp_path / "results.json").read_text())
    assert list(tables) == ["seed 0", "seed 1", "min", "max"]
    for table in tables.values():
        assert set(table) == {"linear", "rnn"}
        for row in table.values():
            assert set(row) == {"onestep_test", "multistep_test", "1-step", "4-step", "16-step", "64-step"}
            assert all(np.isfinite(v) and v > 0 for v in row.values())
    for model, row in tables["min"].items():
        for column, low in row.items():
            seeds = [tables[f"seed {s}"][model][column] for s in (0, 1)]
            assert low == min(seeds) < max(seeds) == tables["max"][model][column]
    out = capsys.readouterr().out
    assert "mean squared error" in out and "rnn    seed 1" in out and "linear max" in out


@pytest.mark.parametrize("bad", [["--rnn-epochs", "0"], ["--seeds", "0,x"], ["--seeds", "-1"]])
def test_bad_arguments_are_one_line(tmp_path, capsys, bad):
    assert sine.main(["--workdir", str(tmp_path / "w"), *bad]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not (tmp_path / "w").exists()
