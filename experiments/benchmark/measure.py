"""Measuring: interleaved rounds of training steps, a step's memory, whole recipes, generation, compiling."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import statistics
import sys
import time

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

import rnnjax
from experiments import stopping
from experiments.benchmark.contenders import Setting, model_flops_per_token
from experiments.benchmark.torch_contenders import (one_line, torch_device_name, torch_precision,
                                                    torch_problem, torch_threads)
from rnnjax.config import Config
from rnnjax.data import TimeMachine
from rnnjax.model import RNNLM
from rnnjax.state import create_train_state, make_model


def measure_steps(contenders, s: Setting, data, rounds: int, steps: int, warmup: int | None = None,
                  log=print, keep_going: bool = False) -> dict:
    """Interleaved rounds of ``steps`` steps; ms per step for each round, and after the warm-up what a
    step allocates (``step_memory``).

    ``warmup`` steps first (default a whole epoch: the ragged batch, caches, allocators). With
    ``keep_going`` a contender that fails to build or step, in the warm-up or a round, is left out of the
    rounds, its error recorded.
    """
    result, running = {}, []

    def failed(c, e: Exception) -> None:      # a kernel this backend lacks, memory: the others still run
        if not keep_going:
            raise e
        result[c.name] = {"error": one_line(e)}
        log(f"  {c.name} failed: {result[c.name]['error']}")

    for c in contenders:
        try:
            result[c.name] = {"compile_s": c.prepare(s, data), "rounds_ms": []}
            c.steps(data.num_batches() + 1 if warmup is None else warmup)
            running.append(c)
        except Exception as e:
            failed(c, e)
            continue
        result[c.name].update(step_memory(c))
    for r in range(rounds):
        for c in list(running):
            t0 = time.perf_counter()
            try:
                ran = c.steps(steps) or steps
            except Exception as e:
                running.remove(c)
                failed(c, e)
                continue
            result[c.name]["rounds_ms"].append((time.perf_counter() - t0) / ran * 1e3)
        log(f"  round {r + 1}/{rounds}: " + "  ".join(
            f"{c.name} {result[c.name]['rounds_ms'][-1]:.2f} ms" for c in running))
    tokens = s.batch_size * s.num_steps
    for name, r in result.items():
        if "error" in r:
            continue
        ms = statistics.median(r["rounds_ms"])
        r.update(ms_per_step=ms, ms_per_step_min=min(r["rounds_ms"]), ms_per_step_max=max(r["rounds_ms"]),
                 tokens_per_s=tokens / ms * 1e3,
                 gflops=model_flops_per_token(s.num_hiddens, len(data.vocab), s.cell, s.num_layers)
                 * tokens / ms / 1e6)
    return result


def step_memory(c) -> dict:
    """``step_mb``: ``c.step_memory_mb()``, ``None`` where not measured or where measuring failed (the
    failure in ``step_mb_error``: it costs no timing)."""
    try:
        return {"step_mb": c.step_memory_mb()}
    except Exception as e:
        return {"step_mb": None, "step_mb_error": one_line(e)}


def measure_recipes(contenders, rounds: int, log=print) -> dict:
    out = {c.name: {"recipe_rounds_s": [], "val_ppl": None} for c in contenders}
    for r in range(rounds):
        for c in contenders:
            t0 = time.perf_counter()
            ppl = c.recipe()
            out[c.name]["recipe_rounds_s"].append(time.perf_counter() - t0)
            out[c.name]["val_ppl"] = ppl
            log(f"  recipe {r + 1}/{rounds}: {c.name} {out[c.name]['recipe_rounds_s'][-1]:.1f} s, "
                f"val ppl {ppl:.2f}")
    for r in out.values():
        r["recipe_s"] = statistics.median(r["recipe_rounds_s"])
    return out


def d2l_predict(step, params, vocab, num_hiddens: int, prefix: str, num_preds: int) -> str:
    """d2l's ``predict``, literally: one ``step(variables, token, state)`` call per character
    and ``int()`` of each prediction."""
    state, outputs = jnp.zeros((1, num_hiddens)), [vocab[prefix[0]]]
    for i in range(len(prefix) + num_preds - 1):
        logits, state = step({"params": params}, jnp.array([outputs[-1]]), state)
        outputs.append(vocab[prefix[i + 1]] if i < len(prefix) - 1 else int(logits.argmax(-1)[0]))
    return "".join(vocab.idx_to_token[i] for i in outputs)


def measure_generation(data: TimeMachine, num_chars: int = 500, batch: int = 64, reps: int = 20) -> dict:
    """rnnjax's compiled predict against d2l's loop of one model call per character."""
    config = Config()
    model, params = make_model(config, len(data.vocab)), create_train_state(config, len(data.vocab)).params
    vocab = data.vocab
    step = jax.jit(functools.partial(model.apply, method=RNNLM.step))
    d2l_loop = functools.partial(d2l_predict, step, params, vocab, config.num_hiddens)

    def timed(f, n):
        f()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    compiled = timed(lambda: rnnjax.predict(model, params, vocab, "it has", num_chars), reps)
    loop = timed(lambda: d2l_loop("it has", num_chars), 3)
    assert rnnjax.predict(model, params, vocab, "it has", num_chars) == d2l_loop("it has", num_chars)
    prefixes = [p for p, _ in zip(["it has", "the time", "traveller", "we", "machine"] * batch, range(batch))]
    batched = timed(lambda: rnnjax.predict_batch(model, params, vocab, prefixes, num_chars), 5)
    return {"num_chars": num_chars, "compiled_ms": compiled * 1e3, "d2l_loop_ms": loop * 1e3,
            "ratio": loop / compiled, "batch": batch, "batched_ms": batched * 1e3,
            "batched_chars_per_s": batch * num_chars / batched}


_COMPILE = """
import sys, time
from experiments import stopping
stopping.die_with_parent()
import jax
from rnnjax import backend, xla
from rnnjax.config import Config
from rnnjax.data import TimeMachine
from rnnjax.parallel import DataParallel
from rnnjax.state import create_train_state
from rnnjax.train import STEPS_PER_CALL, train_windows
if sys.argv[1] != "-":
    backend.enable_compilation_cache(sys.argv[1])
