import concurrent.futures
import functools
import json
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnnjax
from rnnjax import arguments, checkpoint, optimizers
from rnnjax.config import ConfigError
from rnnjax.train import fit

from conftest import TINY, DenseCell, small_text


@pytest.mark.parametrize("per_run", [False, True])
def test_each_optimizer_clips_then_steps_as_optax_s_own_chain(per_run):
    """``clipped(opt)`` is optax's clip_by_global_norm then ``opt(lr)``, step after step, with the
    hyperparameters in its state or in the function; SGD's state is what checkpoints held before."""
    config = TINY.replace(lr=0.3, clip=1.0)
    params = {"m": jnp.array([[1.0, 0.5], [-1.0, 2.0]]), "w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    matrices = lambda tree: jax.tree.map(lambda x: x.ndim > 0, tree)   # a weight-decay mask: a callable kept
    masked = functools.partial(optax.adamw, weight_decay=0.1, mask=matrices)
    own = {"masked adamw": optimizers.clipped(masked), "adafactor": optimizers.clipped(optax.adafactor)}
    factored = [("adafactor", optax.adafactor(0.3))] if per_run else []      # its sizes kept from the trace
    for name, reference in (("sgd", optax.sgd(0.3)), ("adam", optax.adam(0.3)),
                            ("masked adamw", masked(0.3)), *factored):
        tx = own.get(name, optimizers.OPTIMIZERS.get(name))(config, per_run)
        ref = optax.chain(optax.clip_by_global_norm(1.0), reference)
        ours, theirs, p, q = tx.init(params), ref.init(params), params, params
        for grads in ({"m": jnp.eye(2), "w": jnp.array([3.0, 4.0]), "b": jnp.array(0.1)},  # norm > 1: clipped
                      {"m": jnp.zeros((2, 2)), "w": jnp.array([0.1, -0.2]), "b": jnp.array(-0.3)}):
            # Traced, as a run steps it: per_run's hyperparameters are then tracers (adafactor's sizes, ints,
            # are not, which Python branches on).
            u, ours = (jax.jit(tx.update) if per_run else tx.update)(grads, ours, p)
            v, theirs = ref.update(grads, theirs, q)
            p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), p, q)   # lr held as float32
        held = [float(v) for _, v in optax.tree_utils.tree_get_all_with_path(ours, "learning_rate")]
        assert held == ([pytest.approx(0.3)] if per_run else []), name
    old = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.3))       # rnnjax's state before the field
    assert (jax.tree.structure(optimizers.OPTIMIZERS["sgd"](config).init(params))
            == jax.tree.structure(old.init(params)))


@pytest.mark.slow
def test_a_run_records_its_optimizer_resumes_with_it_and_refuses_another(small_data, tmp_path):
    config = TINY.replace(epochs=1, optimizer="adam", lr=0.01)
    said = []
    adam = fit(config, small_data, tmp_path / "adam", devices=1, log=said.append, progress=False)
    assert said[0].startswith("new run of 1 epoch") and ", adam optimizer; writing to" in said[0]
    sgd = fit(config.replace(optimizer="sgd"), small_data, tmp_path / "sgd", devices=1, log=None)
    assert adam.history[0]["train_loss"] != sgd.history[0]["train_loss"]      # Adam stepped, not SGD
    assert json.loads((tmp_path / "adam" / checkpoint.CONFIG).read_text())["config"]["optimizer"] == "adam"
    assert checkpoint.restore(tmp_path / "adam").config.optimizer == "adam"
    with pytest.raises(checkpoint.CheckpointError, match=r"another configuration than the one given: "
                                                         r"optimizer='sgd' \(it has 'adam'\)\. Use a new .* "
                                                         r"\(or train a new workdir from its parameters: "
                                                         r"fit\(config, data, new_workdir, params=rnnjax"):
        fit(config.replace(optimizer="sgd", epochs=2), small_data, tmp_path / "adam", devices=1, log=None)
    with pytest.raises(checkpoint.CheckpointError, match=r"num_hiddens=.* to resume it\.$"):    # they fit not
        fit(config.replace(num_hiddens=2 * config.num_hiddens), small_data, tmp_path / "adam", devices=1,
            log=None)
    resumed = fit(config.replace(epochs=2), small_data, tmp_path / "adam", devices=1, log=None)
    assert [r["epoch"] for r in resumed.history] == [1, 2]


