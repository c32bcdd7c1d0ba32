import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import TINY, DenseCell, ListedCell
from rnnjax import state
from rnnjax.state import abstract_train_state, create_train_state, make_model


def test_init_compiler_options_change_no_value():
    """Init's faster-compiling XLA options give bit-for-bit what its plain unoptimized build gives."""
    model = make_model(TINY, 28)
    args = (jax.random.key(TINY.seed), jnp.zeros((1, TINY.num_steps), jnp.int32))
    plain = jax.jit(model.init, compiler_options={"xla_backend_optimization_level": 0})(*args)["params"]
    params = create_train_state(TINY, 28).params
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_create_train_state_compiles_one_program_once_for_every_seed():
    """Key, dummy input and init are one compiled program: made eagerly, each would compile its own; it
    compiled again for each call (each seed). Programs are counted as lowerings: an XLA that refuses one of
    init's options compiles it twice."""
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            compiles.append(duration)
    jax.clear_caches()
    state._compiled_init.cache_clear()
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for seed in (17, 18, 2 ** 32 - 1):
            create_train_state(dataclasses.replace(TINY, seed=seed), 28)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(compiles) == 1, compiles


def test_abstract_state_has_the_shapes_of_the_real_one():
    real, abstract = create_train_state(TINY, 28), abstract_train_state(TINY, 28)
    shapes = lambda tree: [(np.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(tree)]
    assert shapes(real) == shapes(abstract) and len(shapes(real)) == 6


def test_params_of_another_model_are_refused():
    other = create_train_state(TINY.replace(num_hiddens=8), 28).params
    with pytest.raises(ValueError, match=r"do not fit the config \(cell 'rnn', num_hiddens=16, vocab"):
        create_train_state(TINY, 28, params=other)


BIAS = r"\['output_layer'\]\['bias'\]"


@pytest.mark.parametrize("change,message", [
    (lambda p: jax.tree.map(lambda x: x.astype(jnp.bfloat16), p),
     BIAS + r" is bfloat16, expected float32; keep float32 parameters: Config.compute_dtype='bfloat16' "
            r"casts them for the matmuls\.$"),
    (lambda p: jax.tree.map(lambda x: x.astype(jnp.float16), p),
     BIAS + " is float16, expected float32; keep float32 parameters"),
    (lambda p: jax.tree.map(lambda x: x.astype(jnp.int32), p),
     BIAS + r" is int32, expected float32; cast it to float32\.$"),
    (lambda p: {"a": 1}, "they lack " + BIAS + r" \(and 4 more\); they have \['a'\], which the model"),
    (lambda p: {**p, "extra": jnp.zeros(3)}, r"they have \['extra'\], which the model has not\.$"),
    (lambda p: {**p, "output_layer": {**p["output_layer"], "bias": 1.0}},
     BIAS + r" is of type float, not an array of shape \(28,\)\.$"),
    (lambda p: 5, r"they are of type int, not a dict of arrays\.$"),
], ids=["bfloat16", "float16", "int32", "another tree", "an extra leaf", "a float leaf", "not a tree"])
def test_params_of_another_tree_kind_or_dtype_are_refused_naming_the_leaf(change, message):
    params = create_train_state(TINY, 28).params
    fit = r"^The parameters do not fit the config \(cell 'rnn', num_hiddens=16, vocabulary 28\): "
    with pytest.raises(ValueError, match=fit + message):
        state.check_params(change(params), TINY, 28)
    state.check_params(jax.tree.map(np.asarray, params), TINY, 28)     # NumPy float32 arrays are fine
    state.check_params(jax.tree.map(lambda x: np.asarray(x, np.float64), params), TINY, 28)   # JAX's float32
    with pytest.raises(ValueError, match=r"^Give the parameters themselves .*, not flax's variables"):
        state.check_params({"params": params}, TINY, 28)        # as fit's params=: inference said it, fit not


@pytest.mark.parametrize("vocab_size", [0, -3, 2.5, True, "28"])
def test_a_vocabulary_size_that_is_not_a_count_of_tokens_is_one_sentence(vocab_size):
    with pytest.raises(ValueError, match=r"^vocab_size must be a whole number of tokens, at least 1 "
                                         rf"\(len\(data\.vocab\)\), got {re.escape(repr(vocab_size))}\.$"):
        create_train_state(TINY, vocab_size)


def test_optimizer_clips_then_steps():
    tx = state.make_optimizer(TINY.replace(lr=0.5, clip=1.0))
    grads = {"w": jnp.array([3.0, 4.0])}                    # norm 5: clipped to 1
    updates, _ = tx.update(grads, tx.init(grads), grads)
    np.testing.assert_allclose(updates["w"], [-0.3, -0.4], rtol=1e-6)


def test_run_states_are_each_runs_own_step_zero():
    """One vmapped init gives each run exactly the parameters its seed gives alone (seeds past int32 too),
    and its own clip and lr in the optimizer state."""
    configs = [TINY.replace(seed=0), TINY.replace(seed=2**32 - 1, lr=0.5), TINY.replace(seed=7, clip=2.0)]
    stacked = state.create_run_states(configs, 18)
    for r, config in enumerate(configs):
        alone = create_train_state(config, 18)
        for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(stacked.params)):
            np.testing.assert_array_equal(a, b[r])
        clip, sgd = stacked.opt_state
        assert float(clip.hyperparams["max_norm"][r]) == config.clip
        assert float(sgd.hyperparams["learning_rate"][r]) == config.lr
    # Runs of another shape were made as the first one's model, silently (day-2 researcher).
    from rnnjax.config import ConfigError
    for other, said in ((TINY.replace(cell="gru"), "differ in cell"), (TINY.replace(optimizer="adam"),
                        "differ in optimizer"), (TINY, "Two of the runs are the same run")):
        with pytest.raises(ConfigError, match=said):
            state.create_run_states([TINY, other], 18)
    with pytest.raises(ConfigError, match=r"^configs must be a list of Config objects, not of type Config"):
        state.create_run_states(TINY, 18)
    assert state.create_run_states(iter(configs), 18).step.shape == (3,)
    assert stacked.step.tolist() == [0, 0, 0]


