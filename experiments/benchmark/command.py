"""The benchmark's command line: d2l's recipe (the default), the sizes (``--sizes``), the sweep, the JSON."""

from __future__ import annotations

import contextlib
import json
import math
import signal
from pathlib import Path

import jax

from experiments import stopping
from experiments.benchmark.contenders import Contender, Rnnjax, RnnjaxRuns, Setting, StockFlax
from experiments.benchmark.measure import (machine_info, measure_compile_cache, measure_generation,
                                           measure_recipes, measure_steps)
from experiments.benchmark.outputs import Stop, check_outputs, writing
from experiments.benchmark.report import (RATIO_MEANING, busy, compared, memory_words, plot_sweep,
                                          speed_words, table, torch_said)
from experiments.benchmark.sizes import SIZES, applicable_kernels, run_sizes, settings
from experiments.benchmark.torch_contenders import TorchD2l, TorchLean, torch_available, torch_problem
from experiments.parsing import Parser
from rnnjax import backend, kernels, spelling
from rnnjax.data import TimeMachine
from rnnjax.source import timemachine_path
from experiments.flags import MAX_RUNS
from rnnjax.parallel import DataParallel
from rnnjax.lock import lock
from rnnjax.workdir import WorkdirError, write_atomically

# The counts' (lowest, highest): more rounds than these are a typo's hours of measuring; --runs, as many
# seeds as one program trains (experiments.flags).
LIMITS = {"rounds": (1, 1000), "steps": (1, 100_000), "recipe_rounds": (0, 1000), "runs": (0, MAX_RUNS),
          "devices": (1, None), "num_layers": (1, 64)}
# d2l's recipe's flags (their defaults): --sizes measures its own sets, and would ignore them.
RECIPE_FLAGS = {"recipe_rounds": 1, "cell": "rnn", "num_layers": 1, "runs": 4, "sweep": False,
                "ablations": False}


def contenders_for(args, one_device_too: bool = False) -> list[Contender]:
    out: list[Contender] = [Rnnjax(args.devices)]
    if one_device_too and len(DataParallel.create(args.devices).devices) > 1:
        out.append(Rnnjax(1, name="rnnjax 1 device"))
    if torch_available():
        out += [TorchD2l(), TorchLean()]
    else:
        print(f"torch is not importable ({torch_problem()}): skipping PyTorch's contenders")
    out.append(StockFlax())
    return out


SWEEP_ROUNDS = 5


