"""The step table over sets of sizes (``--sizes``): every contender at each size, on the backend it runs on.

``gpu`` holds the sizes people train at on an accelerator
(d2l's recipe of each cell, and larger models); ``small`` has every contender
(the vanilla RNN's, the 2-layer LSTM's with bfloat16 too; a GRU's are the RNN's)
at sizes a CPU steps through in milliseconds, for quick runs
(``experiments.device_check --quick``, CI).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax

from experiments.benchmark.contenders import Rnnjax, Setting, StockFlax
from experiments.benchmark.measure import machine_info, measure_steps
from experiments.benchmark.report import RATIO_MEANING, busy, ratio_lines, sizes_table
from experiments.benchmark.torch_contenders import TorchD2l, TorchLean, torch_available, torch_problem
from rnnjax import kernels
from rnnjax.data import TimeMachine
from rnnjax.workdir import write_atomically

# (cell, hidden units, batch, steps, layers). On a GPU the largest first: a run the time cuts keeps the sizes
# it finished, and the 2-layer LSTM 1024 is the one the GPU targets are set at (docs/performance.md). The
# small set (figures not read) the quickest first: the suite stops a run once its first size is written.
SIZES = {
    "gpu": [("lstm", 1024, 256, 64, 2), ("lstm", 512, 512, 64, 1), ("rnn", 32, 1024, 32, 1),
            ("gru", 32, 1024, 32, 1), ("lstm", 32, 1024, 32, 1), ("gru", 32, 1024, 32, 2),
            ("rnn", 512, 1024, 32, 1)],
    "small": [("rnn", 32, 64, 16, 1), ("lstm", 48, 32, 16, 2)],
}
# The sizes (labels) of each set where rnnjax's hoisted kernel also steps in bfloat16 (``BF16``), to be
# compared with its float32 step: the large LSTMs, where the matmuls are most of the time.
BFLOAT16_AT = {"gpu": {"lstm 1024/256/64 x2", "lstm 512/512/64"}, "small": {"lstm 48/32/16 x2"}}
BF16, CUDNN = "rnnjax hoisted bf16", "rnnjax cudnn"
# Rounds, steps a round and warm-up steps (None: an epoch) per contender at each size of a set: rounds
# long enough to time on a GPU; the small set only has to show that every contender runs.
ROUNDS = {"gpu": (5, 40, None), "small": (2, 10, 2)}


def settings(name: str) -> list[Setting]:
    return [Setting(cell=c, num_hiddens=H, batch_size=B, num_steps=T, num_layers=L)
            for c, H, B, T, L in SIZES[name]]


def applicable_kernels(s: Setting, backend: str) -> list[str]:
    """``rnnjax.kernels.KERNELS`` (read now) that can train ``s`` on ``backend``, as ``kernels.check`` says:
    cuDNN's is an LSTM on a GPU only."""
    out = []
    for k in kernels.KERNELS:
        try:
            kernels.check(s.config.replace(kernel=k), backend)
        except ValueError:
            continue
        out.append(k)
    return out


def contenders_at(s: Setting, devices: int | None, backend: str, bfloat16: bool = False) -> list:
    """rnnjax with each applicable kernel (and with ``bfloat16`` its hoisted one computing in bfloat16),
    stock Flax, PyTorch's where torch imports, and cuDNN's LSTM last: ``run_sizes`` measures it after the
    others, so that a failure of that binding (never yet run on a GPU) cannot cost their figures."""
    kernels_here = applicable_kernels(s, backend)
    out = [Rnnjax(devices, name=f"rnnjax {k}", kernel=k) for k in kernels_here if k != "cudnn"]
    if bfloat16 and "hoisted" in kernels_here:
        out.append(Rnnjax(devices, name=BF16, kernel="hoisted", compute_dtype="bfloat16"))
    out.append(StockFlax())
    if torch_available():
        out += [TorchLean(), TorchD2l()]
    if "cudnn" in kernels_here:
        out.append(Rnnjax(devices, name=CUDNN, kernel="cudnn"))
    return out


