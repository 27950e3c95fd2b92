"""Shared test helpers."""

from __future__ import annotations

from algorithms.settings import RoundSettings
from client.train import local_train


def train_steps(model, data, loss_fn, *, seed: int = 0, momentum_buffers=None, **settings):
    """``local_train`` with fixed settings given as keywords (``RoundSettings.fixed``:
    steps, batch_size, lr, and any other field such as momentum or clip_gamma)."""
    return local_train(model, data, loss_fn, RoundSettings.fixed(**settings), seed=seed,
                       momentum_buffers=momentum_buffers)
