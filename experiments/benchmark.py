"""rnnjax against PyTorch's nn.RNN (the way d2l's PyTorch tab runs it) and stock Flax.

Command (d2l's recipe: batch 1024, num_steps 32, hidden 32, lr 1, clip 1)::

    python -m experiments.benchmark --data ../shared/data/timemachine.txt --json bench.json

Expected runtime on a 2-core CPU: about 2 minutes (``--sweep`` adds about
4, ``--ablations`` about 0.5). Expected result there (2026-11-29, five runs
on a noisy machine): rnnjax's step 3.8-4.2x faster than PyTorch's and 3.1-3.8x
than stock Flax's (3.9x once), the whole recipe 2.8-3.6x faster than
PyTorch's (three runs), compiling rnnjax's training program 0.65-0.75 s,
0.14-0.22 s with a warm compilation cache. Contenders run interleaved (A B C A B C ...) in one process
so that a noisy machine affects them alike; the table gives medians with
min-max over the rounds and ratios against each baseline.

- ``rnnjax``: ``rnnjax.train.train_windows`` (``STEPS_PER_CALL`` = 10 steps of
  ``train_step`` to a compiled call, the batches cut on the device from
  ``rnnjax.TimeMachine``'s token stream), data parallel over all local
  devices (``--devices``; on a CPU one device per core, as
  ``experiments.timemachine`` runs it) and compiled with
  ``rnnjax.train.compiler_options``, all as ``fit`` does, and ``fit`` for the
  whole recipe. ``rnnjax 1 device`` is the same on a single device. Its
  "compile s" is the compile of that program (tracing included); the other
  contenders' is their first step.
- ``torch``: ``nn.RNN`` + ``nn.Linear`` on one-hot inputs, a ``DataLoader`` over
  a ``TensorDataset``, d2l's ``clip_gradients`` and SGD, the loss read back
  every step as d2l's plot does. Skipped when torch is not importable
  (``pip install torch==2.13.0`` on a CPU-only machine).
- ``flax``: ``flax.linen.RNN(flax.linen.SimpleCell)`` + ``Dense`` on one-hot
  inputs, the same optax step, jitted; the ragged last batch recompiles.

The recipe time is 100 epochs with a validation pass each, compilation
included (``jax.clear_caches()`` first; no persistent cache). Generation
compares ``rnnjax.predict`` (one compiled loop) with d2l's Python loop of one
model call per character. The process runs with
``rnnjax.runtime.keep_freed_memory()``, as ``experiments.timemachine`` does;
all contenders share it (it makes PyTorch 4-8% faster too).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import rnnjax
from rnnjax import runtime
from rnnjax.data import TimeMachine
from rnnjax.model import RNNLM
from rnnjax.parallel import DataParallel, wait_for_backlog
from rnnjax.train import (STEPS_PER_CALL, Config, compiler_options, create_train_state, fit, make_model,
                          make_optimizer, train_windows)


def model_flops_per_token(H: int, V: int) -> int:
    """Forward + backward matmul FLOPs per token: recurrence 2H^2 and output 2HV, times 3."""
    return 6 * H * (H + V)


@dataclasses.dataclass
class Setting:
    batch_size: int = 1024
    num_steps: int = 32
    num_hiddens: int = 32
    epochs: int = 100

    @property
    def config(self) -> Config:
        return Config(batch_size=self.batch_size, num_steps=self.num_steps, num_hiddens=self.num_hiddens,
                      epochs=self.epochs)


class Contender:
    """Each contender trains d2l's model its own way: ``prepare`` builds it and its
    data pipeline, ``steps(n)`` runs n training steps and waits, ``recipe()`` runs
    the whole recipe from scratch and returns its final validation perplexity."""
    name: str

    def prepare(self, s: Setting, data: TimeMachine) -> float:
        """Builds everything and compiles (rnnjax) or runs the first step; returns its seconds."""
        raise NotImplementedError

    def steps(self, n: int) -> int | None:
        """Runs about ``n`` training steps and waits; returns how many if not exactly ``n``."""
        raise NotImplementedError

    def recipe(self) -> float:
        raise NotImplementedError


class Rnnjax(Contender):
    name = "rnnjax"

    def __init__(self, devices: int | None = None, name: str | None = None, **model_overrides):
        self.devices, self.model_overrides = devices, model_overrides
        if model_overrides:
            self.name = "rnnjax " + " ".join(f"{k}={v}" for k, v in model_overrides.items())
        self.name = name or self.name

    def prepare(self, s, data):
        self.s, self.data = s, data
        dp = self.dp = DataParallel.create(self.devices)
        dp.check_batch_size(s.batch_size)
        state = create_train_state(s.config, len(data.vocab))
        if self.model_overrides:
            model = rnnjax.model.build(len(data.vocab), s.num_hiddens, **self.model_overrides)
            state = state.replace(apply_fn=model.apply)
        self.state, self.tokens = dp.replicate(state), dp.replicate(data.tokens)
        self.step = dp.compile(lambda state, tokens, windows, axis_name=None:
                               train_windows(state, tokens, windows, axis_name),
                               compiler_options=compiler_options(s.config, dp.num_shards))
        self.windows = _cycle(data.train_windows)
        first = dp.shard_stack([next(self.windows) for _ in range(STEPS_PER_CALL)])
        t0 = time.perf_counter()
        if hasattr(self.step, "executable"):      # compiled ahead of time (CPU): time the compile alone
            self.step.executable(self.state, self.tokens, first)
        else:
            jax.block_until_ready(self.step(self.state, self.tokens, first))
        return time.perf_counter() - t0

    def steps(self, n):
        """As ``fit`` runs them: calls of ``STEPS_PER_CALL`` steps (n rounded up to whole calls)."""
        calls = -(-n // STEPS_PER_CALL)
        state, metrics = self.state, []
        for _ in range(calls):
            windows = self.dp.shard_stack([next(self.windows) for _ in range(STEPS_PER_CALL)])
            state, m = self.step(state, self.tokens, windows)
            metrics.append(m)
            wait_for_backlog(metrics)     # as fit does: deep queues can deadlock a CPU all-reduce
        jax.block_until_ready(metrics)
        return calls * STEPS_PER_CALL

    def recipe(self):
        jax.clear_caches()
        with tempfile.TemporaryDirectory() as workdir:
            result = fit(self.s.config, self.data, workdir, devices=self.devices,
                         checkpoint_every=self.s.epochs)
        return result.history[-1]["val_ppl"]


class StockFlax(Contender):
    """``nn.RNN(nn.SimpleCell)``: what a Flax user writes first."""
    name = "flax"

    def prepare(self, s, data):
        self.s, self.data = s, data
        V, H = len(data.vocab), s.num_hiddens

        class Model(nn.Module):
            @nn.compact
            def __call__(self, X_BxT):
                h = nn.RNN(nn.SimpleCell(H))(jax.nn.one_hot(X_BxT, V))
                return nn.Dense(V)(h)

        model, tx = Model(), make_optimizer(s.config)

        def loss(params, X, Y):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, X), Y).mean()

        @jax.jit
        def step(params, opt_state, X, Y):
            value, grads = jax.value_and_grad(loss)(params, X, Y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        self.model, self.loss, self.step, self.tx = model, jax.jit(loss), step, tx
        self.batches = _cycle(lambda epoch: _plain_batches(data, epoch))
        self.params = model.init(jax.random.key(0), jnp.zeros((1, s.num_steps), jnp.int32))
        self.opt_state = tx.init(self.params)
        t0 = time.perf_counter()
        jax.block_until_ready(self.step(self.params, self.opt_state, *next(self.batches)))
        return time.perf_counter() - t0

    def steps(self, n):
        params, opt_state = self.params, self.opt_state
        for _ in range(n):
            params, opt_state, value = self.step(params, opt_state, *next(self.batches))
        jax.block_until_ready(value)

    def recipe(self):
        jax.clear_caches()
        params = self.model.init(jax.random.key(0), jnp.zeros((1, self.s.num_steps), jnp.int32))
        opt_state = self.tx.init(params)
        for epoch in range(self.s.epochs):
            for X, Y in _plain_batches(self.data, epoch):
                params, opt_state, _ = self.step(params, opt_state, X, Y)
            val = [(float(self.loss(params, X, Y)), len(X)) for X, Y in _plain_batches(self.data, None)]
        return float(np.exp(sum(v * n for v, n in val) / sum(n for _, n in val)))


class Torch(Contender):
    """d2l's PyTorch tab: nn.RNN + Linear, DataLoader, d2l's clip_gradients, SGD."""
    name = "torch"

    def prepare(self, s, data):
        import torch
        from torch import nn as tnn
        from torch.nn import functional as F
        self.s, self.data, self.torch = s, data, torch
        V, H = len(data.vocab), s.num_hiddens
        torch.manual_seed(0)
        X, Y = torch.tensor(np.asarray(data.X)), torch.tensor(np.asarray(data.Y))
        n = data.num_train
        self.train_loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(X[:n].long(), Y[:n].long()), s.batch_size, shuffle=True)
        self.val_loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(X[n:].long(), Y[n:].long()), s.batch_size, shuffle=False)

        def build():
            rnn, linear = tnn.RNN(V, H), tnn.Linear(H, V)
            params = [*rnn.parameters(), *linear.parameters()]
            return rnn, linear, params, torch.optim.SGD(params, lr=s.config.lr)

        def forward(rnn, linear, X):
            outputs, _ = rnn(F.one_hot(X.T, V).type(torch.float32))
            return linear(outputs).swapaxes(0, 1)

        def step(model, X, Y):
            rnn, linear, params, optim = model
            logits = forward(rnn, linear, X)
            loss = F.cross_entropy(logits.reshape(-1, V), Y.reshape(-1))
            float(torch.exp(loss.detach()))               # d2l plots the perplexity every step
            optim.zero_grad()
            loss.backward()
            with torch.no_grad():                           # d2l's clip_gradients
                norm = torch.sqrt(sum(torch.sum(p.grad ** 2) for p in params))
                if norm > s.config.clip:
                    for p in params:
                        p.grad[:] *= s.config.clip / norm
            optim.step()

        self.build, self.forward, self.step_fn = build, forward, step
        self.model = build()
        self.batches = _cycle(lambda epoch: iter(self.train_loader))
        t0 = time.perf_counter()
        step(self.model, *next(self.batches))
        return time.perf_counter() - t0

    def steps(self, n):
        for _ in range(n):
            self.step_fn(self.model, *next(self.batches))

    def recipe(self):
        torch, V = self.torch, len(self.data.vocab)
        model = self.build()
        for _ in range(self.s.epochs):
            for X, Y in self.train_loader:
                self.step_fn(model, X, Y)
            with torch.no_grad():
                total, count = 0.0, 0
                for X, Y in self.val_loader:
                    logits = self.forward(model[0], model[1], X)
                    total += float(torch.nn.functional.cross_entropy(
                        logits.reshape(-1, V), Y.reshape(-1), reduction="sum"))
                    count += Y.numel()
        return float(np.exp(total / count))


def _cycle(make_epoch):
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def _plain_batches(data: TimeMachine, epoch: int | None):
    """Ragged numpy batches, shuffled per epoch (train) or in order (epoch None: val)."""
    if epoch is None:
        idx = np.arange(data.num_train, data.num_train + data.num_val)
    else:
        idx = data.permutation(epoch)
    for i in range(0, len(idx), data.batch_size):
        j = idx[i:i + data.batch_size]
        yield np.asarray(data.X[j]), np.asarray(data.Y[j])


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def measure_steps(contenders, s: Setting, data, rounds: int, steps: int, warmup: int | None = None,
                  log=print) -> dict:
    """Interleaved rounds of ``steps`` steps; ms per step for each round.

    ``warmup`` steps first (default a whole epoch: the ragged batch, caches, allocators).
    """
    result = {}
    for c in contenders:
        result[c.name] = {"compile_s": c.prepare(s, data), "rounds_ms": []}
        c.steps(data.num_batches() + 1 if warmup is None else warmup)
    for r in range(rounds):
        for c in contenders:
            t0 = time.perf_counter()
            ran = c.steps(steps) or steps
            result[c.name]["rounds_ms"].append((time.perf_counter() - t0) / ran * 1e3)
        log(f"  round {r + 1}/{rounds}: " + "  ".join(
            f"{c.name} {result[c.name]['rounds_ms'][-1]:.2f} ms" for c in contenders))
    tokens = s.batch_size * s.num_steps
    for name, r in result.items():
        ms = statistics.median(r["rounds_ms"])
        r.update(ms_per_step=ms, ms_per_step_min=min(r["rounds_ms"]), ms_per_step_max=max(r["rounds_ms"]),
                 tokens_per_s=tokens / ms * 1e3,
                 gflops=model_flops_per_token(s.num_hiddens, len(data.vocab)) * tokens / ms / 1e6)
    return result


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
import jax
from rnnjax import runtime
from rnnjax.data import TimeMachine
from rnnjax.parallel import DataParallel
from rnnjax.train import STEPS_PER_CALL, Config, compiler_options, create_train_state, train_windows
if sys.argv[1] != "-":
    runtime.enable_compilation_cache(sys.argv[1])
data = TimeMachine(1024, 32, path=sys.argv[2] if len(sys.argv) > 2 else None)
dp, state = DataParallel.create(1), create_train_state(Config(), len(data.vocab))
tokens, windows = dp.replicate(data.tokens), dp.shard_stack(list(data.train_windows(0))[:STEPS_PER_CALL])
t0 = time.perf_counter()
step = dp.compile(train_windows, compiler_options=compiler_options(Config(), 1))
step.executable(state, tokens, windows)
print(time.perf_counter() - t0)
jax.block_until_ready(step(state, tokens, windows))
"""


