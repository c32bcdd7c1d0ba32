"""d2l's exercise 2 of the section: the autoregressive model of sec_sequence, with an RNN.

Command::

    python -m experiments.sine [--workdir DIR] [--seeds 0,1,2] [--rnn-epochs 20]

Expected: 7-11 s on a 2-core CPU for seeds 0, 1, 2 (the default; a seed more adds about half a
second); docs/results.md has the errors over seeds 0-2. d2l's data (``x_t = sin(0.01 t) + N(0, 0.2)``,
T = 1000, tau = 4, the first 600 examples for training) and two models: d2l's linear autoregressive
model on the last tau values (5 epochs of SGD, lr 0.01, batch 16), and sec_sequence's latent
autoregressive model as an RNN (``rnnjax.model.RNN`` of a 32-unit ``SimpleRNNCell`` whose state reads
the whole history; clipped Adam on one-step and 64-step free-running errors).

It says first where it writes and on which device, then each seed as it is done; it writes d2l's three
figures (both models, the first seed's, once that seed is done) and at the end ``results.json`` (the mean
squared errors by seed, their min and max) to ``--workdir`` (default ``runs/sine-<date>-<time>``, as
``runs/sine-20261205-014400``), which one run writes at a time. Ctrl-C, SIGTERM or SIGHUP stops it at
once with one line saying what the workdir holds (exit 128 + signal). Each file is written whole or not
at all (``sine_figures``).
"""

from __future__ import annotations

from experiments import stopping
from experiments.parsing import Parser, parse_seeds

if __name__ == "__main__":     # a signal while JAX loads: one line and 128 + signal, no traceback
    stopping.while_loading()
    stopping.load_jax()

import contextlib  # noqa: E402 (after the handlers: loading JAX takes a while)
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments import sine_figures  # noqa: E402
from experiments.sine_models import (LINEAR_OPTIMIZER, RNN_OPTIMIZER, Linear, RNNForecaster,  # noqa: E402
                                     forward, init, minibatch_train, rollout)
from rnnjax import backend, spelling  # noqa: E402
from rnnjax.state import seed_key  # noqa: E402
from rnnjax.workdir import WorkdirError, write_atomically  # noqa: E402

T, TAU, NUM_TRAIN, MAX_STEPS, STEPS = 1000, 4, 600, 64, (1, 4, 16, 64)
FIGURES, RESULTS = sine_figures.FIGURES, sine_figures.RESULTS
MAX_RNN_EPOCHS = 100_000        # hours on a CPU; the epoch count is an int32 in the compiled loop


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """d2l's ``Data``: ``time = 1..T``, ``x = sin(0.01 time) + N(0, 0.2)``."""
    time_T = np.arange(1, T + 1, dtype=np.float32)
    x_T = np.sin(0.01 * time_T) + np.random.default_rng(seed).normal(0, 0.2, T).astype(np.float32)
    return time_T, x_T.astype(np.float32)


