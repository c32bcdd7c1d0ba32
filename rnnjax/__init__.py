"""rnnjax: d2l's concise RNN language model in JAX and Flax."""

from rnnjax import backend, checkpoint, interop, runs
from rnnjax.config import PRESETS, Config
from rnnjax.corpus import Corpus
from rnnjax.data import Batch, TimeMachine, Windows
from rnnjax.generate import predict, predict_batch
from rnnjax.model import CELLS, RNN, RNNLM, OneHot, SimpleRNNCell
from rnnjax.optimizers import OPTIMIZERS
from rnnjax.runs import fit_runs
from rnnjax.state import TrainState, create_run_states, create_train_state, make_model
from rnnjax.start import plan
from rnnjax.train import eval_step, eval_steps, fit, train_step, train_steps, train_windows
from rnnjax.vocab import Vocab

__version__ = "0.1.0"

__all__ = [
    "Batch", "CELLS", "Config", "Corpus", "OPTIMIZERS", "OneHot", "PRESETS", "RNN", "RNNLM", "SimpleRNNCell",
    "TimeMachine", "TrainState", "Vocab", "Windows", "backend", "checkpoint", "create_run_states",
    "create_train_state", "eval_step", "eval_steps", "fit", "fit_runs", "interop", "make_model", "plan",
    "predict", "predict_batch", "runs", "train_step", "train_steps", "train_windows",
]
