"""Four simulated CPU devices for the whole session (before JAX initializes), float32 matmuls at full
precision on every backend, and XLA's CPU compiler set to compile fast.

Tests that want one device say so (``devices=1``); multi-process tests start
their own interpreters. Tests that need the CPU devices (several, or the CPU
as JAX's backend) say ``@pytest.mark.cpu_devices(n)``: skipped, saying why,
where JAX's default backend is another (a GPU).
"""

import atexit
import dataclasses
import gc
import hashlib
import importlib.metadata
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from experiments import stopping

stopping.die_with_parent()          # run by the device check: its tests stop as it dies, however it dies

# The suite compiles hundreds of small programs, and on a CPU compiling is most of its time: LLVM
# unoptimized and XLA's older CPU emitters build the same math faster (docs/performance.md). Steps
# compiled with options of their own (rnnjax.backend) keep them; subprocesses that run as a user does
# drop these (user_env). Not where an accelerator's plugin is installed: its XLA may not know them.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
ACCELERATOR_PLUGINS = ("jax-cuda", "jax-rocm", "libtpu")
KNOWN_FLAGS_VAR = "RNNJAX_TEST_XLA_FLAGS"


def known_xla_flags(flags: tuple[str, ...]) -> list[str]:
    """Those of ``flags`` this XLA knows. It aborts the process on a flag it does not know, and flags
    come and go between versions (jaxlib 0.11 dropped the emitters'), so each is tried in a child."""
    probe = "import jax; jax.devices('cpu')"
    children = [subprocess.Popen([sys.executable, "-c", probe], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL,
                                 env={**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"})
                for flag in flags]
    return [flag for flag, child in zip(flags, children) if child.wait() == 0]


if not any((d.metadata["Name"] or "").lower().replace("_", "-").startswith(ACCELERATOR_PLUGINS)
           for d in importlib.metadata.distributions()):
    if KNOWN_FLAGS_VAR not in os.environ:          # asked once: pytest-xdist's workers inherit the answer
        os.environ[KNOWN_FLAGS_VAR] = " ".join(known_xla_flags(TEST_XLA_FLAGS))
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {os.environ[KNOWN_FLAGS_VAR]}".strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402 (after XLA_FLAGS, which the CPU backend reads as it starts)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rnnjax import backend  # noqa: E402
from rnnjax.config import PRESETS  # noqa: E402
from rnnjax.data import TimeMachine  # noqa: E402

CPU_DEVICES = 4
jax.config.update("jax_num_cpu_devices", CPU_DEVICES)
# Tests compare two implementations (fused and plain, cells and references, runs, devices) to float32
# round-off, so their matmuls are full float32 everywhere, subprocesses' too: JAX's default on recent
# NVIDIA GPUs is TF32 (about 1e-3 relative). On a CPU it changes only an attribute of the dots.
jax.config.update("jax_default_matmul_precision", "highest")
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
# Downloads and compilation caches of this session (its subprocesses and pytest-xdist's workers,
# which inherit the variable) stay out of ~/.cache, and go when the process that made them ends.
if "RNNJAX_TEST_CACHE" not in os.environ:
    os.environ["RNNJAX_TEST_CACHE"] = tempfile.mkdtemp(prefix="rnnjax-test-cache-")
    atexit.register(shutil.rmtree, os.environ["RNNJAX_TEST_CACHE"], ignore_errors=True)
os.environ["RNNJAX_CACHE"] = os.environ["RNNJAX_TEST_CACHE"]
# Many tests compile the same small programs: JAX's persistent cache compiles each once a session.
backend.enable_compilation_cache()

# The suite traces thousands of small programs, allocating as it goes: Python's collector took about a
# tenth of its CPU (docs/performance.md).
backend.collect_less()

# Made absolute, so that subprocesses and notebook kernels in other folders find it too.
REAL_TEXT = os.environ.get("RNNJAX_TIMEMACHINE") and str(Path(os.environ["RNNJAX_TIMEMACHINE"]).resolve())
if REAL_TEXT:
    os.environ["RNNJAX_TIMEMACHINE"] = REAL_TEXT

# Tests' shared config: seconds on one CPU core.
TINY = PRESETS["tiny"]
# Its epoch of 13 steps is one call of the training program (rnnjax.loop); these epochs are two, of both
# lengths an epoch's calls have: STEPS_PER_CALL steps, then the last taking the 3 left over along.
TWO_CALLS = TINY.replace(num_train=360)


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_devices(n): needs n of conftest's CPU devices as JAX's default "
                                       "backend; skipped on other backends")


# Cases the fast loop (`-m "not slow"`) leaves to the full suite: a sibling case of each stays in it.
SLOW_CASES = {
    "test_cudnn.py::test_packed_params_give_lstm_ref_the_plain_models_outputs_loss_and_gradients[2]",
    "test_cudnn.py::test_the_kernel_trains_as_the_plain_model[2-0.3-calls2]",
    "test_hoisted.py::test_hoisted_loss_equals_plain_loss[lstm-2 dropout]",
    "test_custom_cell.py::test_a_foreign_cell_in_the_model_is_flax_s_nn_rnn_over_one_hot_vectors[flax_gru]",
    "test_custom_cell.py::test_a_foreign_cell_trains_resumes_exactly_restores_and_generates[dense]",
    "test_fused.py::test_fused_loss_equals_plain_loss_in_bfloat16[after the loop-LSTMCell-2-kwargs3]",
    "test_fused.py::test_fused_loss_equals_plain_loss_in_bfloat16[after the loop-GRUCell-1-kwargs2]",
    "test_fused.py::test_fused_loss_equals_plain_loss_for_every_cell_and_depth[SimpleRNNCell-3-0.0]",
    "test_objective.py::test_every_loss_differentiates_the_targets_written_once[hoisted]",
    "test_precision.py::test_bfloat16_gradients_are_close_to_float32_ones[plain-lstm, 2 layers]",
    "test_precision.py::test_bfloat16_gradients_are_close_to_float32_ones[fused-lstm, 2 layers]",
    "test_precision.py::test_bfloat16_gradients_are_close_to_float32_ones[plain-gru]",
    "test_model.py::test_stack_is_causal_unless_bidirectional[True]",
    "test_generate.py::test_top_k_never_emits_a_token_outside_the_top_k[3]",
    "test_cells.py::test_cell_gradients_equal_central_differences[gru]",
    "test_cells.py::test_cell_gradients_equal_central_differences[lstm]",
    "test_fused.py::test_fused_loss_equals_plain_loss_in_bfloat16[after the loop-SimpleRNNCell-1-kwargs1]",
    "test_precision.py::test_bfloat16_gradients_are_close_to_float32_ones[fused-rnn]",
    "test_cells.py::test_cell_equals_pytorch_equations[6-28-32-lstm-kwargs3]",
    "test_faults.py::test_a_checkpoint_that_lost_orbaxs_tree_metadata_resumes_as_it_restores[True]",
    "test_faults.py::test_a_checkpoint_this_process_may_not_read_is_not_set_aside_as_damaged[meta]",
    "test_loop.py::test_an_exception_from_progress_saves_its_step_and_the_same_fit_goes_on_from_there"
    "[epoch-23-True]",
}
# Whole tests likewise: each has a faster sibling in its file.
SLOW_TESTS = {
    "test_faults.py::test_a_damaged_meta_of_runs_trained_together_is_damage",
    "test_faults.py::test_a_diverging_run_among_runs_resumes_bit_for_bit",
    "test_precision.py::test_parameters_optimizer_state_and_carry_stay_float32_after_a_bfloat16_step",
    "test_timemachine.py::test_cli_trains_on_your_own_words_resumes_and_samples_without_the_file",
    "test_train.py::test_padding_rows_change_nothing",
    "test_hoisted.py::test_hoisted_loss_equals_plain_loss_in_bfloat16",
    "test_corpus.py::test_words_train_restore_and_generate_joined_by_spaces",
    "test_runs.py::test_each_run_restores_on_its_own",
    "test_checkpoint.py::test_best_is_the_lowest_validation_perplexity_and_survives_a_restart",
    "test_train.py::test_fit_is_deterministic_under_a_seed",
    "test_objective.py::test_the_cross_entropy_is_measured_not_differentiated",
}


# The files of the longest tests (subprocesses of whole runs, up to a minute each), first: the two workers
# start on them and end on short ones, not one of them on a long test after the other is done.
LONG_FIRST = ("test_device_check.py", "test_benchmark.py", "test_readme.py", "test_faults.py",
              "test_parallel.py", "test_compiled.py", "test_notebook.py", "test_timemachine.py")


def pytest_collection_modifyitems(items):
    for item in items:
        name = f"{item.path.name}::{item.name}"
        if name in SLOW_CASES or name.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: LONG_FIRST.index(item.path.name) if item.path.name in LONG_FIRST
               else len(LONG_FIRST))