def run_sweep(args, data_path, rows: list[dict], saved=lambda: None, log=print) -> None:
    """The hidden x batch x steps sweep, its rows appended to ``rows``; ``saved()`` after each point."""
    for H in (32, 128, 512):
        for B in (64, 1024):
            for T in (32, 128):
                # Whole batches only, so that no contender recompiles inside a timed round.
                data = TimeMachine(B, T, num_train=10000 // B * B, path=data_path)
                # Rounds of 0.2-3 s: shorter ones were too noisy (docs/performance-log.md).
                # rnnjax rounds them up to whole calls of 10 steps, as fit runs it.
                steps = max(2, min(200, int(2e7 // (B * T * H))))
                s = Setting(batch_size=B, num_steps=T, num_hiddens=H, cell=args.cell,
                            num_layers=args.num_layers)
                log(f"sweep H={H} B={B} T={T} ({SWEEP_ROUNDS} rounds of {steps} steps)")
                res = measure_steps(contenders_for(args), s, data, rounds=SWEEP_ROUNDS, steps=steps,
                                    warmup=1, log=lambda *_: None)
                for name, r in res.items():
                    rows.append({"contender": name, "num_hiddens": H, "batch_size": B, "num_steps": T,
                                 **{k: r[k] for k in ("ms_per_step", "ms_per_step_min", "ms_per_step_max",
                                                      "tokens_per_s", "gflops")}})
                log("  " + "  ".join(f"{name} {r['tokens_per_s']:.3g} tok/s" for name, r in res.items()))
                saved()


def ablation_variants(s: Setting, devices: int | None) -> list[Rnnjax]:
    """rnnjax as it trains, then each other kernel (the one auto picks again would time noise) and unrolls."""
    auto = kernels.choose(s.config)
    others = [k for k in applicable_kernels(s, jax.default_backend()) if k != auto]
    return ([Rnnjax(devices)] + [Rnnjax(devices, kernel=k) for k in others]
            + [Rnnjax(devices, unroll=8), Rnnjax(devices, unroll=32)])


def measure_runs(args, s: Setting, data: TimeMachine) -> dict:
    """N seeds in one program (``rnnjax.runs``) against N sequential runs: steps and whole recipes."""
    one, many = Rnnjax(args.devices), RnnjaxRuns(args.runs, args.devices)
    seeds = f"{args.runs} seed{'s' * (args.runs != 1)}"
    print(f"{seeds} in one program against one seed (interleaved):")
    res = measure_steps([one, many], s, data, args.rounds, args.steps)
    out = {"num_runs": args.runs, "ms_per_step_one": res[one.name]["ms_per_step"],
           "ms_per_step_all": res[many.name]["ms_per_step"]}
    out["ratio_vs_sequential"] = args.runs * out["ms_per_step_one"] / out["ms_per_step_all"]
    if args.recipe_rounds:
        recipes = measure_recipes([one, many], args.recipe_rounds)
        out.update(recipe_s_one=recipes[one.name]["recipe_s"], recipe_s_all=recipes[many.name]["recipe_s"],
                   val_ppl_mean_all=recipes[many.name]["val_ppl"])
        out["recipe_ratio_vs_one"] = out["recipe_s_all"] / out["recipe_s_one"]
    recipe = (f"; the whole recipe takes {out['recipe_ratio_vs_one']:.2f}x one seed's"
              if args.recipe_rounds else "")
    steps = f"{args.runs} sequential step{'s' * (args.runs != 1)}"
    print(f"{seeds} in one program: a step of all of them is {compared(out['ratio_vs_sequential'], steps)}"
          f"{recipe}")
    return out


def check_args(args) -> tuple[Path, Path]:
    """The checks that need only the arguments and the files they name, before any measuring:
    ``ValueError`` in one sentence. Fills in the recipe's defaults and the verified ``args.data``; the
    JSON file and the run folder."""
    for name, (low, high) in LIMITS.items():
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        if value is not None and not low <= value <= (high or value):
            raise ValueError(f"{flag} must be at least {low}, got {value}." if value < low else
                             f"{flag} must be at most {high:,}, got {value:,}.")
    given = [name for name in RECIPE_FLAGS if getattr(args, name) is not None]      # 0 too: typed
    if args.sizes and given:
        flag = "--" + given[0].replace("_", "-")
        raise ValueError(f"{flag} is for d2l's recipe, which --sizes does not run; leave it out.")
    for name, default in RECIPE_FLAGS.items():
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    if args.json and args.out and not args.sweep:      # it would be ignored: nothing goes there
        raise ValueError(f"--out {args.out} holds only --sweep's plot when --json names the results' file; "
                         "leave it out, or add --sweep.")
    if args.data == "":         # '' would mean the default file
        raise ValueError("--data is empty; give a path (a shell variable that was not set?).")
    Setting(cell=args.cell, num_layers=args.num_layers).config      # ConfigError (--num-layers 0)
    json_path, out_dir = check_outputs(args.json, args.out, args.sweep)
    args.data = str(timemachine_path(args.data))       # DataError: missing, a folder, not d2l's file
    return json_path, out_dir


def check_devices(devices: int | None, batch_sizes: list[int]) -> None:
    """``ValueError`` unless rnnjax can train every batch of ``batch_sizes`` on ``devices`` of this
    process's (default all): as many as there are, and each batch split evenly."""
    dp = DataParallel.create(devices)
    uneven = [B for B in batch_sizes if B % dp.num_local]
    if uneven:
        fits = [str(n) for n in range(dp.num_local - 1, 0, -1) if all(B % n == 0 for B in batch_sizes)]
        raise ValueError(f"{dp.num_local} devices cannot split the batch of {uneven[0]} evenly; give "
                         f"--devices {' or '.join(fits[:3])}.")


def parser() -> Parser:
    p = Parser(prog="python -m experiments.benchmark",
               description="rnnjax against PyTorch's nn.RNN and stock Flax, on the backend it runs on "
                           "(PyTorch on CUDA where torch sees a GPU)")
    p.add_argument("--data", help="local timemachine.txt (else $RNNJAX_TIMEMACHINE, else download)")
    p.add_argument("--sizes", choices=sorted(SIZES),
                   help="instead of d2l's recipe: the training step of every contender at each size of "
                        "this set (gpu: research sizes, the 2-layer LSTM 1024 first; small: quick ones), "
                        "rnnjax with each kernel; not with the recipe's --recipe-rounds, --cell, "
                        "--num-layers, --runs, --sweep, --ablations")
    p.add_argument("--rounds", type=int,
                   help="interleaved rounds of steady-state steps (default 7; with --sizes the set's; "
                        f"the sweep takes {SWEEP_ROUNDS} at each point)")
    p.add_argument("--steps", type=int,
                   help="steps per contender per round (default 60; with --sizes the set's; the sweep's "
                        "give each point's rounds 0.2-3 s)")
    p.add_argument("--recipe-rounds", type=int,
                   help="whole-recipe runs per contender (default 1; 0: none)")
    p.add_argument("--devices", type=int, help="rnnjax's local devices (default: all)")
    p.add_argument("--cell", choices=["rnn", "gru", "lstm"],
                   help="the cell of every contender (default rnn; d2l's recipe of that section: "
                        "rnnjax.config.PRESETS)")
    p.add_argument("--num-layers", type=int, help="stacked recurrent layers (default 1)")
    p.add_argument("--runs", type=int, metavar="N",
                   help="also N seeds trained in one program against one seed (default 4; 0: not)")
    p.add_argument("--sweep", action="store_true", default=None, help="also the hidden x batch x steps sweep")
    p.add_argument("--ablations", action="store_true", default=None,
                   help="also rnnjax variants: what each lever pays")
    p.add_argument("--out", help="run folder for bench.json and sweep.png (default runs/bench-<time>): new, "
                                 "empty or an earlier benchmark's, whose files are replaced; with --json, "
                                 "for --sweep's plot only")
    p.add_argument("--json", help="the results' JSON file (default OUT/bench.json): new or an earlier "
                                  "benchmark's, which is replaced; never another file")
    return p


@spelling.flag_spelling()
def main(argv=None) -> int:
    previous = stopping.handle(stopping.stopped_while_loading)
    try:
        p = parser()
        args = p.parse_args(argv)
        try:
            json_path, out_dir = check_args(args)
            batch_sizes = ([s.batch_size for s in settings(args.sizes)] if args.sizes else
                           [1024, 64] if args.sweep else [1024])
            # As experiments.timemachine does: one CPU device per core, as many as split every batch.
            backend.use_cpu_cores(math.gcd(*batch_sizes), args.devices)
            backend.start()
            check_devices(args.devices, batch_sizes)
        except ValueError as e:         # DataError and ConfigError too
            stopping.tell(f"error: {e}")
            return 1
        stop = Stop(json_path)
        stopping.handle(stop)
        try:
            with contextlib.ExitStack() as held, stopping.guarded_stdout():
                if args.json is None or args.sweep:     # one run writes the run folder at a time
                    held.enter_context(lock(out_dir, flag="--out"))
                # and the results' file, whichever flag names it (--out X, --json X/bench.json)
                held.enter_context(writing(json_path, None if args.json else f"--out {out_dir}"))
                check_outputs(args.json, str(out_dir), args.sweep)     # again, now that they are held
                if json_path.exists():
                    print(f"replacing {json_path}, an earlier benchmark's results")
                benchmark(args, json_path, out_dir)
        except KeyboardInterrupt as e:      # fit's Interrupted: a signal stops a recipe at its next step
            signum = getattr(e, "signum", signal.SIGINT)
            stopping.tell(stop.message(signum))
            return 128 + signum
        except (ValueError, WorkdirError) as e:     # another run's, or a full disk: bench.json keeps its last
            stopping.tell(f"error: {e}")
            return 1
        except BrokenPipeError:
            return stopping.output_closed(stop.kept())
        except stopping.OutputError as e:
            stopping.tell(f"Stopped: {e.strerror} (writing the output); {stop.kept()}.")
            return 1
        return 0
    finally:
        stopping.put_back(previous)


def benchmark(args, json_path: Path, out_dir: Path) -> None:
    """Measures what ``args`` (checked) ask for, rewriting ``json_path`` whole after each part."""
    s = Setting(cell=args.cell, num_layers=args.num_layers)
    # As experiments.timemachine does: malloc keeps freed memory (all contenders
    # share the process, so PyTorch and Flax get it too).
    backend.keep_freed_memory()
    if args.sizes:
        def saved():                    # an earlier benchmark's plot is not this bench.json's
            if args.json is None:
                (out_dir / "sweep.png").unlink(missing_ok=True)
        run_sizes(args.sizes, args.data, json_path, args.devices, args.rounds, args.steps, saved=saved)
        print(f"wrote {json_path}")
        return
    args.rounds, args.steps = args.rounds or 7, args.steps or 60
    data = TimeMachine(s.batch_size, s.num_steps, path=args.data)
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, {info['devices']} ({info['device_kind']}), "
          f"{torch_said(info)}; "
          + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v is not None)
          + f"; written to {json_path} after each part")
    if busy(info):
        print(busy(info))

    contenders = contenders_for(args, one_device_too=True)
    print(f"steady-state training step, d2l's recipe ({s.cell}, {s.num_layers} layer(s)), {args.rounds} "
          f"interleaved rounds of {args.steps} steps; rnnjax trains with kernel "
          f"{kernels.choose(s.config)!r}:")
    results = measure_steps(contenders, s, data, args.rounds, args.steps)
    out = {"setting": s.config.to_json(), "machine": info, "rounds": args.rounds, "steps": args.steps,
           "recipe_rounds": args.recipe_rounds, "contenders": results, "ratio_meaning": RATIO_MEANING,
           "complete": False}           # True once every part asked for is in: a stopped run's stays False

    def save():           # after each part, whole: a run cut short keeps what it measured
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(json_path, json.dumps(out, indent=1))
    save()
    if args.json is None or args.sweep:     # at the first save, as in --sizes
        (out_dir / "sweep.png").unlink(missing_ok=True)
    if args.recipe_rounds:
        print(f"whole recipe ({s.epochs} epochs, compilation and per-epoch validation included):")
        for name, r in measure_recipes(contenders, args.recipe_rounds).items():
            results[name].update(r)
    print(table(results))
    for base in ("torch lean", "torch d2l", "flax"):
        if base not in results:
            continue
        key = base.replace(" ", "_")
        out[f"ratio_step_vs_{key}"] = results[base]["ms_per_step"] / results["rnnjax"]["ms_per_step"]
        theirs = f"{base}'s"
        print(f"rnnjax's step is {compared(out[f'ratio_step_vs_{key}'], theirs)}")
        if "recipe_s" in results[base]:
            out[f"ratio_recipe_vs_{key}"] = results[base]["recipe_s"] / results["rnnjax"]["recipe_s"]
            print(f"rnnjax's whole recipe is {compared(out[f'ratio_recipe_vs_{key}'], theirs)}")
        if results[base].get("step_mb") and results["rnnjax"].get("step_mb"):
            out[f"ratio_memory_vs_{key}"] = results[base]["step_mb"] / results["rnnjax"]["step_mb"]
            print(f"rnnjax's step allocates {memory_words(out[f'ratio_memory_vs_{key}'], theirs)}")

    save()
    cc = out["compile_cache"] = measure_compile_cache(args.data)
    print(f"compiling the training program in a fresh process: failed, {cc['error']}" if "error" in cc else
          f"compiling the training program in a fresh process: {cc['no_cache_s']:.2f} s; with the persistent "
          f"compilation cache: {cc['cold_cache_s']:.2f} s when cold, {cc['warm_cache_s']:.2f} s when warm")

    save()
    gen = out["generation"] = measure_generation(data)
    print(f"generating {gen['num_chars']} characters: compiled {gen['compiled_ms']:.2f} ms, d2l's loop "
          f"{gen['d2l_loop_ms']:.0f} ms (compiled is {speed_words(gen['ratio'])}); {gen['batch']} prefixes "
          f"at once {gen['batched_ms']:.1f} ms ({gen['batched_chars_per_s']:.3g} characters/s)")

    if args.runs:
        save()
        out["runs"] = measure_runs(args, s, data)

    if args.ablations:
        variants = ablation_variants(s, args.devices)
        print("ablations (interleaved):")
        out["ablations"] = measure_steps(variants, s, data, args.rounds, args.steps, keep_going=True)
        print(table(out["ablations"]))
    if args.sweep:
        out["sweep"] = []           # saved point by point: a stop keeps the points so far
        run_sweep(args, args.data, out["sweep"], save)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(out_dir / "sweep.png", save=lambda tmp: plot_sweep(out["sweep"], tmp))
        print(f"sweep plot: {out_dir / 'sweep.png'}")
    out["complete"] = True
    save()
    print(f"wrote {json_path}")


if __name__ == "__main__":
    stopping.run(main)
