"""rnnjax against PyTorch's nn.RNN (the way d2l's PyTorch tab runs it) and stock Flax.

Command (d2l's recipe: batch 1024, num_steps 32, hidden 32, lr 1, clip 1)::

    python -m experiments.benchmark --data ../shared/data/timemachine.txt

Runtime on a 2-core CPU: about 3 minutes; ``--ablations`` adds about 1,
``--sweep`` about 5. Writes ``bench.json`` (and with ``--sweep``
``sweep.png``) into ``--out`` (default ``runs/bench-<time>``). Expected
result: rnnjax's step and whole recipe faster than both baselines, at every
point of the sweep too; the current figures and the command that made them
are in ``docs/performance.md``. Contenders run interleaved (A B C A B C ...)
in one process so that a noisy machine affects them alike; the table gives
medians with min-max over the rounds and ratios against rnnjax.

- ``contenders.py``: ``rnnjax`` trains as ``fit`` does (``train_windows``, 10
  steps to a compiled call, data parallel over one CPU device per core,
  ``backend.compiler_options``; ``rnnjax 1 device`` on one). ``torch``: d2l's
  PyTorch tab (``nn.RNN`` + ``nn.Linear``, a ``DataLoader``, d2l's
  ``clip_gradients`` and SGD; skipped unless torch imports: ``pip install
  torch==2.13.0`` for the CPU wheel). ``flax``: ``nn.RNN(nn.SimpleCell)`` +
  ``Dense`` with the same optax step, jitted.
- ``measure.py``: steady-state steps, whole recipes (100 epochs, validation
  and compilation included), compiling in fresh processes with and without
  the persistent cache, and generation against d2l's loop of one model call
  per character.
- ``main.py``: the command line, the table, the sweep over hidden size,
  batch and steps, ``--runs N`` seeds in one program (``rnnjax.runs``) against
  one, and the JSON (``ratio_step_vs_torch``, ``ratio_step_vs_flax``,
  ``ratio_recipe_vs_torch``, ``runs.ratio_vs_sequential``, ...).

The process runs with ``rnnjax.backend.keep_freed_memory()``, as
``experiments.timemachine`` does; all contenders share it.
"""

from experiments.benchmark.contenders import model_flops_per_token, torch_available
from experiments.benchmark.main import main
from experiments.benchmark.measure import d2l_predict

__all__ = ["d2l_predict", "main", "model_flops_per_token", "torch_available"]
