"""Simulated attackers: what a hostile client sends instead of its honest result.

For research on robust aggregation and for testing the server's defences. The server is
never told who attacks. An attacker trains like everyone else from the model x it was sent,
reaching x_i, and then sends (update u = x_i - x)::

    sign_flip         x - s u         s = attack.scale
    scale             x + s u
    gaussian          x_i + N(0, std^2)          (BGMD's additive Gaussian attack)
    zero_model        0
    weight_inflation  x_i, claiming attack.claimed_examples examples
    free_rider        x                           (no work, the model echoed)
    nan               x_i with NaN in its first array

In ``naive_clipping`` the reply is a gradient g: the same rules with x = 0 and u = g.
Which clients attack: ``attack.fraction`` of them, those with the lowest partition-ids
(``is_attacker``); in a deployment a SuperNode's node config ``fault=<kind>`` makes it one.
The one-process references call the same functions, so that an attack means the same
everywhere.
"""

from __future__ import annotations

import math

import numpy as np
import torch

KINDS = ("none", "sign_flip", "scale", "gaussian", "zero_model", "weight_inflation",
         "free_rider", "nan")


def num_attackers(fraction: float, num_clients: int) -> int:
    """floor(fraction x clients) (with a margin for float rounding: 0.3 x 10 = 3)."""
    return int(math.floor(fraction * num_clients + 1e-9))


def is_attacker(attack, partition_id: int | None, num_partitions: int | None) -> bool:
    """Whether the client with this partition-id attacks under config section ``attack``."""
    if attack.kind == "none" or partition_id is None or not num_partitions:
        return False
    return partition_id < num_attackers(attack.fraction, num_partitions)


def attacked(kind: str, start: dict[str, torch.Tensor] | None, trained: dict[str, torch.Tensor],
             *, scale: float, std: float, seed: int) -> dict[str, torch.Tensor]:
    """What an attacker of ``kind`` sends, given the model it was sent (``start``; None for
    a gradient, i.e. x = 0) and its honest result ``trained``. ``seed`` fixes the noise."""
    if kind not in KINDS:
        raise ValueError(f"Unknown attack kind {kind!r}; choose one of {', '.join(KINDS)}.")
    start = start if start is not None else {k: torch.zeros_like(v) for k, v in trained.items()}
    if kind in ("none", "weight_inflation"):
        return dict(trained)
    if kind in ("sign_flip", "scale"):
        s = -scale if kind == "sign_flip" else scale
        return {k: start[k] + s * (v - start[k]) for k, v in trained.items()}
    if kind == "gaussian":
        rng = np.random.default_rng([seed, 0x47617573])
        return {k: v + torch.from_numpy(rng.normal(0.0, std, size=tuple(v.shape))).to(v)
                for k, v in trained.items()}
    if kind == "zero_model":
        return {k: torch.zeros_like(v) for k, v in trained.items()}
    if kind == "free_rider":
        return {k: start[k].clone() for k in trained}
    first = next(iter(trained))  # nan
    return {k: torch.full_like(v, float("nan")) if k == first else v for k, v in trained.items()}