data = TimeMachine(1024, 32, path=sys.argv[2] if len(sys.argv) > 2 else None)
dp, state = DataParallel.create(1), create_train_state(Config(), len(data.vocab))
tokens, windows = dp.replicate(data.tokens), dp.shard_stack(list(data.train_windows(0))[:STEPS_PER_CALL])
t0 = time.perf_counter()
step = dp.compile(train_windows, compiler_options=xla.compiler_options(1024, 32, 1))
step.executable(state, tokens, windows)
print(time.perf_counter() - t0)
jax.block_until_ready(step(state, tokens, windows))
"""


def measure_compile_cache(data_path: str | None) -> dict:
    """Compiling the training program (tracing included) in fresh processes: no cache, then a cold
    and a warm persistent cache; ``{"error": ...}`` if one fails (killed for memory, say): the later
    parts still run."""
    def compile_s(cache: str) -> float:
        args = [sys.executable, "-c", _COMPILE, cache] + ([data_path] if data_path else [])
        child = stopping.run_child(args)
        if child.returncode:
            said = (child.stderr.strip().splitlines() or [""])[-1][:200]
            raise ChildFailed(f"a fresh process failed ({stopping.ended(child.returncode)})"
                              f"{': ' + said if said else ''}")
        return float(child.stdout.split()[-1])

    with stopping.scratch() as cache:
        try:
            return {"no_cache_s": compile_s("-"), "cold_cache_s": compile_s(cache),
                    "warm_cache_s": compile_s(cache)}
        except ChildFailed as e:
            return {"error": str(e)}


class ChildFailed(RuntimeError):
    """A process a measure started failed: what it said, in a clause."""


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                "flax": flax.__version__, "optax": optax.__version__, "orbax": _version("orbax-checkpoint"),
                "numpy": np.__version__, "rnnjax": rnnjax.__version__}
    # None: the backend's default (TF32 matmuls on recent NVIDIA GPUs).
    precision = {"jax_default_matmul_precision": jax.config.jax_default_matmul_precision, **torch_precision()}
    problem = torch_problem()
    versions["torch"] = _version("torch")
    # The load before it starts: other work on the cores slows PyTorch's CPU threads far more than JAX's.
    return {"precision": precision, "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "load_average": round(os.getloadavg()[0], 2), "torch_threads": torch_threads(),
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "torch_device": torch_device_name(), **({"torch_error": problem} if problem else {}),
            "devices": [str(d) for d in jax.local_devices()], "date": time.strftime("%Y-%m-%d"),
            "versions": versions}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