def measure_compile_cache(data_path: str | None) -> dict:
    """Compiling the training program (tracing included) in fresh processes: no cache, then a cold
    and a warm persistent cache."""
    import subprocess
    import sys

    def compile_s(cache: str) -> float:
        args = [sys.executable, "-c", _COMPILE, cache] + ([data_path] if data_path else [])
        return float(subprocess.run(args, check=True, capture_output=True, text=True).stdout.split()[-1])

    with tempfile.TemporaryDirectory() as cache:
        return {"no_cache_s": compile_s("-"), "cold_cache_s": compile_s(cache),
                "warm_cache_s": compile_s(cache)}


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
                "optax": optax.__version__, "numpy": np.__version__, "rnnjax": rnnjax.__version__}
    if torch_available():
        import torch
        versions["torch"] = torch.__version__
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "devices": [str(d) for d in jax.local_devices()], "date": time.strftime("%Y-%m-%d"),
            "versions": versions}


def contenders_for(args, one_device_too: bool = False) -> list[Contender]:
    out: list[Contender] = [Rnnjax(args.devices)]
    if one_device_too and len(DataParallel.create(args.devices).devices) > 1:
        out.append(Rnnjax(1, name="rnnjax 1 device"))
    if torch_available():
        out.append(Torch())
    else:
        print("torch is not importable: skipping the PyTorch baseline (pip install torch==2.13.0)")
    out.append(StockFlax())
    return out


