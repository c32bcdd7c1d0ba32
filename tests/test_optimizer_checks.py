"""``rnnjax.optimizer_checks``: an optimizer of one's own that cannot train as a run steps it (runs
trained together trace its rate; its update takes the gradients alone; its state keeps its shapes), refused
in one sentence before anything is written."""

import jax
import jax.numpy as jnp
import optax
import pytest

import rnnjax
from rnnjax import arguments, optimizers
from rnnjax.train import fit

from conftest import TINY


def plateau(config, per_run=False):
    return optax.chain(optimizers.clipped(optax.sgd)(config, per_run), optax.contrib.reduce_on_plateau())


def mixing(config, per_run=False):
    """Fails on the gradients as optax's clip did on a bfloat16 parameter of runs: for no want of more."""
    return optax.GradientTransformation(optax.init_empty_state, lambda grads, state, params=None: (
        jax.tree.map(lambda g: jax.lax.select(True, g, g.astype(jnp.bfloat16)), grads), state))


def drifting(config, per_run=False):
    """A state that turns from int32 to float32 as it steps."""
    return optax.GradientTransformation(
        lambda params: {"count": jnp.zeros([], jnp.int32)},
        lambda grads, state, params=None: (jax.tree.map(lambda g: -config.lr * g, grads),
                                           {"count": state["count"] + 1.0}))


def branching(config, per_run=False):
    """SGD whose making branches in Python on a float argument: one per_run traces."""
    def sgd(learning_rate, momentum=0.0):
        return optax.sgd(learning_rate, momentum if momentum > 0 else None)
    return optimizers.clipped(sgd)(config, per_run)


def test_an_optimizer_runs_cannot_trace_is_refused_in_one_sentence(small_data, tmp_path, monkeypatch):
    """Its hyperparameters traced, as runs trained together keep them, Python cannot branch on one: it
    failed in JAX's TracerBoolConversionError (clipped(optax.adafactor) did, which trains now); alone it
    trains."""
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "mine", branching)
    configs = [TINY.replace(optimizer="mine", seed=s) for s in (0, 1)]
    said = (r"^optimizer='mine' cannot be made for the model's parameters as runs trained together need it "
            r"\(TracerBoolConversionError: Attempted boolean conversion of traced array with shape "
            r"bool\[\]\): it branches in Python on a hyperparameter that each run keeps in its state, traced "
            r"\(optax.inject_hyperparams\): for a schedule made from the rate, scale one of peak 1 by it "
            r"\(lambda count: learning_rate \* schedule\(count\)\); another, set it inside the function, not "
            r"as an argument; or train the runs one by one\.$")
    with pytest.raises(ValueError, match=said):
        rnnjax.runs.fit_runs(configs, small_data, tmp_path / "w", devices=1, log=None)
    assert not (tmp_path / "w").exists()
    arguments.check_arguments(configs[0], tmp_path / "w", devices=1)    # alone: nothing traced to branch on


@pytest.mark.parametrize("make, said", [
    (plateau, r"cannot step on the gradients alone, as a run steps it \(TypeError: .*'value'\): one that "
              r"needs more \(optax.contrib.reduce_on_plateau a value=, optax.lookahead parameters of its "
              r"own\) does not train here\.$"),
    (mixing, r"cannot step on the gradients alone, as a run steps it \(TypeError: lax.select requires "
             r"arguments to have the same dtypes, .*\)\.$"),
    (drifting, r"returns a state of other shapes or dtypes than it was given \(\['count'\] int32\[\] "
               r"before, float32\[\] after\): a run's steps need one that keeps them\.$")])
@pytest.mark.parametrize("several", [False, True])
def test_an_optimizer_that_cannot_step_as_a_run_steps_is_refused_before_anything_is_written(
        small_data, tmp_path, monkeypatch, make, said, several):
    """optax.contrib.reduce_on_plateau's update needs value=: its TypeError came from deep in optax, the
    workdir made; a state that changes its dtype failed in JAX's scan, the workdir made too."""
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "mine", make)
    configs = [TINY.replace(optimizer="mine", seed=s) for s in (0, 1)]
    with pytest.raises(ValueError, match="^optimizer='mine' " + said):
        if several:
            rnnjax.runs.fit_runs(configs, small_data, tmp_path / "w", devices=1, log=None)
        else:
            fit(configs[0], small_data, tmp_path / "w", devices=1, log=None)
    assert not (tmp_path / "w").exists()


def test_runs_of_other_rates_under_a_scheduled_rate_are_one_sentence(monkeypatch):
    """inject_hyperparams keeps a schedule's state where the rate is: float() of it was a TypeError."""
    from rnnjax import state

    def scheduled(config, per_run=False):
        return optax.inject_hyperparams(optax.adam)(learning_rate=optax.linear_schedule(config.lr, 0, 100))
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "scheduled", scheduled)
    runs = [TINY.replace(optimizer="scheduled", lr=lr, seed=s) for s, lr in enumerate((0.01, 0.02))]
    with pytest.raises(ValueError, match=r"^Runs of different lr train in one step only where .* for a run "
                                         r"of lr=0.01 it holds \[.*'a WrappedScheduleState'\]\.$"):
        state.check_per_run(runs, 28)


def test_runs_of_other_rates_under_an_optimizer_that_never_reads_its_rate_are_refused(monkeypatch):
    """clipped of a transformation that ignores learning_rate trained a sweep's runs alike, their records
    saying otherwise (researcher day 3); a warmup from 0 that reads it is no such optimizer."""
    from rnnjax import state
    warmup = optax.linear_schedule(0.0, 1.0, 3)
    fixed = optimizers.clipped(lambda learning_rate: optax.adam(1e-3))
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "fixed", fixed)
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "warmup", optimizers.clipped(
        lambda learning_rate: optax.sgd(lambda n: learning_rate * warmup(n))))
    runs = [TINY.replace(optimizer="fixed", lr=lr) for lr in (0.01, 0.02, 0.01)]
    alike = r"^Runs of different lr train alike under optimizer='fixed': its first updates at lr 0.01 and 0"
    with pytest.raises(ValueError, match=alike):
        state.check_per_run(runs, 28)
    state.check_per_run([r.replace(optimizer="warmup") for r in runs], 28)       # 0 at first, then its rate
    state.check_per_run([r.replace(lr=0.01, clip=c) for r, c in zip(runs, (1.0, 2.0))], 28)     # one lr


def test_an_optimizer_whose_init_raises_under_runs_is_one_sentence(small_data, tmp_path, monkeypatch):
    """fit_runs checked each run's optimizer state, made eagerly, before the other checks, and let what the
    init raised out as it was."""
    def picky(learning_rate):
        if not isinstance(learning_rate, float):
            raise TypeError(f"learning_rate must be a float, got {type(learning_rate).__name__}")
        return optax.sgd(learning_rate)
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "picky", optimizers.clipped(picky))
    runs = [TINY.replace(optimizer="picky", lr=lr) for lr in (0.5, 0.25)]
    with pytest.raises(ValueError, match=r"^optimizer='picky' cannot be made for the model's parameters "
                                         r"\(TypeError: learning_rate must be a float, got \w+\)\.$"):
        rnnjax.fit_runs(runs, small_data, tmp_path / "w", devices=1, log=None)
    assert not (tmp_path / "w").exists()
