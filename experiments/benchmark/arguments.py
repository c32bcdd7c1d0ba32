"""The benchmark's flags, and the checks that need only them and the files they name (before JAX
starts, or any measuring)."""

from __future__ import annotations

from pathlib import Path

from experiments.benchmark.contenders import Setting
from experiments.benchmark.outputs import check_outputs
from experiments.benchmark.sizes import SIZES
from experiments.flags import MAX_RUNS
from experiments.parsing import Parser
from rnnjax.parallel import DataParallel
from rnnjax.source import timemachine_path

SWEEP_ROUNDS = 5                # the rounds at each point of the sweep
# The counts' (lowest, highest): more rounds than these are a typo's hours of measuring; --runs, as many
# seeds as one program trains (experiments.flags).
LIMITS = {"rounds": (1, 1000), "steps": (1, 100_000), "recipe_rounds": (0, 1000), "runs": (0, MAX_RUNS),
          "devices": (1, None), "num_layers": (1, 64)}
# d2l's recipe's flags (their defaults): --sizes measures its own sets, and would ignore them.
RECIPE_FLAGS = {"recipe_rounds": 1, "cell": "rnn", "num_layers": 1, "runs": 4, "sweep": False,
                "ablations": False}


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
