"""``--predict``: text generated from a workdir's checkpoint, the flags given checked against the run's
settings (a wrong workdir is worth naming)."""

from __future__ import annotations

import argparse
import sys

from experiments import cli, flags, stopping
from rnnjax import checkpoint, config as config_lib, spelling
from rnnjax.state import seed_key


def disagreements(config: config_lib.Config, requested: dict) -> list[str]:
    """The flags ``requested`` that ``config`` (a checkpoint's) was not trained with, as the flags read
    (``ConfigError`` for a value no run could take). A list (``--seeds 0,1``, ``--lr 1,0.5``) is a training
    command's, of which the run is one."""
    out = []
    for k, v in requested.items():
        have = getattr(config, k)
        values = flags.flag_values(config, k, v)
        if have not in values:
            out.append(spelling.disagreement(k, values, [have]))
    return out


def predict_only(args: argparse.Namespace) -> None:
    if sys.stdout is None:          # started with it closed (>&-): the text went nowhere, and it exited 0
        raise ValueError("--predict writes its text to stdout, which is closed: give it a file or a pipe "
                         "(> text.txt).")
    if args.default_workdir and not checkpoint.steps(args.workdir):
        raise checkpoint.CheckpointError(
            f"--predict without --workdir generates from the run these flags train, in {args.workdir}, which "
            "holds none yet: train it first (the same command without --predict), or give its --workdir "
            "(and --run K for run K of --seeds trained together).")
    sampling = {}
    if args.sample:       # --seed seeds the draws here, not the model
        sampling = {"temperature": args.temperature, "top_k": args.top_k,
                    "key": seed_key(args.seed[0] if args.seed is not None else 0)}
    try:
        restored = checkpoint.restore(args.workdir, best=args.best, run=args.run)
    except checkpoint.DamagedCheckpoint as e:     # generate from another one, saying so
        step = None if args.best else e.step
        restored = checkpoint.restore(args.workdir, step=step, best=args.best, run=args.run, fallback=True)
        which = "the best of those that can be read" if args.best else "the newest good one before it"
        said = checkpoint.DamagedCheckpoint(e.step, e.directory, e.reason)      # not the Python hint
        stopping.tell(f"warning: {str(said).removesuffix('.')}; generating from checkpoint step "
                      f"{restored.step}, {which}.")
    # The model comes from the checkpoint; flags that say otherwise (a wrong workdir?) are worth naming.
    requested = {k: v for k, v in flags.given(args).items()
                 if not (args.sample and k == "seed") and k not in config_lib.Config.RESUMABLE}
    differ = disagreements(restored.config, requested)
    if differ:
        raise checkpoint.CheckpointError(f"The checkpoint in {args.workdir} was trained with other settings "
                                         f"than the flags ask for: {'; '.join(differ)}.")
    text = restored.predict(args.predict, args.num_preds, **sampling)
    # stderr: stdout is the text alone, for pipes.
    unused = spelling.in_words(args.not_used)
    not_used = f"; {unused}: for training, not used to predict" if args.not_used else ""
    prompt = restored.prompt(args.predict)
    cleaned = "" if prompt == args.predict else \
        f"; the prompt cleaned as its text was (--preprocess {restored.config.preprocess}): {prompt!r}"
    stopping.tell(f"from {args.workdir}: {cli.describe_checkpoint(restored)}{not_used}{cleaned}")
    print(text)
