"""The benchmark's printed report: ratios in words, the tables, the sweep's plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

RATIO_MEANING = ("a ratio is the other's time over rnnjax's (ms per step, or seconds): above 1 rnnjax is "
                 "that many times faster, below 1 slower; a memory ratio is the other's MB a step allocates "
                 "over rnnjax's: above 1 rnnjax's step takes that many times less")


def speed_words(ratio: float) -> str:
    """``ratio`` (their time over ours) as words that read right either side of 1: ``1.47x faster``,
    ``1.47x slower`` (for 0.68), ``as fast``."""
    if not np.isfinite(ratio) or ratio <= 0:
        return f"{ratio}x (not a speed)"
    if round(ratio, 2) == 1.0:
        return "as fast"
    return f"{ratio:.2f}x faster" if ratio > 1 else f"{1 / ratio:.2f}x slower"


def compared(ratio: float, other: str) -> str:
    """``1.47x faster than torch lean``, ``as fast as torch lean``."""
    words = speed_words(ratio)
    return f"{words} as {other}" if words == "as fast" else f"{words} than {other}"


def memory_words(ratio: float, other: str) -> str:
    """``1.80x less than flax`` (their MB over ours), ``1.25x more than torch lean`` (for 0.8)."""
    if round(ratio, 2) == 1.0:
        return f"as much as {other}"
    return f"{ratio:.2f}x less than {other}" if ratio > 1 else f"{1 / ratio:.2f}x more than {other}"


def _mb(r: dict) -> str:
    return f"{r['step_mb']:.1f}" if r.get("step_mb") is not None else "-"


def torch_said(info: dict) -> str:
    """Where PyTorch's contenders run, from ``machine_info()``: ``torch on cpu``, or why they do not."""
    if info["torch_device"]:
        threads = f" ({info['torch_threads']} threads)" if info["torch_device"] == "cpu" else ""
        return f"torch on {info['torch_device']}{threads}"
    if info["versions"].get("torch") is None:           # no distribution: its import error says no more
        return "torch not installed"
    return f"torch not importable ({info.get('torch_error')})"


def busy(info: dict) -> str:
    """A warning where the machine was busy as the benchmark began (``machine_info``'s load average over
    half its cores), '' where not."""
    load, cores = info.get("load_average"), info.get("cores") or 1
    if load is None or load <= cores / 2:
        return ""
    slows = "PyTorch's CPU threads far more than JAX's" if info.get("torch_device") == "cpu" else \
        "each contender's dispatch and compiling unevenly"
    return (f"warning: the machine is busy (load average {load} on {cores} cores): other work on the cores "
            f"slows {slows}, so the times and ratios are not an idle machine's; measure again when it is "
            "idle")


def table(results: dict, ref: str = "rnnjax") -> str:
    rows = [f"{'contender':<28}{'ms/step (min-max)':>24}{'compile s':>11}{'recipe s':>10}"
            f"{'tokens/s':>11}{'GFLOP/s':>9}{'step MB':>9}{f'{ref} is':>16}"]
    for name, r in results.items():
        if "error" in r:
            rows.append(f"{name:<28}  failed: {r['error']}")
            continue
        recipe = f"{r['recipe_s']:.1f}" if "recipe_s" in r else "-"
        spread = f"({r['ms_per_step_min']:.2f}-{r['ms_per_step_max']:.2f})"
        vs = "" if name == ref else speed_words(r["ms_per_step"] / results[ref]["ms_per_step"])
        rows.append(f"{name:<28}{r['ms_per_step']:>9.2f} {spread:>14}{r['compile_s']:>11.2f}{recipe:>10}"
                    f"{r['tokens_per_s']:>11.3g}{r['gflops']:>9.1f}{_mb(r):>9}{vs:>16}")
    return "\n".join(rows)


def sizes_table(sizes: list[dict]) -> str:
    """ms per step, one row a size and one column a contender, then how rnnjax's chosen kernel compares;
    below, the MB a step allocates, where measured."""
    names = list(dict.fromkeys(n for size in sizes for n in size["contenders"]))
    width = max(12, *(len(n) + 2 for n in names))
    head = "".join(f"{n:>{width}}" for n in names)
    rows = [f"{'size':<24}{head}   rnnjax (auto kernel)"]
    memory = [f"{'MB a step allocates':<24}{head}"]
    for size in sizes:
        cells, mbs = [], []
        for n in names:
            r = size["contenders"].get(n, {})
            cells.append("failed" if "error" in r else f"{r['ms_per_step']:.2f}" if r else "-")
            mbs.append(_mb(r))
        rows.append(f"{size['label']:<24}" + "".join(f"{c:>{width}}" for c in cells)
                    + f"   {size['auto_kernel']}")
        memory.append(f"{size['label']:<24}" + "".join(f"{c:>{width}}" for c in mbs))
    measured = any(r.get("step_mb") is not None for size in sizes for r in size["contenders"].values())
    return "\n".join(rows + (memory if measured else []))


def ratio_lines(size: dict) -> str:
    """``lstm 512/512/64: rnnjax (fused) is 1.27x slower than torch lean, ...``: every ratio of the size, and
    bfloat16's against float32's where both were measured."""
    parts = [compared(r, name) for name, r in size["ratios"].items()]
    line = f"{size['label']}: rnnjax ({size['auto_kernel']}) is " + (", ".join(parts) or "alone")
    if "bf16_ratio" in size:
        line += f"; rnnjax hoisted in bfloat16 is {compared(size['bf16_ratio'], 'in float32')}"
    if size.get("memory_ratios"):
        line += "; its step allocates " + ", ".join(memory_words(r, f"{name}'s")
                                                    for name, r in size["memory_ratios"].items())
    return line


def plot_sweep(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure     # not pyplot: no backend to switch
    names = list(dict.fromkeys(r["contender"] for r in rows))
    configs = list(dict.fromkeys((r["num_hiddens"], r["batch_size"], r["num_steps"]) for r in rows))
    fig = Figure(figsize=(10, 3.8), dpi=110)
    ax = fig.subplots()
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        by = {(r["num_hiddens"], r["batch_size"], r["num_steps"]): r["tokens_per_s"] for r in rows
              if r["contender"] == name}
        ax.bar(np.arange(len(configs)) + i * width, [by.get(c, 0) for c in configs], width, label=name)
    ax.set_xticks(np.arange(len(configs)) + width * (len(names) - 1) / 2,
                  [f"H{h}\nB{b}\nT{t}" for h, b, t in configs], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("training tokens / s")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")        # path may be a temporary name