@pytest.mark.slow
def test_one_s_own_optimizer_is_registered_as_a_cell_is(small_data, tmp_path, monkeypatch):
    """Named before the workdir is made where none is registered under the name; a restore for inference
    reads the parameters alone, the optimizer registered or not."""
    unknown = (r"^optimizer='adamw' is not a known optimizer; choose from adam, sgd, or register one "
               r"of your own in rnnjax.OPTIMIZERS \(rnnjax.optimizers\) in each interpreter that trains its "
               r"runs\.$")
    with pytest.raises(ConfigError, match=unknown):
        fit(TINY.replace(optimizer="adamw"), small_data, tmp_path / "none", devices=1, log=None)
    assert not (tmp_path / "none").exists()
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "adamw", optimizers.clipped(optax.adamw))
    configs = [TINY.replace(epochs=1, optimizer="adamw", lr=lr) for lr in (0.01, 0.02)]
    result = rnnjax.fit_runs(configs, small_data, tmp_path, devices=1, log=None)   # each run's lr kept
    held = optax.tree_utils.tree_get_all_with_path(result.state.opt_state, "learning_rate")
    assert [np.asarray(v).tolist() for _, v in held] == [pytest.approx([0.01, 0.02])]
    monkeypatch.delitem(rnnjax.OPTIMIZERS, "adamw")        # as another interpreter
    restored = checkpoint.restore(tmp_path, run=1)
    jax.tree.map(np.testing.assert_array_equal, restored.params,
                 jax.tree.map(lambda x: x[1], result.state.params))
    with pytest.raises(ConfigError, match=unknown):          # a resume: before anything is written
        rnnjax.fit_runs([c.replace(epochs=2) for c in configs], small_data, tmp_path, devices=1, log=None)
    assert checkpoint.steps(tmp_path) == [restored.step] and not (tmp_path / checkpoint.DAMAGED).exists()
    # Registered otherwise (the same state, stepped otherwise) it resumed silently; as trained, it resumes.
    other = optimizers.clipped(functools.partial(optax.adamw, b1=0.5))
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "adamw", other)
    more = [c.replace(epochs=2) for c in configs]
    said = (rf"^{tmp_path} holds a run trained with rnnjax.OPTIMIZERS\['adamw'\] = clipped\(adamw\), which "
            r"is clipped\(adamw\(b1=0.5\)\) here: register the one it was trained with to resume it, or use "
            r"a new workdir\.$")
    with pytest.raises(checkpoint.CheckpointError, match=said):
        rnnjax.fit_runs(more, small_data, tmp_path, devices=1, log=None)
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "adamw", optimizers.clipped(optax.adamw))
    assert rnnjax.fit_runs(more, small_data, tmp_path, devices=1, log=None).history[-1]["epoch"] == 2
    # rnnjax's own registered again alike is rnnjax's own: a resume was refused
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "adam", optimizers.clipped(optax.adam))
    assert optimizers.registered_as("adam") == "rnnjax's own" != optimizers.registered_as("adamw")


def test_what_is_registered_must_make_an_optax_transformation_for_a_config(monkeypatch):
    """Each was an AttributeError or TypeError from inside flax or optax."""
    for name, registered, says in [
            ("none", lambda config, per_run=False: None, r"made None, not an optax transformation"),
            ("made", optax.adam(0.01), r"is a GradientTransformationExtraArgs made already"),
            ("itself", optax.adam, r"is optax's adam itself, which takes a learning rate, not a config"),
            ("one", lambda config: optax.adam(0.01), r"is a function that cannot be called as "
                                                     r"make\(config, per_run\)")]:
        monkeypatch.setitem(rnnjax.OPTIMIZERS, name, registered)
        with pytest.raises(ConfigError, match=rf"^rnnjax.OPTIMIZERS\['{name}'\] {says}.*: register "
                                              r"make\(config, per_run\) -> optax.GradientTransformation"):
            optimizers.make(TINY.replace(optimizer=name))