def pytest_unconfigure(config):
    # As it exits, pytest collects garbage five times (for unraisable exceptions) over the heap a session
    # leaves, seconds in all, while pytest-xdist waits on its workers: what is left then stays.
    gc.freeze()


MAX_MAPS = 30000       # of the kernel's default vm.max_map_count, 65530
_teardowns = [0]


def pytest_runtest_teardown(item):
    # Every program a worker compiles or reads from the cache holds memory maps while JAX keeps it, and
    # the command run in-process freezes what is alive (backend.collect_less, for a process that trains
    # once). A worker near the kernel's limit crashed in XLA as it loaded one more (a segfault): thawed
    # every tenth test, and JAX's caches dropped past MAX_MAPS.
    _teardowns[0] += 1
    if _teardowns[0] % 10:          # every tenth test: a thaw makes the next collections longer
        return
    gc.unfreeze()
    try:
        with open("/proc/self/maps") as f:
            maps = sum(1 for _ in f)
    except OSError:         # not Linux
        return
    if maps > MAX_MAPS:
        jax.clear_caches()
        gc.collect()


def pytest_runtest_setup(item):
    marker = item.get_closest_marker("cpu_devices")
    if marker is None:
        return
    needed, backend_name = marker.args[0], jax.default_backend()
    if backend_name != "cpu" or jax.device_count() < needed:
        pytest.skip(f"needs {needed} CPU device(s) as JAX's default backend (conftest makes "
                    f"{CPU_DEVICES} on a CPU); here it is {jax.device_count()} {backend_name} device(s)")


