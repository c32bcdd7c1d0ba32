"""A trained model read back from a checkpoint (``rnnjax.restore.restore`` returns one): its config,
vocabulary and parameters, and what a notebook does with them: generate, score a text, say where it
came from."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from rnnjax import meta as meta_lib, score
from rnnjax.config import Config
from rnnjax.data import WindowedText
from rnnjax.generate import predict, predict_batch
from rnnjax.precision import at_precision
from rnnjax.saved import config_init_from
from rnnjax.state import make_model
from rnnjax.stored import val_ppl
from rnnjax.tokens import cleaned
from rnnjax.vocab import Vocab


@dataclasses.dataclass
class Restored:
    """A trained model from a checkpoint: enough to generate text or score one, nothing of the data.

    ``vocab`` is an ``rnnjax.Vocab`` of the saved tokens, split as characters or words (``config.token``):
    a run tokenized by a ``Vocab`` subclass of one's own gets it back with
    ``dataclasses.replace(run, vocab=MyVocab.from_json(run.vocab.to_json()))``.
    """
    config: Config
    vocab: Vocab
    params: Any = dataclasses.field(repr=False)     # a notebook shows the run, not every array
    step: int
    meta: dict = dataclasses.field(repr=False)      # the checkpoint's (of runs trained together: all)
    run: int | None = None          # which of the runs trained together (rnnjax.runs); None: a single run
    workdir: Path | None = dataclasses.field(default=None, repr=False)     # where restore read it

    @property
    def address(self) -> dict | None:
        """This checkpoint's workdir, step and run (and its meta's checksum, which tells it from another
        run's saved there since), as a run fine-tuned from it records it (``init_from``); ``None`` for a
        ``Restored`` made by hand."""
        if self.workdir is None:
            return None
        checksum = self.meta.get(meta_lib.CHECKSUM)
        return {"workdir": str(Path(self.workdir).resolve()), "step": self.step,
                **({"run": self.run} if self.run is not None else {}),
                **({meta_lib.CHECKSUM: checksum} if checksum is not None else {})}

    @property
    def init_from(self) -> dict | None:
        """The ``address`` of the checkpoint this run was fine-tuned from, as its meta (or its workdir's
        ``config.json``) records it; ``None`` for a run that started from its own initialization (or from
        parameters given as arrays)."""
        if meta_lib.INIT_FROM in self.meta:
            return self.meta[meta_lib.INIT_FROM]
        return None if self.workdir is None else config_init_from(self.workdir)

    @property
    def val_ppl(self) -> float | None:
        """The validation perplexity at this checkpoint, this run's (``meta["val_ppl"]`` is the mean of the
        runs trained together); ``None`` where none was saved (mid-epoch, or an older meta of runs)."""
        if self.run is not None and "run_val_ppls" not in self.meta:
            return None
        return val_ppl(self.meta, self.run)

    @property
    def model(self):
        return make_model(self.config, len(self.vocab))

    def predict(self, prefix: str, num_preds: int, **sampling) -> str:
        """``prefix``, cleaned as the run's text was (``prompt``), and ``num_preds`` tokens after it: greedy,
        or sampled given ``temperature``, ``top_k`` or ``key`` (``generate.predict_batch``); its matmuls at
        the run's ``matmul_precision``, as it trained and scores."""
        return at_precision(predict, self.config.matmul_precision)(
            self.model, self.params, self.vocab, prefix, num_preds, clean=self.prompt, **sampling)

    def predict_batch(self, prefixes: list[str], num_preds: int, **sampling) -> list[str]:
        return at_precision(predict_batch, self.config.matmul_precision)(
            self.model, self.params, self.vocab, prefixes, num_preds, clean=self.prompt, **sampling)

    def prompt(self, text: str) -> str:
        """``text`` cleaned as the run's was (its config's ``preprocess``), as ``predict`` and ``losses`` read
        it: with d2l's, ``'The Time!'`` is ``'the time '``. Other than a str, as it is."""
        return cleaned(text, self.config.preprocess) if isinstance(text, str) else text

    def perplexity(self, data: WindowedText) -> float:
        """The model's perplexity on ``data``'s validation windows, as a run validates (``data`` in its
        tokens: ``rnnjax.corpus.load(config, text=..., vocab=run.vocab)`` for another text, whose tokens
        the run never saw read as ``<unk>``, which may score well: count them in ``data.tokens``)."""
        return score.perplexity(self.config, self.vocab, self.params, data)

    def losses(self, text: str) -> tuple[list[str], np.ndarray]:
        """``(tokens, nll)``: ``text`` cleaned and split as the run's text was (its config's ``preprocess``
        and ``token``), and each token's negative log-likelihood in nats given every token before it:
        ``nll[i]`` is ``tokens[i + 1]``'s. The model reads the whole text from its start, no window cut;
        ``exp(nll.mean())`` is its perplexity. A token outside the run's vocabulary (``t not in
        run.vocab.token_to_idx``: never seen, or seen fewer than ``min_freq`` times) is read and scored as
        ``<unk>``, one class for them all: a text with many scores better than its tokens would."""
        return score.losses(self.config, self.vocab, self.params, text)