@pytest.mark.slow
def test_a_random_key_in_the_state_or_another_s_state_is_refused_before_anything_is_written(
        small_data, tmp_path, monkeypatch):
    """optax.add_noise's key trained an epoch, then failed the first save (orbax keeps no key); loop.run
    trained another optimizer's state under the config's name."""
    def noisy(config, per_run=False):
        return optax.chain(optax.add_noise(0.01, 0.55, 0), optimizers.clipped(optax.sgd)(config, per_run))
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "noisy", noisy)
    with pytest.raises(ValueError, match=r"^The state of optimizer='noisy' holds a random key \(as "
                                         r"optax.add_noise's does\), which rnnjax's checkpoints cannot save"):
        fit(TINY.replace(optimizer="noisy"), small_data, tmp_path / "noisy", devices=1, log=None)
    assert not (tmp_path / "noisy").exists()
    from rnnjax import loop, start, state, train
    config = TINY.replace(epochs=1)
    with start.planned(config, small_data, tmp_path / "other", devices=1) as p:
        adam = state.create_train_state(config.replace(optimizer="adam"), len(small_data.vocab))
        with pytest.raises(ValueError, match=r"^The state's optimizer state is not the one optimizer='sgd' "
                                             r"makes: the run records that optimizer"):
            loop.run(p, small_data, adam, train.train_windows, train.eval_steps)
    assert not (tmp_path / "other" / checkpoint.SUBDIR).exists()


def test_an_optimizer_registered_in_place_of_rnnjax_s_own_is_said(small_data, tmp_path, monkeypatch):
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "sgd", optimizers.clipped(optax.adam))
    described = rnnjax.plan(TINY, small_data, tmp_path / "w", devices=1).describe()
    assert ", the optimizer 'sgd' registered in place of rnnjax's own; writing to" in described


@pytest.mark.slow
def test_one_s_own_optimizer_redefined_as_another_of_no_other_leaves_is_named_not_called_damage(
        small_data, tmp_path, monkeypatch):
    """adamw's state and adam's differ in a leafless part alone: orbax's structure error read as damage.
    Registered as functions of one name (what the run records of them is the same)."""
    def mine(config, per_run=False):
        return optimizers.clipped(optax.adamw)(config, per_run)
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "mine", mine)
    config = TINY.replace(epochs=1, optimizer="mine", lr=0.01)
    fit(config, small_data, tmp_path, devices=1, log=None)

    def mine(config, per_run=False):        # noqa: F811 (redefined, as in a notebook)
        return optimizers.clipped(optax.adam)(config, per_run)
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "mine", mine)
    with pytest.raises(checkpoint.StateMismatch, match=r"its tree differs\): the run was trained with "
                                                       r"another optimizer than its Config.optimizer makes"):
        fit(config.replace(epochs=2), small_data, tmp_path, devices=1, log=None)
    assert not (tmp_path / checkpoint.DAMAGED).exists() and checkpoint.steps(tmp_path) == [13]


def test_an_optimizer_that_loads_the_data_is_one_sentence_not_a_recursion(monkeypatch, tmp_path):
    """Sizing a schedule by loading the data inside make: the data's memory check makes the optimizer,
    which loaded the data again, to a RecursionError (day-4 researcher). Another optimizer made inside
    one's own is no recursion."""
    (tmp_path / "mine.txt").write_text("a text of my own, " * 200)

    def whole_run(config, per_run=False):
        data = rnnjax.corpus.load(config.replace(**rnnjax.corpus.TEXT_DEFAULTS), text=tmp_path / "mine.txt")
        cosine = optax.cosine_decay_schedule(1.0, data.num_batches() * config.epochs)
        return optimizers.clipped(lambda learning_rate: optax.adamw(lambda n: learning_rate * cosine(n)))(
            config, per_run)
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "whole_run", whole_run)
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "wrapped", lambda config, per_run=False: optax.chain(
        optax.add_noise(0.01, 0.55, 0), optimizers.make(config.replace(optimizer="adam"), per_run)))
    said = r"^rnnjax.OPTIMIZERS\['whole_run'\] is made again as it is made .*: make it of the config alone; "
    with pytest.raises(ConfigError, match=said):
        optimizers.make(TINY.replace(optimizer="whole_run"))
    assert optimizers._MAKING.get() == frozenset()
    assert len(optimizers.make(TINY.replace(optimizer="wrapped")).init({"w": jnp.ones(3)})) == 2

    def slow(config, per_run=False):             # two threads making it at once: neither inside the other
        time.sleep(0.3)
        return optimizers.clipped(optax.adam)(config, per_run)
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "slow", slow)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        made = list(pool.map(lambda _: optimizers.make(TINY.replace(optimizer="slow")), range(2)))
    assert all(callable(m.update) for m in made)