def test_a_seed_s_parameters_are_threefry_s_whatever_prng_jax_defaults_to():
    """Under ``JAX_DEFAULT_PRNG_IMPL=rbg`` a new run's parameters were rbg's: train ppl 20.65 against 19.96
    for the same seed (hostile pass)."""
    configs = [TINY, TINY.replace(seed=1)]
    threefry = [create_train_state(c, 18).params for c in configs]
    jax.clear_caches()
    try:
        jax.config.update("jax_default_prng_impl", "rbg")
        alone = create_train_state(TINY, 18).params
        together = state.create_run_states(configs, 18).params
    finally:
        jax.config.update("jax_default_prng_impl", "threefry2x32")
        jax.clear_caches()
    for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(threefry[0])):
        np.testing.assert_array_equal(a, b)
    for r, params in enumerate(threefry):
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(together)):
            np.testing.assert_array_equal(a, b[r])


def old_optimizers(config):
    """The two factories as they were before they became one: the structures existing checkpoints hold."""
    single = optax.chain(optax.clip_by_global_norm(config.clip), optax.sgd(config.lr))
    runs = optax.chain(optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=config.clip),
                       optax.inject_hyperparams(optax.sgd)(learning_rate=config.lr))
    return single, runs


def test_one_optimizer_factory_keeps_each_kind_of_state_checkpoints_hold():
    """A single run's state and many runs' are what the two old factories made (structure, values, updates),
    and every state ``rnnjax.state`` builds, abstract ones included, has that structure."""
    config = TINY.replace(lr=0.5, clip=2.0)
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    grads = {"w": jnp.full((2, 3), 3.0), "b": jnp.arange(3.0)}         # norm > clip: clipped
    updates = []
    for per_run, old in zip((False, True), old_optimizers(config), strict=True):
        tx = state.make_optimizer(config, per_run=per_run)
        new_state, old_state = tx.init(params), old.init(params)
        assert jax.tree.structure(new_state) == jax.tree.structure(old_state)
        for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(old_state), strict=True):
            np.testing.assert_array_equal(a, b)
        new_updates = tx.update(grads, new_state, params)[0]
        old_updates = old.update(grads, old_state, params)[0]
        for a, b in zip(jax.tree.leaves(new_updates), jax.tree.leaves(old_updates), strict=True):
            np.testing.assert_array_equal(a, b)
        updates.append(new_updates)
    for a, b in zip(*map(jax.tree.leaves, updates), strict=True):      # the same math either way
        np.testing.assert_allclose(a, b, rtol=1e-6)

    params = create_train_state(config, 28).params
    single, runs = (jax.tree.structure(old.init(params)) for old in old_optimizers(config))
    configs = [config, config.replace(seed=1)]
    assert jax.tree.structure(create_train_state(config, 28).opt_state) == single
    assert jax.tree.structure(abstract_train_state(config, 28).opt_state) == single
    assert jax.tree.structure(state.create_run_states(configs, 28).opt_state) == runs
    assert jax.tree.structure(state.abstract_run_states(configs, 28).opt_state) == runs


