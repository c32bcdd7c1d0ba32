"""rnnjax: d2l's concise RNN language model in JAX and Flax."""

from rnnjax.data import Batch, TimeMachine, Vocab, Windows
from rnnjax.generate import predict, predict_batch
from rnnjax.model import RNN, RNNLM, OneHot, SimpleRNNCell
from rnnjax.train import (Config, TrainState, create_train_state, eval_step, eval_steps, fit, train_step,
                          train_steps, train_windows)

__version__ = "0.1.0"

__all__ = [
    "Batch", "Config", "OneHot", "RNN", "RNNLM", "SimpleRNNCell", "TimeMachine", "TrainState",
    "Vocab", "Windows", "create_train_state", "eval_step", "eval_steps", "fit", "predict", "predict_batch",
    "train_step", "train_steps", "train_windows",
]
