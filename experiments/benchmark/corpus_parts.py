"""experiments.benchmark.corpus's parts, each run in a fresh process (``--prepare``, ``--train``,
``--devices``), and the texts it makes (``generate``), once each (``made``)."""

from __future__ import annotations

import itertools
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from rnnjax.source import sha1_of
from rnnjax.workdir import write_atomically

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


def made(path: Path, size: int) -> bool:
    """Makes text ``path`` of ``size`` MB unless an earlier run made it (its SHA-1 beside it, in
    ``path.sha1``, still matches); whether it made it. The SHA-1 is written before the text is renamed into
    place: a stop between leaves a text it does not match, made again, never a text without one."""
    sha1 = path.with_suffix(".sha1")
    if path.is_file() and sha1.is_file() and read_head(sha1).strip() == sha1_of(path).encode():
        return False
    tmp = path.with_name(path.name + ".tmp")
    write_atomically(tmp, save=lambda t: generate(Path(t), size * MB, seed=size))
    write_atomically(sha1, sha1_of(tmp) + "\n")
    tmp.replace(path)
    return True


def read_head(path: Path, limit: int = 64) -> bytes:
    """``path``'s first bytes: a damaged SHA-1 (not text, or huge) reads as one that does not match."""
    with open(path, "rb") as f:
        return f.read(limit)


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


def train(path: str, tm: str | None, steps: int, rounds: int) -> dict:
    """In this (fresh) process: d2l's model and batch trained on ``path`` (raw characters, then d2l's 28
    tokens) and the Time Machine ``tm``, as ``fit`` does, in interleaved rounds of ``steps`` steps."""
    from rnnjax import backend
    backend.keep_freed_memory()
    backend.use_cpu_cores(1024)
    import jax
    from rnnjax import xla
    from rnnjax.config import Config
    from rnnjax.corpus import TEXT_DEFAULTS, Corpus
    from rnnjax.data import TimeMachine
    from rnnjax.parallel import DataParallel, wait_for_backlog
    from rnnjax.state import create_train_state
    from rnnjax.train import STEPS_PER_CALL, train_windows
    config, dp = Config(), DataParallel.create()
    text = Config(**TEXT_DEFAULTS, steps_per_epoch=1000)
    loaders = {"raw": lambda: Corpus.from_config(path, text),
               "d2l": lambda: Corpus.from_config(path, text.replace(preprocess="d2l"))}
    if tm:
        loaders["Time Machine"] = lambda: TimeMachine(config.batch_size, config.num_steps, path=tm)
    runs, out = {}, {}
    for name, load in loaders.items():
        t0 = time.perf_counter()
        data = load()
        out[name] = {"load_s": time.perf_counter() - t0, "tokens": len(data.tokens), "vocab": len(data.vocab)}
        step = dp.compile(train_windows, donate_state=True,
                          compiler_options=xla.compiler_options(config.batch_size, config.num_hiddens,
                                                                dp.num_shards))
        windows = (w for epoch in itertools.count() for w in data.train_windows(epoch))
        state = dp.replicate(create_train_state(config, len(data.vocab)))
        runs[name] = [step, state, dp.replicate(data.tokens), windows]

    def run(r: list, n: int) -> None:
        step, state, tokens, windows = r
        metrics = []
        for _ in range(n // STEPS_PER_CALL):
            state, m = step(state, tokens, dp.shard_stack([next(windows) for _ in range(STEPS_PER_CALL)]))
            metrics.append(m)
            wait_for_backlog(metrics)
        jax.block_until_ready(metrics)
        r[1] = state

    for r in runs.values():
        run(r, 3 * STEPS_PER_CALL)          # compiles, and warms the caches
    rounds_ms = {name: [] for name in runs}
    for _ in range(rounds):
        for name, r in runs.items():
            t0 = time.perf_counter()
            run(r, steps)
            rounds_ms[name].append((time.perf_counter() - t0) / steps * 1e3)
    for name, ms in rounds_ms.items():
        out[name].update(ms_per_step=statistics.median(ms), ms_min=min(ms), ms_max=max(ms), rounds_ms=ms,
                         steps_per_s=1e3 / statistics.median(ms))
    return {"runs": out, "devices": dp.num_shards, "peak_rss_mb": peak_rss_mb()}


def devices() -> dict:
    """In this (fresh) process: the devices the training gets, set up as ``train`` does; ``ValueError`` in
    one sentence where ``$JAX_PLATFORMS`` names a backend JAX cannot start."""
    from rnnjax import backend
    backend.use_cpu_cores(1024)
    backend.start()
    import jax
    return {"backend": jax.default_backend(), "count": jax.device_count(),
            "kind": jax.devices()[0].device_kind}