def test_an_optimizer_that_fails_as_it_is_made_is_named_and_a_schedule_of_no_steps_said(monkeypatch):
    """optax's own sentence alone had reached the command line (researcher day 3): a cosine over
    config.steps_per_epoch * config.epochs steps, 0 unless the run sets it."""
    def cosine(config, per_run=False):
        return optax.sgd(optax.cosine_decay_schedule(config.lr, config.steps_per_epoch * config.epochs))
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "cosine", cosine)
    said = (r"^rnnjax.OPTIMIZERS\['cosine'\] cannot be made for this run \(ValueError: The "
            r"cosine_decay_schedule requires positive decay_steps, got decay_steps=0\); "
            r"config.steps_per_epoch is 0 unless the run sets it")
    with pytest.raises(ConfigError, match=said):
        optimizers.make(TINY.replace(optimizer="cosine"))
    assert callable(optimizers.make(TINY.replace(optimizer="cosine", steps_per_epoch=10)).update)


def test_clipped_traces_each_run_s_own_rate_and_norm_whatever_their_defaults(monkeypatch):
    """An int (or callable) default is kept in the function (a size, a mask), but not ``learning_rate``'s
    or ``max_norm``'s, which clipped gives each run: an int default of 1 had runs of other rates refused."""
    from rnnjax import state
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "int_rate", optimizers.clipped(functools.partial(optax.sgd,
                                                                                            learning_rate=1)))
    runs = [TINY.replace(optimizer="int_rate", lr=lr, clip=clip) for lr, clip in ((0.5, 1.0), (0.25, 2.0))]
    state.check_per_run(runs, 28)
    made = state.create_run_states(runs, 28).opt_state
    held = [np.asarray(v).tolist() for _, v in optax.tree_utils.tree_get_all_with_path(made, "learning_rate")]
    assert held == [[0.5, 0.25]]


@pytest.mark.parametrize("inner, said", [
    (optax.polyak_sgd, r"cannot make its optimizer as polyak_sgd\(learning_rate=1.0\) \(.*got an unexpected "
                       r"keyword argument 'learning_rate'\): clipped takes an optimizer that takes "
                       r"learning_rate, as optax.adamw does\.$"),
    (functools.partial(optax.sgd, 0.1), r"cannot make its optimizer as sgd\(0.1\)\(learning_rate=1.0\)"),
    (lambda learning_rate: optax.adam,
     r"made a function, not an optax transformation \(init, update\): clipped takes an optax optimizer, "
     r"optax.adamw, not optax.adamw\(0.01\)\.$"),
    (optax.adam(0.01), r"is clipped of an? \w+: clipped takes an optax optimizer, optax.adamw, not "
                       r"optax.adamw\(0.01\)\.$"),
])
def test_clipped_of_what_makes_no_optimizer_of_a_rate_is_one_sentence(small_data, tmp_path, monkeypatch,
                                                                      inner, said):
    """optax.chain's or the factory's own TypeError or AttributeError came out as it was."""
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "mine", optimizers.clipped(inner))
    with pytest.raises(ConfigError, match=r"^optimizer='mine'(, clipped\(.*\),)? " + said):
        fit(TINY.replace(optimizer="mine"), small_data, tmp_path / "w", devices=1, log=None)
    with pytest.raises((ConfigError, ValueError), match=r"^optimizer='mine'"):        # runs: made per run
        rnnjax.fit_runs([TINY.replace(optimizer="mine", seed=s) for s in (0, 1)], small_data, tmp_path / "w",
                        devices=1, log=None)
    assert not (tmp_path / "w").exists()


def test_an_optimizer_whose_state_holds_an_empty_array_is_refused_before_anything_is_written(
        small_data, tmp_path, monkeypatch):
    """orbax saves no array of no elements (optax.contrib.galore's state of a bias): the first epoch trained,
    then the first save failed, its error saying to free space and train again."""
    def with_empty(config, per_run=False):
        empty = optax.GradientTransformation(lambda params: {"rank": jnp.zeros((0, 4))},
                                             lambda grads, state, params=None: (grads, state))
        return optax.chain(optimizers.clipped(optax.sgd)(config, per_run), empty)
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "mine", with_empty)
    said = (r"^The training state holds an array of no elements \(.opt_state\[1\]\['rank'\]\), which "
            r"rnnjax's checkpoints \(orbax\) cannot save: optimizer='mine' must make none\.$")
    with pytest.raises(ValueError, match=said):
        fit(TINY.replace(optimizer="mine"), small_data, tmp_path / "w", devices=1, log=None)
    assert not (tmp_path / "w").exists()


