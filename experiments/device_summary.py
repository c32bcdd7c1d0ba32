"""The device check's ``--out``: checked before it starts; what its parts wrote, read into ``summary.json``
(tests passed, the runs' perplexities, the step table); summary.json written whole; the summary said in a
few lines."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from experiments.parsing import check_link, check_names

# Runs in a fresh interpreter: what the machine has, without failing where a package is missing.
MACHINE_INFO = r"""
import importlib.metadata as md, json, platform
out = {"python": platform.python_version()}
for name, dist in [("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"), ("optax", "optax"),
                   ("orbax", "orbax-checkpoint"), ("numpy", "numpy"), ("torch", "torch")]:
    try:
        out[name] = md.version(dist)
    except md.PackageNotFoundError:
        out[name] = None
info = {"versions": out}
import jax
try:         # rnnjax's sentence where $JAX_PLATFORMS names a backend JAX cannot start here
    from rnnjax.backend import start
except ImportError:
    pass
else:
    try:
        start()
    except ValueError as e:
        raise SystemExit(f"error: {e}")
info.update(backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
            devices=[str(d) for d in jax.devices()],
            jax_matmul_precision=jax.config.jax_default_matmul_precision)   # None: the backend's
try:         # any exception: a broken torch (its CUDA libraries) is recorded, not fatal
    import torch
    info["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    info["torch_tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                          "cudnn": torch.backends.cudnn.allow_tf32}
except Exception as e:
    info["torch_device"] = None
    if out["torch"] is not None:
        info["torch_error"] = f"{type(e).__name__}: {e}"[:300]
print(json.dumps(info))
"""


def count_tests(xml_path: Path) -> dict:
    """passed, failed (errors included), skipped and the failed tests' ids, from pytest's JUnit XML."""
    root = ET.parse(xml_path).getroot()
    cases = [c for c in root.iter("testcase") if c.get("name")]    # an interrupted test's case has none
    failed = [f"{c.get('classname')}::{c.get('name')}" if c.get("classname") else c.get("name")  # collection
              for c in cases if c.find("failure") is not None or c.find("error") is not None]
    skipped = sum(c.find("skipped") is not None for c in cases)
    return {"passed": len(cases) - len(failed) - skipped, "failed": len(failed), "skipped": skipped,
            "failed_tests": failed}


# pytest's last line: "1 failed, 57 passed, 3 skipped, 50 deselected in 239.78s (0:03:59)"; its progress
# lines: ".F.s..  [ 12%]" (one character a test).
_TOTALS = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s")
_PROGRESS = re.compile(r"^([.FEsxX]+)\s*(\[\s*\d+%\])?$")


def count_log(log_path: Path) -> dict:
    """What ``count_tests`` gives, from pytest's ``-q`` output instead, where it wrote no JUnit XML or only
    part of it (killed, not stopped): its last totals line, else its progress characters; the failed tests
    from its ``FAILED``/``ERROR`` lines. ``counted_from`` names the log."""
    lines = log_path.read_text(errors="replace").splitlines()
    failed_tests = [line.split()[1] for line in lines if line.startswith(("FAILED ", "ERROR ")) and
                    len(line.split()) > 1]
    totals = [m.group(1) for m in map(_TOTALS.match, lines) if m]
    if totals:
        words = {word: int(n) for n, word in (item.split() for item in totals[-1].split(", "))}
        passed, skipped = words.get("passed", 0) + words.get("xpassed", 0), words.get("skipped", 0)
        failed = words.get("failed", 0) + words.get("error", 0) + words.get("errors", 0)
        skipped += words.get("xfailed", 0)
    else:
        chars = "".join(m.group(1) for m in map(_PROGRESS.match, lines) if m)
        passed, skipped = chars.count(".") + chars.count("X"), chars.count("s") + chars.count("x")
        failed = chars.count("F") + chars.count("E")
    return {"passed": passed, "failed": failed, "skipped": skipped, "failed_tests": failed_tests,
            "counted_from": log_path.name}


def final_val_ppl(workdir: Path) -> list[float]:
    """The last epoch's validation perplexity of each run in ``workdir/metrics.jsonl`` (one for one run)."""
    last: dict = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            last[record.get("run", 0)] = record
    return [math.inf if r["val_ppl"] is None else r["val_ppl"] for _, r in sorted(last.items())]


def sizes_summary(bench_json: Path) -> dict:
    """Per size label: the kernel rnnjax chooses, each contender's ms per step (or its error) and MB a step
    allocates (``None``: not measured), the ratios, and where measured ``memory_ratios`` and ``bf16_ratio``
    (rnnjax hoisted's float32 step over its bfloat16 one)."""
    bench = json.loads(bench_json.read_text())
    return {s["label"]: {"auto_kernel": s["auto_kernel"],
                         "ms_per_step": {n: r.get("ms_per_step", r.get("error"))
                                         for n, r in s["contenders"].items()},
                         "step_mb": {n: r.get("step_mb") for n, r in s["contenders"].items()},
                         "ratios": s["ratios"],
                         **{k: s[k] for k in ("memory_ratios", "bf16_ratio") if k in s}}
            for s in bench["sizes"]}


