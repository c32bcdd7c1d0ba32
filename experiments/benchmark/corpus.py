"""Your own text at scale: preparing 1, 10 and 100 MB corpora, and training on the largest.

Command::

    python -m experiments.benchmark.corpus [--sizes 1,10,100] [--data ../shared/data/timemachine.txt]

Runtime on a 2-core CPU: about 4 minutes. Each text is generated once into ``--out`` (default
``runs/bench-corpus``): words of a Zipf-distributed vocabulary of 30,000
made-up words, capitals, digits, punctuation, non-ASCII letters, lines.
Each preparation runs in a fresh process (``rnnjax.corpus.Corpus``, a fresh
cache, then the same again: the cache hit), which reports its seconds and its
peak resident memory; the training run (d2l's model and batch, fresh
process, one CPU device per core) reports steps per second on the 100 MB
corpus with ``--steps-per-epoch`` (raw characters, and d2l's 28 tokens), and
on the Time Machine alike if ``--data`` or ``$RNNJAX_TIMEMACHINE`` gives it.
Writes ``corpus.json``; figures and the command that made them are in
``docs/performance.md`` ("Your own text").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1 << 20


def generate(path: Path, size: int, seed: int = 0) -> None:
    """Writes about ``size`` bytes of made-up UTF-8 text to ``path``."""
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz") + ["é", "ü", "ß", "ø", "ñ", "ж"]
    weights = np.array([1.0] * 26 + [0.05] * 6)
    weights /= weights.sum()
    words = ["".join(rng.choice(letters, rng.integers(1, 12), p=weights)) for _ in range(30000)]
    words = [w.capitalize() if rng.random() < 0.1 else w for w in words] + [str(i) for i in range(100)]
    p = 1 / np.arange(1, len(words) + 1)
    p /= p.sum()
    ends = np.array([" "] * 12 + [", ", ". ", "! ", "? ", "; ", "\n"])
    written = 0
    with open(path, "wb") as f:
        while written < size:
            picks = rng.choice(len(words), 200_000, p=p)
            chunk = "".join(words[i] + e for i, e in zip(picks, rng.choice(ends, len(picks)))).encode()
            if written + len(chunk) > size:                    # the last: cut at a space, whole characters
                f.write(chunk[: max(chunk.rfind(b" ", 0, size - written), 0)])
                break
            written += f.write(chunk)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024    # kB on Linux


def prepare(path: str, token: str) -> dict:
    """In this (fresh) process: one ``Corpus`` of ``path``, timed."""
    from rnnjax.config import Config
    from rnnjax.corpus import TEXT_DEFAULTS, Corpus
    config = Config(token=token, **TEXT_DEFAULTS)
    before = peak_rss_mb()
    t0 = time.perf_counter()
    c = Corpus(path, config.batch_size, config.num_steps, token=token, preprocess=config.preprocess,
               val_fraction=config.val_fraction)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak_rss_mb(),
            "tokens": len(c.stream), "vocab": len(c.vocab), "cache_hit": c.cache_hit,
            "stream_mb": c.stream.nbytes / MB}


def train(path: str | None, steps: int, preprocess: str) -> dict:
    """In this (fresh) process: d2l's model and batch on ``path`` (else the Time Machine) with ``preprocess``,
    ``steps`` steps an epoch, two epochs; steps per second of the second."""
    from rnnjax import backend
    backend.keep_freed_memory()
    backend.use_cpu_cores(1024)
    backend.enable_compilation_cache()
    from rnnjax.config import Config
    from rnnjax.corpus import TEXT_DEFAULTS, load
    from rnnjax.train import fit
    text = {**TEXT_DEFAULTS, "preprocess": preprocess} if path else {}
    config = Config(epochs=2, steps_per_epoch=steps, num_val=1024, **text)
    t0 = time.perf_counter()
    data = load(config, text=path)
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as workdir:
        result = fit(config, data, workdir, log=None, checkpoint_every=100)
    last = result.history[-1]
    return {"steps_per_s": steps / last["seconds"], "epoch_s": last["seconds"], "load_s": load_s,
            "tokens": len(data.tokens), "vocab": len(data.vocab), "val_ppl": last["val_ppl"],
            "peak_rss_mb": peak_rss_mb()}


def _fresh(*args: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-m", "experiments.benchmark.corpus", *args], capture_output=True,
                         text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark.corpus",
                                description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1,10,100", help="text sizes in MB (default 1,10,100)")
    p.add_argument("--tokens", default="char,word", help="token kinds prepared (default char,word)")
    p.add_argument("--steps", type=int, default=300, help="steps per epoch of the training runs")
    p.add_argument("--data", help="timemachine.txt, to train on it alike (else $RNNJAX_TIMEMACHINE)")
    p.add_argument("--out", default="runs/bench-corpus", help="where the texts and corpus.json go")
    p.add_argument("--prepare", nargs=2, metavar=("PATH", "TOKEN"), help=argparse.SUPPRESS)
    p.add_argument("--train", nargs=2, metavar=("PATH", "PREPROCESS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.prepare:
        print(json.dumps(prepare(*args.prepare)))
        return {}
    if args.train is not None:
        print(json.dumps(train(args.train[0] or None, args.steps, args.train[1])))
        return {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu = platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), cpu)
    result = {"machine": f"{cpu}, {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d"), "prepare": {}, "train": {}}
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        path = out / f"text-{size}mb.txt"
        if not path.is_file() or path.stat().st_size < size * MB * 0.99:
            t0 = time.perf_counter()
            generate(path, size * MB, seed=size)
            print(f"generated {path} in {time.perf_counter() - t0:.1f} s", flush=True)
        for token in args.tokens.split(","):
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "RNNJAX_CACHE": cache}
                cold = _fresh("--prepare", str(path), token, env=env)
                warm = _fresh("--prepare", str(path), token, env=env)
            result["prepare"][f"{size}MB {token}"] = {"cold": cold, "cached": warm}
            print(f"{size} MB, {token}s: {cold['tokens']:,} tokens, vocabulary {cold['vocab']:,}; prepared "
                  f"in {cold['seconds']:.2f} s (cached: {warm['seconds']:.2f} s), peak RSS "
                  f"{cold['peak_rss_mb']:.0f} MB (after imports {cold['rss_before_mb']:.0f} MB; cached "
                  f"{warm['peak_rss_mb']:.0f} MB)",
                  flush=True)
    largest = out / f"text-{max(sizes)}mb.txt"
    # Raw characters make a larger vocabulary (a larger output layer); d2l's preprocessing, the Time
    # Machine's 28 tokens: then only the stream's size differs from the Time Machine's.
    runs = {f"{max(sizes)} MB text, raw": (str(largest), "raw"),
            f"{max(sizes)} MB text, d2l": (str(largest), "d2l")}
    tm = args.data or os.environ.get("RNNJAX_TIMEMACHINE")
    if tm:
        runs["Time Machine"] = ("", "d2l")
    for name, (path, preprocess) in runs.items():
        with tempfile.TemporaryDirectory() as cache:     # the user's cache keeps no generated text
            env = {**os.environ, "RNNJAX_CACHE": cache, **({"RNNJAX_TIMEMACHINE": tm} if tm else {})}
            r = _fresh("--train", path, preprocess, "--steps", str(args.steps), env=env)
        result["train"][name] = r
        print(f"train on the {name} ({r['tokens']:,} tokens on each device, vocabulary {r['vocab']}): "
              f"{r['steps_per_s']:.1f} steps/s, loaded in {r['load_s']:.1f} s, peak RSS "
              f"{r['peak_rss_mb']:.0f} MB", flush=True)
    (out / "corpus.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