def test_a_schedule_scaled_by_the_rate_steps_runs_of_other_rates_as_each_alone(tmp_path, monkeypatch):
    """warmup_cosine_decay_schedule(0, learning_rate, ...) branches on its peak, refused for runs; the
    refusal's way, a schedule of peak 1 times the rate, steps each run as it steps alone."""
    from rnnjax import state

    def warmup_cosine(learning_rate):
        shape = optax.warmup_cosine_decay_schedule(0.0, 1.0, 2, 10)
        return optax.adamw(lambda count: learning_rate * shape(count))

    def naive(learning_rate):
        return optax.adamw(optax.warmup_cosine_decay_schedule(0.0, learning_rate, 2, 10))
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "naive", optimizers.clipped(naive))
    runs = [TINY.replace(optimizer="naive", lr=lr, seed=s) for s, lr in enumerate((0.01, 0.003))]
    with pytest.raises(ValueError, match=r": for a schedule made from the rate, scale one of peak 1 by it "):
        arguments.check_arguments(runs[0], tmp_path / "w", devices=1, runs=runs)
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "wc", optimizers.clipped(warmup_cosine))
    runs = [r.replace(optimizer="wc") for r in runs]
    arguments.check_arguments(runs[0], tmp_path / "w", devices=1, runs=runs)
    stacked = state.create_run_states(runs, 28)
    tx = state.make_optimizer(runs[0], per_run=True)
    alone = [state.create_train_state(r, 28) for r in runs]
    grads = jax.tree.map(lambda p: jnp.cos(p) * 0.1, stacked.params)       # any gradients, each run's own

    def step(g, s, p):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s
    step, params, opt_state = jax.jit(jax.vmap(step)), stacked.params, stacked.opt_state
    before = alone[0].params
    for _ in range(3):      # the warmup's first step is of rate 0
        params, opt_state = step(grads, opt_state, params)
        alone = [a.apply_gradients(grads=jax.tree.map(lambda g: g[k], grads)) for k, a in enumerate(alone)]
    for k, a in enumerate(alone):       # each at its own rate
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x[k], y, rtol=1e-5, atol=1e-7), params, a.params)
    assert not np.allclose(jax.tree.leaves(before)[0], jax.tree.leaves(alone[0].params)[0])


def test_runs_saved_with_an_int_argument_in_their_state_say_why_they_do_not_resume(small_data, tmp_path,
                                                                                   monkeypatch):
    """Before 2026-12-07 clipped kept an optimizer's int arguments in each run's state (muon's ns_steps):
    such a checkpoint was said to be of another optimizer."""
    def counted(learning_rate, every=2):
        return optax.chain(optax.sgd(learning_rate), optax.apply_every(every))
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "counted", optimizers.clipped(counted))
    runs = [TINY.replace(optimizer="counted", lr=lr, epochs=1) for lr in (0.5, 0.25)]
    monkeypatch.setattr(optimizers, "is_int", lambda x: False)         # the rule before
    rnnjax.fit_runs(runs, small_data, tmp_path, devices=1, log=None)
    monkeypatch.undo()
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "counted", optimizers.clipped(counted))
    said = r" holds int arguments of its optimizer \(every\) in each run's state, as rnnjax kept them before "
    with pytest.raises(checkpoint.StateMismatch, match=said):
        rnnjax.fit_runs([r.replace(epochs=2) for r in runs], small_data, tmp_path, devices=1, log=None)
    assert checkpoint.restore(tmp_path, run=1).step == 13        # for inference: its parameters

    def counted(learning_rate):         # the argument taken out of the function: another optimizer
        return optax.chain(optax.sgd(learning_rate), optax.apply_every(2))
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "counted", optimizers.clipped(counted))
    with pytest.raises(checkpoint.StateMismatch, match=r"the run was trained with another optimizer than"):
        rnnjax.fit_runs([r.replace(epochs=2) for r in runs], small_data, tmp_path, devices=1, log=None)


