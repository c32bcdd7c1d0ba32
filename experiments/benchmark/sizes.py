"""The step table over sets of sizes (``--sizes``): every contender at each size, on the backend it runs on.

``gpu`` is the table of issue 26, the sizes people train at on an accelerator
(d2l's recipe of each cell, and larger models); ``small`` has each cell (the
LSTM in two layers) at sizes a CPU steps through in milliseconds, for quick runs
(``experiments.device_check --quick``, CI).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax

from experiments.benchmark.contenders import Rnnjax, Setting, StockFlax
from experiments.benchmark.measure import machine_info, measure_steps
from experiments.benchmark.report import RATIO_MEANING, ratio_lines, sizes_table
from experiments.benchmark.torch_contenders import TorchD2l, TorchLean, torch_available
from rnnjax import kernels
from rnnjax.data import TimeMachine

# (cell, hidden units, batch, steps, layers)
SIZES = {
    "gpu": [("rnn", 32, 1024, 32, 1), ("gru", 32, 1024, 32, 1), ("lstm", 32, 1024, 32, 1),
            ("gru", 32, 1024, 32, 2), ("rnn", 512, 1024, 32, 1), ("lstm", 512, 512, 64, 1),
            ("lstm", 1024, 256, 64, 2)],
    "small": [("rnn", 32, 64, 16, 1), ("gru", 32, 64, 16, 1), ("lstm", 48, 32, 16, 2)],
}
# Rounds, steps a round and warm-up steps (None: an epoch) per contender at each size of a set: rounds of
# about 0.1-0.5 s on an H200; the small set only has to show that every contender runs.
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


def contenders_at(s: Setting, devices: int | None, backend: str) -> list:
    out = [Rnnjax(devices, name=f"rnnjax {k}", kernel=k) for k in applicable_kernels(s, backend)]
    out.append(StockFlax())
    if torch_available():
        out += [TorchLean(), TorchD2l()]
    return out


def run_sizes(name: str, data_path: str | None, json_path: Path, devices: int | None = None,
              rounds: int | None = None, steps: int | None = None, log=print) -> dict:
    """Measures every size of set ``name``; rewrites ``json_path`` after each size, so that a run stopped
    part way keeps the sizes it finished."""
    backend = jax.default_backend()
    rounds, steps, warmup = rounds or ROUNDS[name][0], steps or ROUNDS[name][1], ROUNDS[name][2]
    out = {"sizes_set": name, "machine": machine_info(), "rounds": rounds, "steps": steps,
           "ratio_meaning": RATIO_MEANING, "sizes": []}
    if not torch_available():
        log("torch is not importable: skipping PyTorch's contenders (pip install torch)")
    log(f"training step, ms, {rounds} interleaved rounds of {steps} steps at each size "
        f"(cell hidden/batch/steps, layers) on {out['machine']['device_kind']} ({backend}):")
    for s in settings(name):
        B = s.batch_size
        # Whole batches only, so that no contender recompiles inside a timed round.
        data = TimeMachine(B, s.num_steps, num_train=min(10000 // B, 40) * B, path=data_path)
        auto = kernels.choose(s.config, backend)
        t0 = time.perf_counter()
        res = measure_steps(contenders_at(s, devices, backend), s, data, rounds, steps, warmup=warmup,
                            log=lambda *_: None, keep_going=True)
        size = {"label": s.label, "cell": s.cell, "num_hiddens": s.num_hiddens, "batch_size": B,
                "num_steps": s.num_steps, "num_layers": s.num_layers, "auto_kernel": auto, "contenders": res,
                "seconds": time.perf_counter() - t0}
        ours = res.get(f"rnnjax {auto}", {})
        size["ratios"] = {f"{n}": r["ms_per_step"] / ours["ms_per_step"] for n, r in res.items()
                          if "ms_per_step" in ours and "ms_per_step" in r and n != f"rnnjax {auto}"}
        out["sizes"].append(size)
        log("  " + "  ".join(f"{n} " + (f"{r['ms_per_step']:.2f}" if "error" not in r else "failed")
                             for n, r in res.items()) + f"  ({size['seconds']:.0f} s): {s.label}")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=1))
    log(sizes_table(out["sizes"]))
    for size in out["sizes"]:
        log(ratio_lines(size))
    log(f"({RATIO_MEANING})")
    return out
