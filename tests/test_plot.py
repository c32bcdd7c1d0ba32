"""``rnnjax.plot``: d2l's perplexity figure, of one run or of runs trained together."""

import math

from rnnjax.plot import plot_perplexity, y_scale


def records(n):
    return [{"epoch": e, "train_ppl": 20.0 / e, "val_ppl": 21.0 / e} for e in range(1, n + 1)]


def test_plot_is_a_png(tmp_path):
    path = plot_perplexity(records(4), tmp_path / "ppl.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plot_leaves_the_caller_s_matplotlib_backend_as_it_was(tmp_path):
    """It switched a notebook's backend to Agg, after which its own figures no longer showed."""
    import matplotlib
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        plot_perplexity(records(2), tmp_path / "ppl.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def test_a_plot_of_many_runs_has_no_legend_and_warns_of_nothing(tmp_path):
    """Many runs' legend covered the plot and matplotlib warned it could not lay it out; an infinite
    perplexity is a gap."""
    import warnings
    records = [{"epoch": e, "run": r, "train_ppl": 5.0 + r, "val_ppl": math.inf if e == 2 else 6.0}
               for r in range(40) for e in (1, 2, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_perplexity(records, tmp_path / "ppl.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plot_of_runs_names_each_by_its_settings_that_differ(tmp_path, monkeypatch):
    """A sweep's curves were labelled run 0 to 5 alone (researcher day 6)."""
    from matplotlib.figure import Figure
    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: drawn.append(fig))
    swept = [{"epoch": 1, "run": k, "seed": s, "lr": lr, "clip": 1.0, "train_ppl": 5.0, "val_ppl": 6.0}
             for k, (lr, s) in enumerate((lr, s) for lr in (0.5, 1.0) for s in (0, 1))]
    plot_perplexity(swept, tmp_path / "ppl.png")
    labels = drawn[0].axes[0].get_legend_handles_labels()[1]
    assert labels[:2] == ["train_ppl (run 0, seed 0, lr 0.5)", "val_ppl (run 0, seed 0, lr 0.5)"]
    assert labels[-1] == "val_ppl (run 3, seed 1, lr 1)"


def test_a_sweep_with_a_diverging_run_is_drawn_on_a_log_scale(tmp_path, monkeypatch):
    """A run at perplexity 1e37 flattened the others' curves to 0 on d2l's linear axis (researcher day 3)."""
    from matplotlib.figure import Figure
    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: drawn.append(fig))
    sweep = [{"epoch": e, "run": r, "lr": lr, "train_ppl": ppl, "val_ppl": ppl}
             for e in (1, 2) for r, (lr, ppl) in enumerate(((1.0, 20.0 / e), (1000.0, 1e37 * e)))]
    assert y_scale(records(4)) == "linear" and y_scale(sweep) == "log"
    gaps = [sweep[0], {**sweep[1], "train_ppl": math.inf, "val_ppl": None}]       # drawn as gaps: not counted
    assert y_scale(gaps) == "linear"
    plot_perplexity(sweep, tmp_path / "ppl.png")
    plot_perplexity(records(4), tmp_path / "ppl.png")
    assert [fig.axes[0].get_yscale() for fig in drawn] == ["log", "linear"]
