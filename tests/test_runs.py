"""Many runs in one program (``rnnjax.runs``): each the run it would be alone, resumed exactly."""

import copy
import json
import math
import os
import signal

import jax
import numpy as np
import pytest

from experiments import cli
from rnnjax import checkpoint, create_train_state, metrics, runs
from rnnjax.config import ConfigError
from rnnjax.train import STEPS_PER_CALL, Interrupted, NonFiniteLoss, fit

from conftest import TINY, TWO_CALLS, without_seconds

TINY10 = TINY.replace(num_train=10 * TINY.batch_size)        # data10's config
CONFIGS = [TINY.replace(epochs=2, seed=s, lr=lr) for s in (0, 1) for lr in (1.0, 2.0)]
CONFIGS10 = [c.replace(num_train=TINY10.num_train) for c in CONFIGS]


@pytest.fixture(scope="module")
def data10():
    """``TINY``'s data with 10 batches an epoch: one compiled call of ``STEPS_PER_CALL`` steps each."""
    from conftest import small_text
    from rnnjax.data import TimeMachine
    return TimeMachine(TINY10.batch_size, TINY10.num_steps, TINY10.num_train, TINY10.num_val,
                       text=small_text(5000))


def alone(config, data, workdir, devices):
    d = copy.copy(data)
    d.seed = config.seed
    return fit(config, d, workdir, devices=devices, log=None)


@pytest.mark.slow
@pytest.mark.parametrize("devices", [pytest.param(2, marks=pytest.mark.cpu_devices(2))])  # 1: dropout runs
def test_each_run_is_the_run_it_would_be_alone(data10, tmp_path, devices):
    """To float32 round-off: XLA may fuse the vmapped step's sums in another order (bit for bit at some
    shapes, not at others), as the devices' all-reduce does."""
    configs = CONFIGS10 if devices == 1 else CONFIGS10[1:3]    # two, differing in seed and rate, suffice
    together = runs.fit_runs(configs, data10, tmp_path / "runs", devices=devices, log=None)
    for k, config in enumerate(configs):
        single = alone(config, data10, tmp_path / f"run{k}", devices)
        mine = [r for r in together.history if r["run"] == k]
        assert [r["epoch"] for r in mine] == [1, 2]
        assert all(r["seed"] == config.seed and r["lr"] == config.lr for r in mine)
        mine_state = jax.tree.map(lambda x: x[k], together.state)
        for a, b in zip(jax.tree.leaves(single.state), jax.tree.leaves(mine_state)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(without_seconds(single.history), without_seconds(mine)):
            for key in ("train_loss", "val_loss"):
                assert np.isclose(a[key], b[key], rtol=1e-5)
    # different seeds and learning rates train differently
    assert len({r["val_ppl"] for r in together.history if r["epoch"] == 2}) == len(configs)


@pytest.mark.slow
def test_dropout_runs_are_the_runs_alone(data10, tmp_path):
    configs = [TINY10.replace(epochs=1, num_layers=2, dropout=0.3, seed=s) for s in (0, 1)]
    together = runs.fit_runs(configs, data10, tmp_path / "runs", devices=1, log=None)
    for k, config in enumerate(configs):
        single = alone(config, data10, tmp_path / f"run{k}", 1)
        for a, b in zip(jax.tree.leaves(single.state.params), jax.tree.leaves(together.state.params)):
            np.testing.assert_allclose(a, b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.cpu_devices(2)
def test_resume_after_an_interrupt_mid_epoch_is_exact(two_call_data, tmp_path):
    configs, data = [c.replace(num_train=TWO_CALLS.num_train) for c in CONFIGS], two_call_data
    straight = runs.fit_runs(configs, data, tmp_path / "straight", devices=2, log=None)

    def interrupt(done, total, record):
        if done == STEPS_PER_CALL:                    # mid-epoch 1: 23 steps an epoch
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(Interrupted, match=f"after batch {STEPS_PER_CALL}/23"):
        runs.fit_runs(configs, data, tmp_path / "w", devices=2, progress=interrupt, log=None)
    first = runs.fit_runs([c.replace(epochs=1) for c in configs], data, tmp_path / "w", devices=2,
                          log=None)
    assert {r["epoch"] for r in first.history} == {1}
    resumed = runs.fit_runs(configs, data, tmp_path / "w", devices=2, log=None)
    assert without_seconds(resumed.history) == without_seconds(straight.history)
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)


def test_each_run_restores_on_its_own_and_progress_gets_each_run_s_record(data10, tmp_path):
    told = []
    together = runs.fit_runs(CONFIGS10[:2], data10, tmp_path, devices=1, log=None,
                             progress=lambda done, total, record: record and told.append(record))
    for record in told:             # an early stop may look at one run's metric
        mine = [r for r in together.history if r["epoch"] == record["epoch"]]
        assert record["runs"] == mine and record["val_ppl"] == np.mean([r["val_ppl"] for r in mine])
    assert [r["epoch"] for r in told] == [1, 2]
    for k, config in enumerate(CONFIGS10[:2]):
        restored = checkpoint.restore(tmp_path, run=k)
        assert restored.config == config
        for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(together.state.params)):
            np.testing.assert_array_equal(a, b[k])
        assert restored.predict("the", 5).startswith("the")
    for bad, message in [(None, "holds 2 runs trained together; choose one"), (2, "K from 0 to 1, not 2")]:
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.restore(tmp_path, run=bad)