def test_clipping_is_optax_s_each_update_in_its_own_dtype():
    """Runs trained together keep max_norm in their state, a float32 array: optax's clip made a bfloat16
    parameter's update float32 there and refused to select between the two (a bfloat16 parameter trained
    alone, not with --seeds)."""
    f32 = {"w": jnp.array([3.0, 4.0]), "b": jnp.array(0.25)}
    half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), f32)
    for grads, max_norm in ((f32, 1.0), (f32, jnp.float32(1.0)), (f32, 9.0), (half, 1.0)):
        ours = optimizers.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())[0]
        theirs = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())[0]
        jax.tree.map(np.testing.assert_array_equal, ours, theirs)
        assert jax.tree.map(lambda x: x.dtype, ours) == jax.tree.map(lambda x: x.dtype, theirs)
    with pytest.raises(TypeError, match="lax.select requires arguments to have the same dtypes"):
        jax.jit(optax.clip_by_global_norm(jnp.float32(1.0)).update)(half, optax.EmptyState())
    runs = jax.jit(optimizers.clip_by_global_norm(jnp.float32(1.0)).update)(half, optax.EmptyState())[0]
    expected = optax.clip_by_global_norm(1.0).update(half, optax.EmptyState())[0]
    assert jax.tree.map(lambda x: x.dtype, runs) == jax.tree.map(lambda x: x.dtype, half)
    jax.tree.map(np.testing.assert_array_equal, runs, expected)


def test_runs_of_a_cell_with_a_bfloat16_parameter_train_together(small_data, tmp_path, monkeypatch):
    import flax.linen as nn

    from rnnjax import model as model_lib, runs

    class HalfInput(DenseCell):       # its input weights kept in bfloat16
        @nn.compact
        def __call__(self, h, x):
            w = self.param("w", nn.initializers.lecun_normal(), (x.shape[-1], self.features), jnp.bfloat16)
            h = jnp.tanh((x.astype(jnp.bfloat16) @ w).astype(jnp.float32) + nn.Dense(self.features)(h))
            return h, h
    monkeypatch.setitem(model_lib.CELLS, "half", HalfInput)
    configs = [TINY.replace(cell="half", epochs=1, seed=s) for s in (0, 1)]
    result = runs.fit_runs(configs, small_data, tmp_path, devices=1, log=None)
    assert result.state.params["rnn"]["cell"]["w"].dtype == jnp.bfloat16
    assert all(np.isfinite(r["val_ppl"]) for r in result.history) and len(result.history) == 2
    adam = [c.replace(optimizer="adam") for c in configs]     # its b1, b2 and eps kept as float32 arrays
    with pytest.raises(ValueError, match=r"bfloat16\[\d+, 16\] before, float32\[\d+, 16\] after\): a run's "
                                         r"steps need one that keeps them; runs trained together keep its "
                                         r"hyperparameters in their state as float32 arrays"):
        runs.fit_runs(adam, small_data, tmp_path / "adam", devices=1, log=None)


def test_the_docstring_s_schedule_runs_as_written_and_trains_runs_of_two_rates(tmp_path, monkeypatch):
    """The README points at it: a cosine of peak 1 scaled by each run's rate, over the run's steps. It had
    the researcher load the data of a config naming "cosine" before it was registered (refused)."""
    import re

    from rnnjax import corpus
    [example] = re.findall(r"::\n\n((?:    .*\n)+)", optimizers.__doc__)
    monkeypatch.setitem(rnnjax.OPTIMIZERS, "cosine", None)          # the example's, removed after
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mytext.txt").write_text(small_text(6000))
    config = TINY.replace(epochs=2, **corpus.TEXT_DEFAULTS)
    seen = {"rnnjax": rnnjax, "optax": optax, "config": config}
    exec(textwrap.dedent(example).replace("fit_runs(runs, data, ", "fit_runs(runs, data, log=None, workdir="),
         seen)
    result = seen["result"]
    assert len(result.history) == 4 and all(np.isfinite(r["val_ppl"]) for r in result.history)
    held = optax.tree_utils.tree_get_all_with_path(result.state.opt_state, "learning_rate")
    np.testing.assert_allclose(held[0][1], [0.01, 0.003])             # each run's rate, in its state