def windows(x_T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d2l's features ``(T - tau, tau)``, the previous tau values, and labels ``x[tau:]``."""
    features_NxTau = np.stack([x_T[i:T - TAU + i] for i in range(TAU)], axis=1)
    return features_NxTau, x_T[TAU:]


def train_rnn(model: RNNForecaster, x_T: np.ndarray, epochs: int, seed: int = 0, warmup: int = 100,
              horizon: int = MAX_STEPS):
    """Trains (``RNNForecaster.loss``) on every stretch of ``warmup + horizon`` values of the training part
    ``x[:NUM_TRAIN + TAU]`` (the values d2l's 600 training examples hold). The params."""
    part = x_T[:NUM_TRAIN + TAU]
    seqs_NxL = np.stack([part[i:i + warmup + horizon] for i in range(len(part) - warmup - horizon + 1)])
    params = init(model, seed_key(seed), jnp.asarray(seqs_NxL[:1, :warmup].T))
    data = (seqs_NxL[:, :warmup], seqs_NxL[:, warmup:])
    return minibatch_train(model, params, RNN_OPTIMIZER, data, epochs, seed)


def rnn_predictions(model: RNNForecaster, params, x_T: np.ndarray) -> dict[str, np.ndarray]:
    """``predictions``' three for the RNN: its state runs over the data up to the last value it may see,
    then it feeds back its own predictions."""
    preds_T, states_TxH = (a[:, 0] for a in forward(model, params, jnp.asarray(x_T)[:, None]))
    multistep = np.array(x_T)
    start = NUM_TRAIN + TAU
    multistep[start:] = np.asarray(rollout(model, params, states_TxH[None, start - 1], T - start))[:, 0]
    ksteps = ksteps_table(x_T)
    ksteps[:, TAU:] = np.asarray(rollout(model, params, states_TxH[TAU - 1:TAU - 1 + len(ksteps)],
                                         MAX_STEPS)).T
    return {"onestep": np.asarray(preds_T[TAU - 1:T - 1]), "multistep": multistep, "ksteps": ksteps}


def train_linear(model: Linear, features_NxTau: np.ndarray, labels_N: np.ndarray, seed: int = 0):
    """d2l's recipe: MSE on the first ``NUM_TRAIN`` examples, 5 epochs of SGD at lr 0.01. The params."""
    params = init(model, seed_key(seed), jnp.asarray(features_NxTau[:1]))
    data = (features_NxTau[:NUM_TRAIN], labels_N[:NUM_TRAIN])
    return minibatch_train(model, params, LINEAR_OPTIMIZER, data, 5, seed)


def predictions(predict, x_T: np.ndarray, features) -> dict[str, np.ndarray]:
    """d2l's three: one step ahead; multistep from ``NUM_TRAIN + TAU`` on (own predictions fed back);
    k steps ahead for every k up to ``MAX_STEPS`` (columns ``TAU + k - 1`` of ``ksteps``)."""
    multistep = np.array(x_T)
    for i in range(NUM_TRAIN + TAU, T):
        multistep[i] = predict(multistep[None, i - TAU:i])[0]
    ksteps = ksteps_table(x_T)
    for i in range(TAU, TAU + MAX_STEPS):
        ksteps[:, i] = predict(ksteps[:, i - TAU:i])
    return {"onestep": np.asarray(predict(features)), "multistep": multistep, "ksteps": ksteps}


def ksteps_table(x_T: np.ndarray) -> np.ndarray:
    """The k-step table before any prediction: row i holds the data ``x[i:i + TAU]``, then ``MAX_STEPS``
    zeros where the predictions of ``x[i + TAU:i + TAU + MAX_STEPS]`` go."""
    features_NxTau = windows(x_T)[0][:T - TAU - MAX_STEPS + 1]
    return np.pad(features_NxTau, ((0, 0), (0, MAX_STEPS))).astype(np.float32)


def errors(preds: dict, x_T: np.ndarray) -> dict[str, float]:
    """Mean squared errors against the data: one-step and multistep on the test part, k-step everywhere."""
    test = x_T[NUM_TRAIN + TAU:]
    out = {"onestep_test": float(np.mean((preds["onestep"][NUM_TRAIN:] - test) ** 2)),
           "multistep_test": float(np.mean((preds["multistep"][NUM_TRAIN + TAU:] - test) ** 2))}
    rows = preds["ksteps"].shape[0]
    for k in STEPS:
        target = x_T[TAU + k - 1:TAU + k - 1 + rows]
        out[f"{k}-step"] = float(np.mean((preds["ksteps"][:, TAU + k - 1] - target) ** 2))
    return out


def run(workdir: Path, seed: int = 0, rnn_epochs: int = 20, figures: bool = True
        ) -> dict[str, dict[str, float]]:
    """Both models at ``seed`` (the noise's and the models'): their mean squared errors by model."""
    time_T, x_T = make_data(seed)
    features, labels = windows(x_T)
    linear, rnn = Linear(), RNNForecaster()
    params = train_linear(linear, features, labels, seed)
    results = {"linear": predictions(lambda f: np.asarray(forward(linear, params, jnp.asarray(f))), x_T,
                                     features),
               "rnn": rnn_predictions(rnn, train_rnn(rnn, x_T, rnn_epochs, seed), x_T)}
    if figures:
        workdir.mkdir(parents=True, exist_ok=True)
        sine_figures.plot(time_T, x_T, results, workdir, TAU, NUM_TRAIN, STEPS)
    return {name: errors(preds, x_T) for name, preds in results.items()}


def run_seeds(workdir: Path, seeds: list[int], rnn_epochs: int = 20, done=lambda seed, seconds: None
              ) -> dict[str, dict]:
    """``run`` at each seed (figures of the first), calling ``done(seed, seconds)`` after each:
    ``{"seed S": table, ..., "min": table, "max": table}``, also written to ``results.json``."""
    per_seed = {}
    for k, s in enumerate(seeds):
        t0 = time.perf_counter()
        per_seed[f"seed {s}"] = run(workdir, s, rnn_epochs, figures=k == 0)
        done(s, time.perf_counter() - t0)
    rows = list(per_seed.values())
    summary = {name: {model: {c: pick(t[model][c] for t in rows) for c in row}
                      for model, row in rows[0].items()}
               for name, pick in (("min", min), ("max", max))}
    tables = {**per_seed, **summary}
    write_atomically(workdir / RESULTS, json.dumps(tables, indent=1) + "\n")
    return tables


def default_workdir() -> Path:
    return Path("runs") / time.strftime("sine-%Y%m%d-%H%M%S")


@spelling.flag_spelling()
def main(argv=None) -> int:
    p = Parser(prog="python -m experiments.sine", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, help="output folder (default runs/sine-<date>-<time>)")
    p.add_argument("--seeds", default="0,1,2", help="the noise's and the models' seeds, comma-separated "
                                                    "(default 0,1,2; the figures are the first's)")
    p.add_argument("--rnn-epochs", type=int, default=20, help="the RNN's training epochs (default 20)")
    args = p.parse_args(argv)
    workdir = args.workdir or default_workdir()
    with contextlib.ExitStack() as held:
        try:
            seeds = parse_seeds(args.seeds)
            if not 1 <= args.rnn_epochs <= MAX_RNN_EPOCHS:
                raise ValueError(f"--rnn-epochs must be from 1 to {MAX_RNN_EPOCHS:,}, got {args.rnn_epochs}.")
            sine_figures.check_workdir(workdir)
            backend.start()
            held.enter_context(sine_figures.claimed(workdir))
        except (ValueError, WorkdirError) as e:
            stopping.tell(f"error: {e}")
            return 1
        return _run(workdir, seeds, args.rnn_epochs)


def _run(workdir: Path, seeds: list[int], rnn_epochs: int) -> int:
    previous = stopping.handle(sine_figures.stop_at_once(workdir))
    try:
        with stopping.guarded_stdout():
            return _report(workdir, seeds, rnn_epochs)
    except WorkdirError as e:       # a full disk: this run's files go, so that the same command runs again
        sine_figures.remove(workdir)
        stopping.tell(f"error: {e}")
        return 1
    except (BrokenPipeError, stopping.OutputError) as e:    # stdout's (a closed pipe, a full disk under it)
        whole = (workdir / RESULTS).exists()        # written last: the figures are there too
        if not whole:
            sine_figures.remove(workdir)
        kept = f"{workdir} holds the whole run" if whole else "nothing was kept: run the same command again"
        if isinstance(e, BrokenPipeError):
            return stopping.output_closed(kept)
        stopping.tell(f"Stopped: {e.strerror} (writing the output); {kept}.")
        return 1
    except OSError as e:
        stopping.tell(f"error: cannot write to {workdir}: {e.strerror}.")
        return 1
    finally:
        stopping.put_back(previous)


def _report(workdir: Path, seeds: list[int], rnn_epochs: int) -> int:
    """The run, said as it goes: what, where, then the errors' table."""
    device, count = jax.devices()[0], jax.device_count()
    of = f", one of {count} devices" if count > 1 else ""
    print(f"linear and RNN models (the RNN {rnn_epochs} epochs) at seeds "
          f"{','.join(map(str, seeds))} on {device} ({device.device_kind}{of}); writing to {workdir}",
          flush=True)
    tables = run_seeds(workdir, seeds, rnn_epochs, done=lambda seed, seconds: print(
        f"seed {seed}: done in {seconds:.1f} s{' (compiling and the figures included)' * (seed == seeds[0])}",
        flush=True))
    columns = list(next(iter(tables[f"seed {seeds[0]}"].values())))
    print("mean squared error      " + "  ".join(f"{c:>14}" for c in columns))
    for name, table in tables.items():
        for model, row in table.items():
            print(f"{model:<7}{name:<16}  " + "  ".join(f"{row[c]:14.4f}" for c in columns))
    print(f"wrote {workdir}")
    return 0


if __name__ == "__main__":
    stopping.run(main)