@pytest.mark.slow
def test_runs_fine_tuned_from_one_run_s_params_are_each_the_run_fine_tuned_alone(data10, tmp_path):
    """Every run starts from the params given (a lr sweep of one run fine-tuned), each as ``fit`` of them
    alone; the workdir's config.json records where they come from, and a resume keeps it."""
    fit(TINY10.replace(epochs=1), data10, tmp_path / "source", devices=1, log=None)
    source = checkpoint.restore(tmp_path / "source")
    configs, lines = CONFIGS10[1:3], []
    wrong = [c.replace(num_hiddens=c.num_hiddens + 1) for c in configs]
    with pytest.raises(ValueError, match=r"^The parameters do not fit the config \(cell 'rnn', num_hiddens="):
        runs.fit_runs(wrong, data10, tmp_path / "tuned", devices=1, log=None, params=source)
    with pytest.raises(TypeError, match=r"^fit_runs' params are one run's \(each run starts from them\), "
                                        r"got a list of 2: train runs from other parameters in workdirs of"):
        runs.fit_runs(configs, data10, tmp_path / "tuned", devices=1, log=None, params=[source, source])
    with pytest.raises(TypeError, match=r"^fit's params are one run's, got a tuple of 1: "):
        fit(configs[0], data10, tmp_path / "tuned", devices=1, log=None, params=(source,))
    with pytest.raises(TypeError, match=r"^fit_runs' params are parameters, got a TrainState: give its "
                                        r"\.params \(the run makes its own optimizer state\), or the"):
        runs.fit_runs(configs, data10, tmp_path / "tuned", devices=1, log=None,
                      params=create_train_state(configs[0], len(data10.vocab)))
    stacked = runs.create_run_states(configs, len(data10.vocab))       # fit_runs' result's state
    with pytest.raises(TypeError, match=r"TrainState: give one run's of its stacked \.params, "
                                        r"jax\.tree\.map\(lambda x: x\[k\], state\.params\)"):
        fit(configs[0], data10, tmp_path / "tuned", devices=1, log=None, params=stacked)
    with pytest.raises(ValueError, match="^keep must be"):          # the arguments in fit's order (hostile)
        runs.fit_runs(configs, data10, tmp_path / "tuned", keep=0, log=None, params=[source, source])
    assert not (tmp_path / "tuned").exists()
    together = runs.fit_runs(configs, data10, tmp_path / "tuned", devices=1, log=lines.append, params=source)
    assert lines[0].startswith("2 new runs of 2 epochs") and lines[0].endswith("; from the params given")
    for k, config in enumerate(configs):
        d = copy.copy(data10)
        d.seed = config.seed
        single = fit(config, d, tmp_path / f"alone{k}", devices=1, log=None, params=source)
        for a, b in zip(jax.tree.leaves(single.state), jax.tree.leaves(jax.tree.map(lambda x: x[k],
                                                                                    together.state))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    origin = {"workdir": str((tmp_path / "source").absolute()), "step": source.step,
              "meta_checksum": source.meta["meta_checksum"]}
    assert source.address == origin
    for workdir in ("tuned", "alone0"):
        assert json.loads((tmp_path / workdir / "config.json").read_text())["init_from"] == origin
    lines.clear()
    runs.fit_runs([c.replace(epochs=3) for c in configs], data10, tmp_path / "tuned", devices=1,
                  log=lines.append, params=source)
    assert "; the params given are not used: the run resumes from its checkpoint" in lines[0]
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["init_from"] == origin


def test_each_run_s_best_is_its_own_lowest_validation_perplexity(data10, tmp_path):
    """Two runs whose best epochs differ: the best of each is its own, not the runs' mean's, and it is kept
    as the mean's is, across a resume (only the mean's was: run k's best was lost past ``keep``)."""
    configs = [TINY10.replace(epochs=2, lr=1.0), TINY10.replace(epochs=2, lr=40.0, clip=100.0)]
    runs.fit_runs(configs, data10, tmp_path, devices=1, checkpoint_every=1, keep=1, log=None)
    configs = [c.replace(epochs=4) for c in configs]
    result = runs.fit_runs(configs, data10, tmp_path, devices=1, checkpoint_every=1, keep=1, log=None)
    mean = {}
    for r in result.history:
        mean.setdefault(r["step"], []).append(r["val_ppl"])
    kept = {max(mean), min(mean, key=lambda s: np.mean(mean[s]))}
    bests = []
    for k in range(2):
        mine = [r for r in result.history if r["run"] == k]
        best = min(mine, key=lambda r: r["val_ppl"])
        restored = checkpoint.restore(tmp_path, best=True, run=k)
        assert restored.step == best["step"] and restored.meta["run_val_ppls"][k] == best["val_ppl"]
        said = cli.describe_checkpoint(restored)
        assert said.endswith(f"val ppl {metrics.ppl_text(best['val_ppl'])} (run {k}'s))")
        bests.append(best["epoch"])
        kept.add(best["step"])
    assert bests[0] != bests[1], bests                      # else this test would not tell
    assert checkpoint.steps(tmp_path) == sorted(kept)


@pytest.mark.slow
def test_a_workdir_resumes_only_the_runs_it_holds(small_data, tmp_path):
    runs.fit_runs(CONFIGS[:2], small_data, tmp_path / "runs", devices=1, log=None)
    with pytest.raises(checkpoint.CheckpointError, match="holds 2 runs trained together .* not a single run"):
        fit(CONFIGS[0].replace(epochs=3), small_data, tmp_path / "runs", devices=1, log=None)
    with pytest.raises(checkpoint.CheckpointError, match="not 2 runs trained together"):
        runs.fit_runs([CONFIGS[0], CONFIGS[2]], small_data, tmp_path / "runs", devices=1, log=None)
    fit(TINY.replace(epochs=1), small_data, tmp_path / "single", devices=1, log=None)
    with pytest.raises(checkpoint.CheckpointError, match="holds a single run"):
        runs.fit_runs(CONFIGS[:2], small_data, tmp_path / "single", devices=1, log=None)
    with pytest.raises(checkpoint.CheckpointError, match="holds a single run; leave out run=1"):
        checkpoint.restore(tmp_path / "single", run=1)


def test_a_diverging_run_stops_alone_and_stays_stopped(data10, tmp_path):
    """lr 1e6 blows up in the first epoch: that run stops, named in the log, and the other trains on as it
    would alone; restore refuses the stopped run, and a resumed workdir keeps it stopped."""
    configs = [TINY10.replace(epochs=2, lr=1.0), TINY10.replace(epochs=2, lr=1e6)]
    lines = []
    result = runs.fit_runs(configs, data10, tmp_path / "w", devices=1, log=lines.append)
    assert result.stopped[0] is None
    assert "at epoch 1" in result.stopped[1] and any("run 1 (lr 1e6) stopped: " in line for line in lines)
    assert [(r["run"], r["epoch"]) for r in result.history] == [(1, 1), (0, 1), (0, 2)]   # its last epoch too
    assert result.history[0]["train_ppl"] == math.inf and result.history[0]["lr"] == 1e6
    assert result.history[0]["stopped"] == result.stopped[1] and "stopped" not in result.history[1]
    single = alone(configs[0], data10, tmp_path / "alone", 1)
    for a, b in zip(single.history, result.history[1:]):
        assert np.isclose(a["val_loss"], b["val_loss"], rtol=1e-5)
    assert checkpoint.restore(tmp_path / "w", run=0).predict("the", 3).startswith("the")
    with pytest.raises(checkpoint.CheckpointError, match=r"Run 1 of .* stopped early \(.*at epoch 1"):
        checkpoint.restore(tmp_path / "w", run=1)
    resumed = runs.fit_runs([c.replace(epochs=3) for c in configs], data10, tmp_path / "w", devices=1,
                            log=None)
    assert resumed.stopped == result.stopped
    assert [(r["run"], r["epoch"]) for r in resumed.history] == [(1, 1), (0, 1), (0, 2), (0, 3)]


def test_when_every_run_stops_the_program_stops(data10, tmp_path):
    """Both reasons: the divergence rule (lr 1e6: perplexity inf), an infinite loss (lr 1e38)."""
    configs = [TINY10.replace(epochs=2, lr=1e6), TINY10.replace(epochs=2, lr=1e38)]
    stopped = (r"Every run stopped: run 0 \(lr 1e6\): its train perplexity is inf at epoch 1.*; run 1 "
               r"\(lr 1e38\): the training loss is inf at epoch 1, step \d+ of 10. .*smaller lr\.$")
    lines = []
    with pytest.raises(NonFiniteLoss, match=stopped):
        runs.fit_runs(configs, data10, tmp_path, devices=1, log=lines.append)
    assert lines and not any("train on" in line for line in lines)      # no "1 run(s) train on" first


def test_runs_must_share_their_shapes():
    with pytest.raises(ConfigError, match="differ in cell, num_hiddens: train them in separate workdirs"):
        runs.check_runs([TINY, TINY.replace(num_hiddens=8, cell="gru", seed=1)])
    with pytest.raises(ConfigError, match="the same run"):
        runs.check_runs([TINY, TINY])
    runs.check_runs([TINY, TINY.replace(lr=0.5), TINY.replace(clip=2.0)])


def test_configs_may_come_from_a_generator(small_data, tmp_path):
    configs = [TINY.replace(epochs=1, seed=s) for s in (0, 1)]
    result = runs.fit_runs((c for c in configs), small_data, tmp_path, devices=1, log=None)
    assert [(r["run"], r["epoch"]) for r in result.history] == [(0, 1), (1, 1)]
    assert checkpoint.restore(tmp_path, run=1).config == configs[1]


@pytest.mark.parametrize("configs,kwargs,message", [
    (TINY, {}, r"^configs must be a list of Config objects, not of type Config; for one run, use "
               r"rnnjax.train.fit or \[config\]\.$"),
    ([TINY, TINY.to_json()], {}, r"^configs must be a list of Config objects; one of them is of type dict"),
    (TINY.to_json(), {}, r"^configs must be a list of Config objects, not of type dict"),
    ("tiny", {}, r"^configs must be a list of Config objects, not of type str"),
    (CONFIGS[:2], {"checkpoint_every": 0}, "checkpoint_every must be a whole number of epochs, at least 1"),
    (CONFIGS[:2], {"keep": -1}, "keep must be a whole number of checkpoints, at least 1, got -1"),
], ids=["one Config", "a dict among them", "a dict", "a str", "checkpoint_every 0", "keep -1"])
def test_bad_arguments_are_refused_before_any_work(small_data, tmp_path, configs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        runs.fit_runs(configs, small_data, tmp_path / "w", devices=1, log=None, **kwargs)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("data, workdir, message", [
    ("data", 5, r"^workdir must be a path \(str or os.PathLike\), got an int\.$"),
    (None, "w", r"^data must be an rnnjax.data.WindowedText"),
])
def test_arguments_of_the_wrong_type_are_refused_before_any_work(small_data, tmp_path, monkeypatch, data,
                                                                 workdir, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=message):
        runs.fit_runs(CONFIGS[:2], small_data if data == "data" else data, workdir, devices=1, log=None)
    assert not os.listdir(tmp_path)


def test_summary_of_the_last_epoch():
    history = [{"run": k, "epoch": e, "train_ppl": 10.0 + k - e, "val_ppl": 12.0 + k, "val_bpc": 3.0 + k}
               for k in range(3) for e in (1, 2)]
    table = runs.summary(history)
    assert table["train_ppl"] == {"mean": 9.0, "min": 8.0, "max": 10.0}
    assert table["val_ppl"]["max"] == 14.0 and table["val_bpc"]["mean"] == 4.0
    diverged = {"run": 3, "epoch": 2, "train_ppl": math.inf, "val_ppl": math.inf, "val_bpc": math.inf,
                "stopped": "its train perplexity is inf at epoch 2"}
    assert runs.summary([*history, diverged]) == table          # a run stopped at the last epoch: left out
    single = [{k: v for k, v in r.items() if k != "run"} for r in history if r["run"] == 0]
    assert runs.summary(single)["val_ppl"] == {"mean": 12.0, "min": 12.0, "max": 12.0}     # one run alone
    older = {k: v for k, v in diverged.items() if k != "stopped"}      # a log from before records said so
    assert runs.summary([*history, older], [None, None, None, "diverged"]) == table
    with pytest.raises(ValueError, match="^Every run of the history stopped"):
        runs.summary([*single, {**single[-1], "epoch": 3, "stopped": "diverged"}])
    assert runs.summary(history, runs=iter([0, 2]))["val_ppl"] == {"mean": 13.0, "min": 12.0, "max": 14.0}
    for history_, chosen, said in (([], None, "The history is empty"), (history, [], "runs is empty: choose"),
                                   (history, [0, 7], r"The history holds no record of run\(s\) \[7\]: "),
                                   (single, [0], r"The history holds no record of run\(s\) \[0\]: "),
                                   ([*history, diverged], [3], "Every run chosen stopped")):
        with pytest.raises(ValueError, match=f"^{said}"):
            runs.summary(history_, runs=chosen)
    # Runs of two rates: a mean over them is no result (researcher day 3); each rate's seeds are.
    rates = [{**r, "lr": 1.0 if r["run"] < 2 else 2.0, "seed": r["run"]} for r in history]
    with pytest.raises(ValueError, match=r"^The runs summarized differ in lr: a mean over them is no result"):
        runs.summary(rates)
    assert runs.summary(rates, runs=[0, 1])["val_ppl"] == {"mean": 12.5, "min": 12.0, "max": 13.0}
    # A run that stopped before its first record (its why in stopped) is stopped, not missing.
    early = [None, None, None, "its training loss is nan at epoch 1, step 2 of 9"]
    assert runs.summary(history, early, runs=[0, 3])["val_ppl"]["max"] == 12.0
    with pytest.raises(ValueError, match="^Every run chosen stopped"):
        runs.summary(history, early, runs=[3])
    indices = r"^runs are the indices of runs \(a list of ints, a groups\(\) value\), got 1\.$"
    with pytest.raises(TypeError, match=indices):
        runs.summary(history, runs=1)
    # The result itself, its stopped too (a TypeError: 'FitResult' object is not iterable, before).
    result = runs.FitResult(state=None, history=[*history, older], workdir=".", stopped=(None,) * 3 + ("x",))
    assert runs.summary(result) == table and runs.summary(iter(history)) == table
    with pytest.raises(TypeError, match=r"^summary takes a history, the records of fit_runs' result "):
        runs.summary("metrics.jsonl")
    for record in ({"epoch": 1, "val_ppl": 3.0}, ["epoch", 1]):        # a bare KeyError: 'train_ppl', before
        said = (r"^The history holds .*, not an epoch's record \(a dict of epoch, train_ppl, val_ppl, "
                r"val_bpc, as metrics.jsonl's lines\)\.$")
        with pytest.raises(ValueError, match=said):
            runs.summary([*history, record])


def test_runs_are_grouped_by_their_settings_other_than_the_seed():
    """A sweep's summary line had averaged over three learning rates (researcher day 6)."""
    configs = [TINY.replace(seed=s, lr=lr) for lr in (0.5, 1.0) for s in (0, 1)]
    assert runs.groups(configs) == {"lr 0.5": [0, 1], "lr 1": [2, 3]}
    assert runs.groups(c for c in configs) == runs.groups(configs)       # a generator: {}, read twice before
    with pytest.raises(ConfigError, match="^configs must be a list of Config objects"):
        runs.groups(TINY)
    assert runs.groups([c.replace(lr=1.0) for c in configs]) == {"": [0, 1, 2, 3]}      # seeds alone
    mixed = [TINY.replace(lr=1.0, clip=c) for c in (1.0, 2.0)] + [TINY.replace(lr=2.0, clip=1.0)]
    assert list(runs.groups(mixed)) == ["lr 1, clip 1", "lr 1, clip 2", "lr 2, clip 1"]
