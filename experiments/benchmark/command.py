"""The benchmark's command line: d2l's recipe (the default), the sizes (``--sizes``), the sweep, the JSON."""

from __future__ import annotations

import contextlib
import json
import math
import signal
from pathlib import Path

import jax

from experiments import stopping
from experiments.benchmark.arguments import SWEEP_ROUNDS, check_args, check_devices, parser
from experiments.benchmark.contenders import Contender, Rnnjax, RnnjaxRuns, Setting, StockFlax
from experiments.benchmark.measure import (machine_info, measure_compile_cache, measure_generation,
                                           measure_recipes, measure_steps)
from experiments.benchmark.outputs import Stop, check_outputs, writing
from experiments.benchmark.report import (RATIO_MEANING, busy, compared, memory_words, plot_sweep,
                                          speed_words, table, torch_said)
from experiments.benchmark.sizes import applicable_kernels, run_sizes, settings
from experiments.benchmark.torch_contenders import TorchD2l, TorchLean, torch_available, torch_problem
from rnnjax import backend, kernels, spelling
from rnnjax.data import TimeMachine
from rnnjax.parallel import DataParallel
from rnnjax.lock import lock
from rnnjax.workdir import WorkdirError, write_atomically


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
    if args.rounds < 3 or args.steps < 20:          # a median of one or two short rounds is their noise
        print(f"warning: {args.rounds} round(s) of {args.steps} steps show the command works; its ratios "
              "need more to hold (the default: 7 rounds of 60 steps).")

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