@pytest.mark.slow
def test_runs_of_other_rates_need_an_optimizer_that_keeps_each_runs_own(small_data, tmp_path, monkeypatch):
    """One optimizer steps every run: one of a researcher's own that ignores ``per_run`` would train each at
    the first run's lr (and clip), while the records say each run's own."""
    from rnnjax.runs import fit_runs

    def adam(config, per_run=False):
        return optax.chain(optax.clip_by_global_norm(config.clip), optax.adam(1e-2 * config.lr))
    monkeypatch.setattr(state, "make_optimizer", adam)
    for field, other in (("lr", {"lr": 3.0}), ("clip", {"clip": 0.5})):
        configs = [TINY.replace(epochs=1), TINY.replace(epochs=1, seed=1, **other)]
        with pytest.raises(ValueError, match=rf"^Runs of different {field} train in one step only where "
                                             rf".*; for a run of {field}=1\.0 it holds none\.$"):
            fit_runs(configs, small_data, tmp_path / field, devices=1, log=None)
        assert not (tmp_path / field).exists()
        with pytest.raises(ValueError, match=rf"^Runs of different {field} "):        # states made directly
            state.create_run_states(configs, len(small_data.vocab))
    seeds = [TINY.replace(epochs=1), TINY.replace(epochs=1, seed=1)]         # the same lr and clip: any one
    seeds = fit_runs(seeds, small_data, tmp_path / "seeds", devices=1, log=None)
    assert len(seeds.history) == 2

    def grouped(config, per_run=False):
        """Each run's lr in each group's state (twice), and a mask that follows the parameters' tree."""
        sgd = optax.inject_hyperparams(optax.sgd)
        decay = optax.masked(optax.add_decayed_weights(1e-4), lambda p: {"output_layer": False, "rnn": True})
        return optax.chain(optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=config.clip), decay,
                           optax.multi_transform({"out": sgd(learning_rate=config.lr),
                                                  "rnn": sgd(learning_rate=config.lr)},
                                                 lambda p: {"output_layer": "out", "rnn": "rnn"}))
    monkeypatch.setattr(state, "make_optimizer", grouped)
    rates = [TINY.replace(epochs=1), TINY.replace(epochs=1, seed=1, lr=2.0, clip=0.5)]
    assert len(fit_runs(rates, small_data, tmp_path / "grouped", devices=1, log=None).history) == 2


def test_a_cell_with_a_field_that_cannot_be_hashed_initializes(monkeypatch):
    """The compiled init is cached by model, which flax hashes by its fields: a list field failed."""
    from rnnjax import model as model_lib
    monkeypatch.setitem(model_lib.CELLS, "listed", ListedCell)
    config = TINY.replace(cell="listed")
    a, b = create_train_state(config, 28), create_train_state(config, 28)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_cell_partial_that_sets_its_own_dtype_is_refused_unless_it_is_the_compute_dtype(monkeypatch):
    """A partial's ``dtype`` was set over by ``compute_dtype`` silently, the run saying float32 where its cell
    was registered as bfloat16. Refused as a run is planned (``arguments.check_arguments``), not for
    inference: a run trained so computed in float32. A class's default is a default (rnnjax's, flax's, one's
    own)."""
    import flax.linen as nn
    from rnnjax import model as model_lib
    from rnnjax.config import ConfigError

    class Half(nn.GRUCell):
        dtype: object = jnp.bfloat16
    monkeypatch.setitem(model_lib.CELLS, "bf16", functools.partial(nn.GRUCell, dtype=jnp.bfloat16))
    with pytest.raises(ConfigError, match=r"^rnnjax.CELLS\['bf16'\] sets dtype=bfloat16 itself, and rnnjax "
                                          r"makes every cell compute in compute_dtype='float32': give the "
                                          r"dtype there \(float32 or bfloat16\), not in the cell"):
        state.check_own_dtype(TINY.replace(cell="bf16"))
    assert make_model(TINY.replace(cell="bf16"), 28).rnn.cell.dtype == jnp.float32      # a restore's
    state.check_own_dtype(TINY.replace(cell="bf16", compute_dtype="bfloat16"))
    monkeypatch.setitem(model_lib.CELLS, "f32", functools.partial(nn.GRUCell, dtype=jnp.float32))
    with pytest.raises(ConfigError, match="sets dtype=float32 itself"):
        state.check_own_dtype(TINY.replace(cell="f32", compute_dtype="bfloat16"))
    for name, cell in (("half", Half), ("flax", nn.GRUCell), ("listed", ListedCell), ("gru", None)):
        if cell is not None:
            monkeypatch.setitem(model_lib.CELLS, name, cell)
        for dtype in ("float32", "bfloat16"):
            state.check_own_dtype(TINY.replace(cell=name, compute_dtype=dtype))