@pytest.fixture
def signal_in_a_gc_callback():
    """``send(signum)``: a garbage collection in which a callback sends ``signum`` once, so that its
    handler runs inside the callback, where Python prints and drops what it raises (JAX has one)."""
    import gc

    def send(signum):
        sent = []

        def callback(phase, info):
            if not sent:
                sent.append(signum)
                os.kill(os.getpid(), signum)
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)
        assert sent == [signum]
    return send


@pytest.fixture
def real_text_path():
    if not REAL_TEXT:
        pytest.skip("set RNNJAX_TIMEMACHINE to d2l's timemachine.txt (.ci/run does)")
    return REAL_TEXT


# For a child whose figures no test reads: the suite's compile flags kept (above), so it compiles faster.
SUITE_XLA_FLAGS = {"XLA_FLAGS": os.environ["XLA_FLAGS"]} if "XLA_FLAGS" in os.environ else {}


def user_env(**overrides: str) -> dict[str, str]:
    """This process's environment without its device settings (not this session's four
    devices), plus ``overrides``: what a fresh interpreter of a user's would see."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    return {**env, **overrides}


@pytest.fixture
def fresh_env():
    return user_env


def start_main_job(*args: str, cpu_devices: int | None = None, as_a_user: bool = False) -> subprocess.Popen:
    """``python -m experiments.timemachine ARGS`` in a fresh interpreter: on JAX's default backend, one CPU
    device per core there; ``cpu_devices`` CPU devices if given (on any machine). With the suite's XLA
    flags (it compiles faster; a test of how it stops or resumes compares like with like), unless
    ``as_a_user`` (a test of the recipe's figures)."""
    env = user_env(**({} if as_a_user else SUITE_XLA_FLAGS))
    if cpu_devices is not None:
        env.update(JAX_NUM_CPU_DEVICES=str(cpu_devices), JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "experiments.timemachine", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def free_port() -> int:
    """A TCP port free on this machine now (for a multi-host run's process 0 to serve on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def main_job():
    return start_main_job


@pytest.fixture
def make_text():
    return small_text


# A text's own settings, capped to the tiny preset's windows: seconds to train.
TEXT = TINY.replace(preprocess="raw", val_fraction=0.1, epochs=2)
WORDS = ["Ωmega", "ÆON", "42", "X-7", "Zürich.", "çà", "ñandú,", "Éclair!", "日本", "the"]


def other_alphabet(num_words: int = 1500, seed: int = 0) -> str:
    """Digits, upper case, punctuation and non-ASCII letters, in lines of words."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(WORDS), num_words, p=np.arange(len(WORDS), 0, -1) / 55)
    return "".join(WORDS[i] + ("\n" if k % 9 == 8 else " ") for k, i in enumerate(picks))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "other.txt"
    path.write_text(other_alphabet(), encoding="utf-8")
    return path


def cache_entries():
    from rnnjax import source
    root = source.cache_dir() / "corpus"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def small_text(num_chars: int = 3000, seed: int = 0) -> str:
    """A text of words over a small alphabet, with punctuation and capitals to clean."""
    rng = np.random.default_rng(seed)
    words = ["the", "time", "machine", "traveller", "It", "has", "a", "dimension", "of", "space!"]
    out, n = [], 0
    while n < num_chars:
        w = words[rng.integers(len(words))]
        out.append(w)
        n += len(w) + 1
    return " ".join(out) + "\n"


class DenseCell(nn.RNNCellBase):
    """A cell written the flax way, as a user writes one: ``nn.Dense`` layers on the input and the carry, no
    ``dtype`` attribute, none of rnnjax's kernels knows its gates."""
    features: int

    @nn.compact
    def __call__(self, h, x):
        h = jnp.tanh(nn.Dense(self.features)(x) + nn.Dense(self.features, use_bias=False)(h))
        return h, h

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        return jnp.zeros((*input_shape[:-1], self.features))

    @property
    def num_feature_axes(self):
        return 1


class ListedCell(DenseCell):
    """A cell with a field flax cannot hash (a list): jit takes models as static arguments, hashed."""
    scales: list = dataclasses.field(default_factory=lambda: [0.5, 2.0])

    @nn.compact
    def __call__(self, h, x):
        scale_x, scale_h = self.scales
        h = jnp.tanh(nn.Dense(self.features)(x) * scale_x + nn.Dense(self.features)(h) * scale_h)
        return h, h


@pytest.fixture
def tiny():
    return TINY


@pytest.fixture
def two_call_data():
    """``TWO_CALLS``' data from ``small_data``'s text: 23 train batches (the last one padded)."""
    return TimeMachine(TWO_CALLS.batch_size, TWO_CALLS.num_steps, TWO_CALLS.num_train, TWO_CALLS.num_val,
                       text=small_text(5000))


@pytest.fixture
def small_data():
    """``TINY``'s data from a made-up text: 13 train batches (the last one padded), 4 validation ones."""
    return TimeMachine(TINY.batch_size, TINY.num_steps, TINY.num_train, TINY.num_val, text=small_text(5000))


def assert_trees_equal(a, b):
    """Two trees of arrays equal bit for bit."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def tree_digest(path):
    """Every file under ``path`` with its content hash: to show nothing changed."""
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def without_seconds(records: list[dict]) -> list[dict]:
    """Metrics records without their wall-clock ``seconds``: what a resumed run repeats bit for bit."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def relative_error(a, b) -> float:
    """``|a - b| / |b|`` over all the leaves of two trees (gradients) as one vector."""
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (a, b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def assert_same(a, b, loss_rtol=1e-5):
    """Two ``(loss, gradients)`` equal to float32 round-off: the losses to ``loss_rtol``, each gradient."""
    np.testing.assert_allclose(a[0], b[0], rtol=loss_rtol)
    for x, y in zip(jax.tree.leaves(a[1]), jax.tree.leaves(b[1]), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def random_batch(B: int, T: int, V: int, seed=1) -> tuple[jax.Array, jax.Array]:
    """Token ids ``(X, Y)``, each ``(B, T)`` in ``[0, V)``, drawn from the keys ``seed`` and ``seed + 1``."""
    X = jax.random.randint(jax.random.key(seed), (B, T), 0, V)
    return X, jax.random.randint(jax.random.key(seed + 1), (B, T), 0, V)


def value_and_grad(model, variables, X, Y, weights_B, train=False, rngs=None):
    """The mean loss of ``model``'s ``loss`` method (its sum over its count) and its gradient."""
    def mean_loss(variables):
        loss_sum, count, _ = model.apply(variables, X, Y, weights_B, train, method="loss", rngs=rngs)
        return loss_sum / count
    return jax.value_and_grad(mean_loss)(variables)


def jit_value_and_grad(model, variables, X, Y, weights_B, train=False, rngs=None):
    """``value_and_grad``, compiled."""
    return jax.jit(lambda v: value_and_grad(model, v, X, Y, weights_B, train, rngs))(variables)
