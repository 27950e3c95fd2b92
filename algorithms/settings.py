"""Every per-round setting, decided in one function from the config and the round number.

``round_settings(cfg, r)`` is what a client trains with in server round r (Gossip-PGA:
iteration r) and what the server half of an algorithm uses in that round: both drivers
(the Flower strategies and the one-process engine) and both sides of a deployment call it,
so nothing per-round travels in a message but the round number.

The learning rate of round r (``train.lr_schedule``; eta = ``train.lr``, T = ``run.rounds``)::

    constant        eta_r = eta
    step            eta_r = eta * decay^floor((r - 1) / S)
    cosine          eta_r = eta * (m + (1 - m) (1 + cos(pi (r - 1) / (T - 1))) / 2)
    warmup_cosine   eta_r = eta * r / W  for r <= W, then cosine over rounds W+1..T

(m = ``lr_min_factor``, S = ``lr_step_rounds``, W = ``lr_warmup_rounds``). An algorithm
adjusts the settings in its ``adjust`` hook: CELGC's gamma follows eta
(gamma_r = gamma * eta_r / eta, so the clipping norm gamma / eta stays fixed), FedProx adds
its mu, naive clipping asks for one mini-batch gradient. No flwr, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

SCHEDULES = ("constant", "step", "cosine", "warmup_cosine")


@dataclass(frozen=True)
class RoundSettings:
    """What the training loop (``client.train.local_train``) and the server half need."""

    round: int  # server round (Gossip-PGA: iteration + 1), from 1
    lr: float  # eta_r
    lr_scale: float  # eta_r / train.lr (1.0 exactly under a constant schedule)
    batch_size: int
    local_steps: int
    local_epochs: int  # > 0: passes over the client's data instead of local_steps
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip_gamma: float | None = None  # CELGC's gamma_r; None = no clipping
    prox_mu: float = 0.0  # FedProx's mu; 0 = no proximal term
    gradient: bool = False  # reply one mini-batch gradient instead of training (naive clipping)
    persist_momentum: bool = False  # momentum buffers carry over between rounds
    smoothness_every: int = 0
    drift_every: int = 0

    def steps(self, num_examples: int) -> int:
        """Optimizer steps this round on ``num_examples``: ``local_epochs`` passes if set,
        else ``local_steps``."""
        if self.local_epochs > 0:
            return self.local_epochs * math.ceil(num_examples / min(self.batch_size, num_examples))
        return self.local_steps

    def with_(self, **changes) -> RoundSettings:
        return replace(self, **changes)

    @classmethod
    def fixed(cls, *, lr: float, batch_size: int, steps: int, **others) -> RoundSettings:
        """Settings outside a run (tests, one-off measurements): ``steps`` local steps of
        size ``lr``, round 1; ``others`` are any further fields."""
        return cls(round=1, lr=lr, lr_scale=1.0, batch_size=batch_size, local_steps=steps,
                   local_epochs=0, **others)


def lr_scale(schedule: str, r: int, rounds: int, *, decay: float = 0.5, step_rounds: int = 1,
             min_factor: float = 0.0, warmup_rounds: int = 0) -> float:
    """eta_r / eta for round ``r`` (from 1) of ``rounds`` (module docstring)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"train.lr_schedule must be one of {SCHEDULES}, got {schedule!r}.")
    if r < 1:
        raise ValueError(f"Rounds count from 1, got {r}.")
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return decay ** ((r - 1) // step_rounds)
    warmup = warmup_rounds if schedule == "warmup_cosine" else 0
    if r <= warmup:
        return r / warmup
    span = rounds - warmup - 1  # the cosine runs over rounds warmup+1 .. rounds
    progress = min(1.0, (r - warmup - 1) / span) if span > 0 else 0.0
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def round_settings(cfg, r: int, algorithm=None) -> RoundSettings:
    """The settings of round ``r`` under ``cfg``: the config's training keys, the learning
    rate schedule, then the algorithm's own ``adjust`` (``algorithm``'s, an instance or a
    class, where given; else the one registered as ``strategy.name``)."""
    import algorithms

    t = cfg.train
    scale = lr_scale(t.lr_schedule, r, cfg.run.rounds, decay=t.lr_decay,
                     step_rounds=t.lr_step_rounds, min_factor=t.lr_min_factor,
                     warmup_rounds=t.lr_warmup_rounds)
    base = RoundSettings(
        round=r, lr=t.lr * scale if scale != 1.0 else t.lr, lr_scale=scale,
        batch_size=t.batch_size, local_steps=t.local_steps, local_epochs=t.local_epochs,
        momentum=t.momentum, weight_decay=t.weight_decay,
        persist_momentum=t.persist_optimizer_state, smoothness_every=t.smoothness_every,
        drift_every=t.drift_every,
    )
    return (algorithm or algorithms.get(cfg.strategy.name)).adjust(base, cfg)