def table(results: dict, ref: str = "rnnjax") -> str:
    rows = [f"{'contender':<28}{'ms/step (min-max)':>24}{'compile s':>11}{'recipe s':>10}"
            f"{'tokens/s':>11}{'GFLOP/s':>9}{'vs rnnjax':>10}"]
    for name, r in results.items():
        recipe = f"{r['recipe_s']:.1f}" if "recipe_s" in r else "-"
        spread = f"({r['ms_per_step_min']:.2f}-{r['ms_per_step_max']:.2f})"
        rows.append(f"{name:<28}{r['ms_per_step']:>9.2f} {spread:>14}{r['compile_s']:>11.2f}{recipe:>10}"
                    f"{r['tokens_per_s']:>11.3g}{r['gflops']:>9.1f}"
                    f"{r['ms_per_step'] / results[ref]['ms_per_step']:>9.2f}x")
    return "\n".join(rows)


SWEEP_ROUNDS = 5


def run_sweep(args, data_path, log=print) -> list[dict]:
    rows = []
    for H in (32, 128, 512):
        for B in (64, 1024):
            for T in (32, 128):
                # Whole batches only, so that no contender recompiles inside a timed round.
                data = TimeMachine(B, T, num_train=10000 // B * B, path=data_path)
                # Rounds of 0.2-3 s: shorter ones left +-20% noise on this machine.
                # rnnjax rounds them up to whole calls of 10 steps, as fit runs it.
                steps = max(2, min(200, int(2e7 // (B * T * H))))
                s = Setting(batch_size=B, num_steps=T, num_hiddens=H)
                log(f"sweep H={H} B={B} T={T} ({SWEEP_ROUNDS} rounds of {steps} steps)")
                res = measure_steps(contenders_for(args), s, data, rounds=SWEEP_ROUNDS, steps=steps,
                                    warmup=1, log=lambda *_: None)
                for name, r in res.items():
                    rows.append({"contender": name, "num_hiddens": H, "batch_size": B, "num_steps": T,
                                 **{k: r[k] for k in ("ms_per_step", "ms_per_step_min", "ms_per_step_max",
                                                      "tokens_per_s", "gflops")}})
                log("  " + "  ".join(f"{name} {r['tokens_per_s']:.3g} tok/s" for name, r in res.items()))
    return rows


def plot_sweep(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(r["contender"] for r in rows))
    configs = list(dict.fromkeys((r["num_hiddens"], r["batch_size"], r["num_steps"]) for r in rows))
    fig, ax = plt.subplots(figsize=(10, 3.8), dpi=110)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        by = {(r["num_hiddens"], r["batch_size"], r["num_steps"]): r["tokens_per_s"] for r in rows
              if r["contender"] == name}
        ax.bar(np.arange(len(configs)) + i * width, [by[c] for c in configs], width, label=name)
    ax.set_xticks(np.arange(len(configs)) + width * (len(names) - 1) / 2,
                  [f"H{h}\nB{b}\nT{t}" for h, b, t in configs], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("training tokens / s")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--data", help="local timemachine.txt (else $RNNJAX_TIMEMACHINE, else download)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds of steady-state steps")
    p.add_argument("--steps", type=int, default=60, help="steps per contender per round")
    p.add_argument("--recipe-rounds", type=int, default=1, help="whole-recipe runs per contender (0: none)")
    p.add_argument("--devices", type=int, help="rnnjax's local devices (default: all)")
    p.add_argument("--sweep", action="store_true", help="also the hidden x batch x steps sweep")
    p.add_argument("--sweep-plot", type=Path, default=Path("sweep.png"))
    p.add_argument("--ablations", action="store_true", help="also rnnjax variants: what each lever pays")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    args = p.parse_args(argv)

    s = Setting()
    # As experiments.timemachine does: malloc keeps freed memory (all contenders
    # share the process, so PyTorch and Flax get it too), one CPU device per core.
    runtime.keep_freed_memory()
    runtime.use_cpu_cores(s.batch_size)
    data = TimeMachine(s.batch_size, s.num_steps, path=args.data)
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, {info['devices']}; " +
          ", ".join(f"{k} {v}" for k, v in info["versions"].items()))

    contenders = contenders_for(args, one_device_too=True)
    print(f"steady-state training step, d2l's recipe, {args.rounds} interleaved rounds "
          f"of {args.steps} steps:")
    results = measure_steps(contenders, s, data, args.rounds, args.steps)
    if args.recipe_rounds:
        print(f"whole recipe ({s.epochs} epochs, compilation and per-epoch validation included):")
        for name, r in measure_recipes(contenders, args.recipe_rounds).items():
            results[name].update(r)
    print(table(results))

    out = {"setting": dataclasses.asdict(s), "machine": info, "contenders": results}
    for base in ("torch", "flax"):
        if base in results:
            out[f"ratio_step_vs_{base}"] = results[base]["ms_per_step"] / results["rnnjax"]["ms_per_step"]
            print(f"rnnjax's step is {out[f'ratio_step_vs_{base}']:.2f}x faster than {base}'s")
    if "torch" in results and "recipe_s" in results["torch"]:
        out["ratio_recipe_vs_torch"] = results["torch"]["recipe_s"] / results["rnnjax"]["recipe_s"]
        print(f"rnnjax's whole recipe is {out['ratio_recipe_vs_torch']:.2f}x faster than torch's")

    cc = out["compile_cache"] = measure_compile_cache(args.data)
    print(f"compiling the training program in a fresh process: {cc['no_cache_s']:.2f} s; with the persistent "
          f"compilation cache: {cc['cold_cache_s']:.2f} s when cold, {cc['warm_cache_s']:.2f} s when warm")

    gen = out["generation"] = measure_generation(data)
    print(f"generating {gen['num_chars']} characters: compiled {gen['compiled_ms']:.2f} ms, d2l's loop "
          f"{gen['d2l_loop_ms']:.0f} ms ({gen['ratio']:.0f}x); {gen['batch']} prefixes at once "
          f"{gen['batched_ms']:.1f} ms ({gen['batched_chars_per_s']:.3g} characters/s)")

    if args.ablations:
        variants = [Rnnjax(args.devices), Rnnjax(args.devices, custom_vjp=False),
                    Rnnjax(args.devices, unroll=8), Rnnjax(args.devices, unroll=32)]
        print("ablations (interleaved):")
        out["ablations"] = measure_steps(variants, s, data, args.rounds, args.steps)
        print(table(out["ablations"]))
    if args.sweep:
        out["sweep"] = run_sweep(args, args.data)
        plot_sweep(out["sweep"], args.sweep_plot)
        print(f"sweep plot: {args.sweep_plot}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