def ratios(size: dict) -> dict:
    """``ratios``: each contender's ms per step over that of rnnjax's chosen kernel (``RATIO_MEANING``);
    ``memory_ratios``: their MB a step allocates over its, where both were measured; where both ran,
    ``bf16_ratio``: rnnjax hoisted's float32 step over its bfloat16 one (above 1, bfloat16 is that many times
    faster)."""
    res, auto = size["contenders"], f"rnnjax {size['auto_kernel']}"
    ms = {n: r["ms_per_step"] for n, r in res.items() if "ms_per_step" in r}
    out = {"ratios": {n: v / ms[auto] for n, v in ms.items() if n != auto} if auto in ms else {}}
    if BF16 in ms and "rnnjax hoisted" in ms:
        out["bf16_ratio"] = ms["rnnjax hoisted"] / ms[BF16]
    mb = {n: r["step_mb"] for n, r in res.items() if r.get("step_mb") and "ms_per_step" in r}
    if auto in mb:
        out["memory_ratios"] = {n: v / mb[auto] for n, v in mb.items() if n != auto}
    return out


def run_sizes(name: str, data_path: str | None, json_path: Path, devices: int | None = None,
              rounds: int | None = None, steps: int | None = None, log=print, saved=lambda: None) -> dict:
    """Measures every size of set ``name``; rewrites ``json_path`` after each size, so that a run stopped
    part way keeps the sizes it finished, calling ``saved()`` after each write."""
    backend = jax.default_backend()
    rounds, steps, warmup = rounds or ROUNDS[name][0], steps or ROUNDS[name][1], ROUNDS[name][2]
    out = {"sizes_set": name, "machine": machine_info(), "rounds": rounds, "steps": steps,
           "ratio_meaning": RATIO_MEANING, "sizes": [], "complete": False}    # True once every size is in
    if torch_problem():
        log(f"torch is not importable ({torch_problem()}): skipping PyTorch's contenders")
    n = devices or jax.local_device_count()
    log(f"training step, ms, {rounds} interleaved rounds of {steps} steps at each size "
        f"(cell hidden/batch/steps, layers) on {out['machine']['device_kind']} ({backend}; rnnjax on {n} "
        f"device{'s' * (n > 1)}), written to {json_path} after each size:")
    if name == "gpu" and backend == "cpu":      # its first size alone is hours of a CPU's, with no line
        log("warning: --sizes gpu holds sizes for an accelerator: on a CPU each takes hours (--sizes small "
            "is the quick set)")
    if busy(out["machine"]):
        log(busy(out["machine"]))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    for s in settings(name):
        B = s.batch_size
        # Whole batches only, so that no contender recompiles inside a timed round.
        data = TimeMachine(B, s.num_steps, num_train=min(10000 // B, 40) * B, path=data_path)
        t0 = time.perf_counter()
        size = {"label": s.label, "cell": s.cell, "num_hiddens": s.num_hiddens, "batch_size": B,
                "num_steps": s.num_steps, "num_layers": s.num_layers,
                "auto_kernel": kernels.choose(s.config, backend), "contenders": {}}
        out["sizes"].append(size)
        contenders = contenders_at(s, devices, backend, bfloat16=s.label in BFLOAT16_AT.get(name, ()))
        # cuDNN's on its own after the others, their figures written first: if it breaks the process or
        # the GPU's context, they are kept.
        last = [c for c in contenders if c.name == CUDNN]
        for group in ([c for c in contenders if c not in last], last):
            if not group:
                continue
            size["contenders"].update(measure_steps(group, s, data, rounds, steps, warmup=warmup,
                                                    log=lambda *_: None, keep_going=True))
            size.update(seconds=time.perf_counter() - t0, **ratios(size))
            write_atomically(json_path, json.dumps(out, indent=1))     # whole, or as it was
            saved()
        log("  " + "  ".join(f"{n} " + (f"{r['ms_per_step']:.2f}" if "error" not in r else "failed")
                             for n, r in size["contenders"].items())
            + f"  ({size['seconds']:.0f} s): {s.label}")
    out["complete"] = True
    write_atomically(json_path, json.dumps(out, indent=1))
    log(sizes_table(out["sizes"]))
    for size in out["sizes"]:
        log(ratio_lines(size))
    log(f"({RATIO_MEANING})")
    return out