def test_the_abstract_state_is_what_the_cell_makes_now(monkeypatch):
    """A cell's parameters may follow more than its fields (a setting of its module): a restore target, the
    check of a run's or a prompt's parameters, and a fresh init are what the cell makes now, not cached per
    model (a stale one let a restore give parameters its model cannot apply, refused a model's own, or began
    a run with parameters its step could not apply)."""
    import flax.linen as nn

    from rnnjax import model as model_lib
    width = [3]

    class Widening(DenseCell):
        @nn.compact
        def __call__(self, h, x):
            b = self.param("b", nn.initializers.zeros, (width[0],))
            h = jnp.tanh(nn.Dense(self.features)(x) + nn.Dense(self.features, use_bias=False)(h) + b.sum())
            return h, h
    monkeypatch.setitem(model_lib.CELLS, "widening", Widening)
    config = TINY.replace(cell="widening")
    made = lambda: (abstract_train_state(config, 5).params["rnn"]["cell"]["b"].shape,
                    create_train_state(config, 5).params["rnn"]["cell"]["b"].shape)
    before = made()
    width[0] = 5
    assert (before, made()) == (((3,), (3,)), ((5,), (5,)))
    model = state.make_model(config, 5)
    state.check_model_params(create_train_state(config, 5).params, model)     # what predict checks
    width[0] = 3
    state.check_model_params(create_train_state(config, 5).params, model)


def test_the_step_check_is_of_the_cell_as_it_steps_now(monkeypatch):
    """Cached per cell, it passed a cell whose carry had come to follow a setting of its module, which then
    failed in flax's scan."""
    import flax.linen as nn

    from rnnjax import model as model_lib
    from rnnjax.config import ConfigError
    kept = [None]

    class Cutting(DenseCell):
        @nn.compact
        def __call__(self, h, x):
            h = jnp.tanh(nn.Dense(self.features)(x) + nn.Dense(self.features, use_bias=False)(h))
            return h[:, :kept[0]], h
    monkeypatch.setitem(model_lib.CELLS, "cutting", Cutting)
    make_model(TINY.replace(cell="cutting"), 5)
    kept[0] = 4
    with pytest.raises(ConfigError, match=r"whose step returns a carry of float32\[2,4\] from "):
        make_model(TINY.replace(cell="cutting"), 5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="JAX's LAPACK on a CPU has no bfloat16")
def test_a_cell_of_bfloat16_parameters_jax_cannot_initialize_here_is_one_sentence(monkeypatch):
    """flax's orthogonal initializer (a GRU's recurrent kernel) needs a QR, which JAX's CPU kernels lack in
    bfloat16: JAX's NotImplementedError of a KeyError came through fit (JAX 0.10)."""
    import flax.linen as nn
    from rnnjax import model as model_lib, runs
    from rnnjax.config import ConfigError
    monkeypatch.setitem(model_lib.CELLS, "g16", functools.partial(nn.GRUCell, param_dtype=jnp.bfloat16))
    config = TINY.replace(cell="g16")
    said = (r"^rnnjax.CELLS\['g16'\] makes bfloat16 parameters, which JAX cannot initialize on CPU \(its "
            r"initializer's 'Unsupported dtype bfloat16'\): keep them float32 and set compute_dtype=|"
            r"qr does not accept dtype bfloat16")       # JAX 0.11 refuses it as it traces: the step check
    for create in (lambda: state.create_train_state(config, 28),
                   lambda: runs.create_run_states([config, config.replace(seed=1)], 28)):
        with pytest.raises(ConfigError, match=said):
            create()
