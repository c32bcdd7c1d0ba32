"""rnnjax against PyTorch's nn.RNN (the way d2l's PyTorch tab runs it) and stock Flax.

Command (d2l's recipe: batch 1024, num_steps 32, hidden 32, lr 1, clip 1)::

    python -m experiments.benchmark --data timemachine.txt

On a GPU (and for quick runs, ``--sizes small``)::

    python -m experiments.benchmark --sizes gpu --data timemachine.txt

Runtime on a 2-core CPU: about 3 minutes; ``--ablations`` adds about 1,
``--sweep`` about 5. Writes ``bench.json`` (and with ``--sweep``
``sweep.png``) into ``--out`` (default ``runs/bench-<time>``), a new or empty
folder or an earlier benchmark's, whose results it replaces (``--json``: a
new file or an earlier benchmark's); bad arguments are refused in one line
before any measuring. ``bench.json`` is rewritten whole after each part
(and each point of the sweep; its ``complete`` is true once every part has
run, a contender that failed recorded as such):
Ctrl-C, SIGTERM or SIGHUP stops it with one line (exit 128 + signal) and
it keeps what was measured. Expected
result: rnnjax's step and whole recipe faster than both baselines, at every
point of the sweep too; the current figures and the command that made them
are in ``docs/performance.md``. Contenders run interleaved (A B C A B C ...)
in one process so that a noisy machine affects them alike (but PyTorch's CPU
threads far more on a busy one: it warns); the table gives
medians with min-max over the rounds and ratios against rnnjax.

- ``contenders.py``: ``rnnjax`` trains as ``fit`` does (``train_windows``, 10
  steps to a compiled call, data parallel over one CPU device per core,
  ``xla.compiler_options``; ``rnnjax 1 device`` on one; ``Config.kernel``
  forces one of ``rnnjax.kernels.KERNELS``). ``flax``: ``nn.RNN(nn.SimpleCell)``
  (``GRUCell``, ``OptimizedLSTMCell``) + ``Dense`` with the same optax step, jitted.
- ``torch_contenders.py``: on CUDA where torch sees a GPU, else on the CPU;
  skipped unless torch imports (``pip install torch==2.13.0`` for the CPU
  wheel). ``torch d2l``: d2l's PyTorch tab (``nn.RNN`` + ``nn.Linear``, a
  ``DataLoader``, d2l's ``clip_gradients`` and SGD, the perplexity read every
  step); ``torch lean``: the same model with the data on the device and no
  per-step sync.
- ``measure.py``: steady-state steps, the memory a step allocates beyond what
  it is given (``step_mb``, on all its devices: XLA's count of the compiled
  program; PyTorch's CUDA allocator's peak, not measured on a CPU), whole
  recipes (100 epochs, validation and compilation included), compiling in
  fresh processes with and without the persistent cache, generation against
  d2l's loop of one model call per character, and the machine (backend,
  device, versions).
- ``sizes.py``: ``--sizes gpu`` (research sizes, the 2-layer LSTM 1024
  first) or ``--sizes small``: the step of every contender at each size,
  rnnjax with each applicable kernel, at the large LSTMs its hoisted kernel in
  bfloat16 too (``rnnjax hoisted bf16``), cuDNN's LSTM measured on its own
  after the others.
- ``outputs.py``: ``--json`` and ``--out`` checked (never a file of anyone
  else's replaced), and the line a stop says.
- ``report.py``: ratios in words (below 1 reads as slower), the tables, the sweep's plot.
- ``arguments.py``: the flags, checked before JAX starts.
- ``command.py``: the command line, the sweep over hidden size, batch and steps,
  ``--runs N`` seeds in one program (``rnnjax.runs``) against one, and the
  JSON: the machine, every contender's figures and every ratio printed
  (``ratio_step_vs_torch_lean``, ``ratio_step_vs_torch_d2l``,
  ``ratio_step_vs_flax``, ``ratio_recipe_vs_...``, ``runs.ratio_vs_sequential``,
  per size ``ratios``), each the other's time over rnnjax's; ``ratio_memory_vs_...``
  and per size ``memory_ratios``, the other's MB over rnnjax's; per size
  ``bf16_ratio``, rnnjax hoisted's float32 step over its bfloat16 one.

The process runs with ``rnnjax.backend.keep_freed_memory()``, as
``experiments.timemachine`` does; all contenders share it.
"""

import sys

from experiments import stopping

# python -m experiments.benchmark (or .corpus) imports this package first, which loads JAX: a signal
# meanwhile says one line and exits 128 + signal, no traceback (not for an import).
_RUN = [b for a, b in zip(sys.orig_argv, sys.orig_argv[1:]) if a == "-m"] + [
    a[2:] for a in sys.orig_argv if a.startswith("-m")]             # -m NAME or -mNAME
if any(name == __name__ or name.startswith(__name__ + ".") for name in _RUN):
    stopping.while_loading()
    stopping.load_jax()

from experiments.benchmark.contenders import model_flops_per_token  # noqa: E402 (after the handlers)
from experiments.benchmark.measure import d2l_predict  # noqa: E402
from experiments.benchmark.report import speed_words  # noqa: E402
from experiments.benchmark.torch_contenders import torch_available  # noqa: E402

__all__ = ["d2l_predict", "main", "model_flops_per_token", "speed_words", "torch_available"]


def __getattr__(name: str):
    """``main`` (``command.main``), imported as it is first asked for: ``python -m
    experiments.benchmark.command`` then runs that module as ``__main__``, not imported twice."""
    if name == "main":
        from experiments.benchmark.command import main
        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