def read_back(out: Path, summary: dict) -> None:
    """Into ``summary``: the tests' counts (tests.xml) and the step table (bench.json), where their parts
    wrote them, also if cut short or stopped (pytest writes what it ran, the benchmark each size it ends)."""
    tests, bench = summary["parts"].get("tests"), summary["parts"].get("bench")
    if tests is not None:
        counts = None
        try:
            counts = count_tests(out / "tests.xml")
        except (OSError, ET.ParseError):     # none, or cut off mid-write: the part was killed
            if (out / tests.get("log", "tests.log")).is_file():
                counts = count_log(out / tests.get("log", "tests.log"))
        if counts is not None:
            tests.update(counts)
            tests["ok"] = tests.get("returncode") == 0 and tests["failed"] == 0
    if bench is not None and (out / "bench.json").is_file():
        try:
            summary["sizes"] = sizes_summary(out / "bench.json")
        except ValueError:      # not whole JSON (written in place, on a full disk): its log says why
            bench["bench_json"] = "not whole JSON"
        else:
            bench["sizes_done"] = len(summary["sizes"])


def check_out(out: Path) -> None:
    """``ValueError`` unless ``out`` (``--out``) is a new or empty folder this process can make or write, at
    a path orbax takes (the runs' workdirs are in it): ``rnnjax.workdir``'s checks, where JAX is."""
    check_names("--out", out)
    check_link("--out", out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a new folder.")
    try:        # as write_summary: without JAX, making it says what is wrong
        from rnnjax.spelling import flag_spelling
        from rnnjax.workdir import WorkdirError, check_writable
    except ImportError:
        pass
    else:
        try:
            with flag_spelling():       # its sentence of a --workdir, said below of --out
                check_writable(out)
        except WorkdirError as e:       # rnnjax's sentence of a --workdir, said of --out
            said = str(e)
            said = said.replace("a --workdir", "an --out").replace("--workdir", "--out")
            raise ValueError(f"--out {said.removeprefix('The workdir ')}" if said.startswith("The workdir ")
                             else f"--out: {said}") from None
    try:
        used = out.exists() and any(out.iterdir())
    except OSError as e:
        raise ValueError(f"--out {out} cannot be read ({e.strerror}); give a new folder.") from None
    if used:
        raise ValueError(f"--out {out} exists and is not an empty folder; give a new one (the check's "
                         "workdirs and compilation cache must start empty).")


class NotWritten(OSError):
    """summary.json could not be written (a full disk); its message is one sentence, the file as it was."""


def write_summary(out: Path, summary: dict) -> None:
    """``out/summary.json`` holds ``summary`` whole or is as it was (``rnnjax.workdir.write_atomically``,
    where JAX is; else in place); ``NotWritten`` if it cannot be written."""
    text = json.dumps(summary, indent=1)
    try:        # here, not at the top: a machine without JAX still gets the check's parts run and recorded
        from rnnjax.workdir import WorkdirError, write_atomically
    except ImportError:
        (out / "summary.json").write_text(text)
        return
    try:
        write_atomically(out / "summary.json", text)
    except WorkdirError as e:
        raise NotWritten(str(e)) from None


def describe_machine(summary: dict) -> str:
    """The info part's line: backend, device, torch's device (or that it is not installed), versions."""
    if "versions" not in summary:
        failed = summary["parts"]["info"]["error"].rstrip(".")
        return f"machine unknown: the info part failed ({failed}; see info.log)"
    versions = summary["versions"]
    torch = ("torch not installed" if versions.get("torch") is None
             else f"torch on {summary['torch_device']}" if summary.get("torch_device")
             else f"torch {versions['torch']} installed but not importable"
             + (f" ({summary['torch_error']})" if summary.get("torch_error") else ""))
    return (f"backend {summary['backend']}, {summary['device_kind']}; {torch}; "
            + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None))


def _state(part: dict) -> str:
    return ("ok" if part["ok"] else "skipped" if part.get("skipped") else "cut short" if part.get("cut")
            else "stopped" if part.get("stopped") else "FAILED")


def report(summary: dict) -> str:
    """The summary in a few lines (the end of a device run's output)."""
    lines = [f"device check ({summary.get('backend')}, {summary.get('device_kind')}), "
             f"{summary['seconds']:.0f} s in all; parts: "
             + ", ".join(f"{n} {_state(p)}" for n, p in summary["parts"].items())]
    t = summary["parts"].get("tests", {})
    if "passed" in t:
        lines.append(f"tests: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped"
                     + (f" (from {t['counted_from']}: no whole tests.xml)" if "counted_from" in t else "")
                     + (f": {', '.join(t['failed_tests'][:10])}" if t["failed"] else ""))
    for what in ("recipe", "seeds"):
        r = summary.get(what)
        if r is None:          # the budget ran out before this part
            lines.append(f"{what}: not run")
            continue
        parts = summary["parts"]
        times = ", ".join(f"{temp} {r[f'{temp}_s']:.1f} s" if f"{temp}_s" in r
                          else f"{temp} {_state(parts[f'{what}-{temp}']).lower()}"
                          if f"{what}-{temp}" in parts else f"{temp} not run" for temp in ("cold", "warm"))
        ppl = r.get("val_ppl", [])          # the recipe's one, or the seeds' list
        ppl = ", ".join(f"{v:.2f}" for v in (ppl if isinstance(ppl, list) else [ppl]))
        ppl = f", val ppl {ppl}" if ppl else ""
        lines.append(f"{what} ({r.get('epochs')} epochs): {times}{ppl}")
    if summary.get("sizes"):
        lines.append("ms per step, per size and kernel:")
    for label, size in summary.get("sizes", {}).items():
        ms = "  ".join(f"{n} {v:.2f} ms" if isinstance(v, float) else f"{n} failed"
                       for n, v in size["ms_per_step"].items())
        bf16 = f"; hoisted in bf16 at {size['bf16_ratio']:.2f}x float32's speed" if "bf16_ratio" in size \
            else ""
        lines.append(f"{label:<20} {ms}  (auto: {size['auto_kernel']}{bf16})")
    return "\n".join(lines)
