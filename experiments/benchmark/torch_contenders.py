"""PyTorch's contenders, on CUDA when torch sees a GPU and on the CPU otherwise (optional: torch may be
absent).

- ``torch d2l``: d2l's PyTorch tab as it runs: a ``DataLoader`` of CPU tensors, each batch moved to the
  device, the perplexity read back every step (a sync), d2l's ``clip_gradients``, SGD.
- ``torch lean``: the same model and optimizer as a PyTorch user tunes it: the data on the device,
  batches gathered there, ``clip_grad_norm_`` (no host sync), one sync at the end of the steps.
"""

from __future__ import annotations

import time

import numpy as np

from experiments.benchmark.contenders import Contender, Setting, cycle
from rnnjax.data import TimeMachine


def torch_problem() -> str | None:
    """Why torch cannot be imported (``ImportError: No module named 'torch'``), or ``None`` where it can.
    Any exception, not only ``ImportError``: a broken install (CUDA libraries that do not load) is reported,
    and the JAX contenders still run."""
    try:
        import torch  # noqa: F401
    except Exception as e:
        return one_line(e)
    return None


def torch_available() -> bool:
    return torch_problem() is None


def one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def torch_device() -> str:
    """``cuda`` where torch sees a GPU, else ``cpu``."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_device_name() -> str | None:
    """The GPU's name torch reports (``NVIDIA H200``), ``cpu`` without one, ``None`` without torch, and
    ``error: ...`` where asking fails (a broken CUDA)."""
    if not torch_available():
        return None
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as e:
        return f"error: {one_line(e)}"


def torch_threads() -> int | None:
    """The threads torch's CPU ops take (``torch.get_num_threads``), ``None`` without torch."""
    if not torch_available():
        return None
    import torch
    return torch.get_num_threads()


def torch_precision() -> dict:
    """torch's TF32 switches (matmuls, cuDNN), or why they could not be read; ``{}`` without torch."""
    if not torch_available():
        return {}
    try:
        import torch
        return {"torch_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                "torch_tf32_cudnn": torch.backends.cudnn.allow_tf32}
    except Exception as e:
        return {"torch_error": one_line(e)}


class _Torch(Contender):
    """d2l's model: ``nn.RNN`` (``nn.GRU``, ``nn.LSTM``, ``num_layers``) over one-hot inputs + ``Linear``."""

    def prepare(self, s: Setting, data: TimeMachine) -> float:
        import torch
        self.s, self.data, self.torch, self.device = s, data, torch, torch_device()
        torch.manual_seed(0)
        self.X = torch.tensor(np.asarray(data.X)).long()
        self.Y = torch.tensor(np.asarray(data.Y)).long()
        self._prepare_data()
        self.model = self._build()
        self.batches = cycle(self._train_batches)
        t0 = time.perf_counter()
        self._step(self.model, *next(self.batches))
        self._sync()
        return time.perf_counter() - t0

    def _build(self):
        from torch import nn
        layer = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[self.s.cell]
        V = len(self.data.vocab)
        rnn = layer(V, self.s.num_hiddens, num_layers=self.s.num_layers).to(self.device)
        linear = nn.Linear(self.s.num_hiddens, V).to(self.device)
        params = [*rnn.parameters(), *linear.parameters()]
        return rnn, linear, params, self.torch.optim.SGD(params, lr=self.s.config.lr)

    def _forward(self, model, X):
        from torch.nn import functional as F
        outputs, _ = model[0](F.one_hot(X.T, len(self.data.vocab)).type(self.torch.float32))
        return model[1](outputs).swapaxes(0, 1)

    def _loss(self, model, X, Y, reduction="mean"):
        from torch.nn import functional as F
        V = len(self.data.vocab)
        return F.cross_entropy(self._forward(model, X).reshape(-1, V), Y.reshape(-1), reduction=reduction)

    def _sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def steps(self, n):
        for _ in range(n):
            self._step(self.model, *next(self.batches))
        self._sync()

    def step_memory_mb(self):
        """The CUDA allocator's peak over a step beyond what it held before, the last step's gradients freed
        (activations, gradients, cuDNN's workspace); ``None`` on a CPU, where torch keeps no such count."""
        if self.device != "cuda":
            return None
        self.model[3].zero_grad(set_to_none=True)
        cuda = self.torch.cuda
        cuda.synchronize()
        cuda.reset_peak_memory_stats()
        before = cuda.memory_allocated()
        self.steps(1)
        return (cuda.max_memory_allocated() - before) / 2**20

    def recipe(self):
        torch = self.torch
        model = self._build()
        for epoch in range(self.s.epochs):
            for X, Y in self._train_batches(epoch):
                self._step(model, X, Y)
            with torch.no_grad():
                total, count = 0.0, 0
                for X, Y in self._val_batches():
                    total += float(self._loss(model, X, Y, reduction="sum"))
                    count += Y.numel()
        return float(np.exp(total / count))


class TorchD2l(_Torch):
    """d2l's PyTorch tab, its training loop as d2l's ``Trainer`` runs it."""
    name = "torch d2l"

    def _prepare_data(self):
        torch, n, B = self.torch, self.data.num_train, self.s.batch_size
        self.train_loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(self.X[:n], self.Y[:n]), B, shuffle=True)
        self.val_loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(self.X[n:], self.Y[n:]), B, shuffle=False)

    def _train_batches(self, epoch):
        return ((X.to(self.device), Y.to(self.device)) for X, Y in self.train_loader)

    def _val_batches(self):
        return ((X.to(self.device), Y.to(self.device)) for X, Y in self.val_loader)

    def _step(self, model, X, Y):
        torch = self.torch
        _, _, params, optim = model
        loss = self._loss(model, X, Y)
        float(torch.exp(loss.detach()))               # d2l plots the perplexity every step
        optim.zero_grad()
        loss.backward()
        with torch.no_grad():                           # d2l's clip_gradients
            norm = torch.sqrt(sum(torch.sum(p.grad ** 2) for p in params))
            if norm > self.s.config.clip:
                for p in params:
                    p.grad[:] *= self.s.config.clip / norm
        optim.step()


class TorchLean(_Torch):
    """The same model and SGD, the data on the device and nothing read back until the steps end."""
    name = "torch lean"

    def _prepare_data(self):
        n = self.data.num_train
        self.X, self.Y = self.X.to(self.device), self.Y.to(self.device)
        self.generator = self.torch.Generator(device=self.device).manual_seed(0)
        self.train_idx = self.torch.arange(n, device=self.device)
        self.val_idx = self.torch.arange(n, n + self.data.num_val, device=self.device)

    def _batches(self, idx):
        for i in range(0, len(idx), self.s.batch_size):
            j = idx[i:i + self.s.batch_size]
            yield self.X[j], self.Y[j]

    def _train_batches(self, epoch):
        perm = self.torch.randperm(len(self.train_idx), device=self.device, generator=self.generator)
        return self._batches(self.train_idx[perm])

    def _val_batches(self):
        return self._batches(self.val_idx)

    def _step(self, model, X, Y):
        _, _, params, optim = model
        loss = self._loss(model, X, Y)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(params, self.s.config.clip)   # on the device: no sync
        optim.step()
