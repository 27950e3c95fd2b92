"""Broken variants of the algorithms, for checking that a claim check can fail.

A claim check (``experiments.claims``) that still passes when the algorithm's essential
step is removed proves nothing. Each mutant here breaks one step of a registered
algorithm and runs through the same engine (``engine.run(..., algorithm=, aggregator=)``):

- ``no_averaging``: the server keeps the first sampled client's model (or gradient)
  instead of combining the replies: the communication step removed.
- ``stale_model``: the server hands out the combination of the previous round's replies,
  one round late (an off-by-one buffer).
- ``no_clipping``: CELGC's and naive clipping's step without the clip (plain SGD at the
  same eta).
- ``identity_mixing``: Gossip-PGA's gossip step is a no-op (W = I); only the periodic
  global average remains, which makes it Local SGD.
- ``no_global_average``: Gossip-PGA never averages globally, which makes it Gossip SGD.

``apply(name, algorithm_class)`` returns what ``engine.run`` takes: an algorithm factory
``(cfg, num_nodes) -> Algorithm`` and an aggregator (None: the configured one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from strategies.aggregators import AggregateResult
from strategies.schedule import AveragingSchedule


@dataclass(frozen=True)
class Mutant:
    name: str
    breaks: str  # what is removed, in words (the table's footnote)
    applies: Callable[[type], bool]
    make: Callable[[type], tuple[Callable, Callable | None]]


def first_reply(updates, weights, keys=None) -> AggregateResult:
    """An 'aggregator' that keeps the first row: one client decides the model."""
    return AggregateResult(np.array(updates[0], dtype=np.float64, copy=True))


def _no_averaging(cls):
    return cls, first_reply


def _stale_model(cls):
    class Stale(cls):
        """Hands out the previous round's new model; the first round keeps x."""

        def server_update(self, x, aggregate, settings, specs):
            new, info = super().server_update(x, aggregate, settings, specs)
            stale = getattr(self, "_previous", x)
            self._previous = new
            return stale, info

    Stale.__name__ = f"Stale{cls.__name__}"
    return Stale, None


def _no_clipping(cls):
    class Unclipped(cls):
        @classmethod
        def adjust(cls_, settings, cfg):
            return super().adjust(settings, cfg).with_(clip_gamma=None)

    Unclipped.__name__ = f"Unclipped{cls.__name__}"
    return Unclipped, None


def _identity_mixing(cls):
    def make(cfg, num_nodes):
        return cls(cfg, num_nodes, mixing=lambda step: np.eye(num_nodes))

    return make, None


def _no_global_average(cls):
    class NeverGlobal(cls):
        def __init__(self, cfg, num_nodes=None, **kwargs):
            super().__init__(cfg, num_nodes, **kwargs)
            self.schedule = AveragingSchedule("never", cfg.strategy.period)

    NeverGlobal.__name__ = f"NeverGlobal{cls.__name__}"
    return NeverGlobal, None


def _centred(cls) -> bool:
    return not cls.decentralized


def _clipped(cls) -> bool:
    return cls.name in ("clipped_fedavg", "naive_clipping")


def _decentralized(cls) -> bool:
    return bool(cls.decentralized)


MUTANTS: dict[str, Mutant] = {m.name: m for m in (
    Mutant("no_averaging", "the server keeps the first client's reply", _centred, _no_averaging),
    Mutant("stale_model", "the server hands out the previous round's average", _centred, _stale_model),
    Mutant("no_clipping", "the local step is not clipped", _clipped, _no_clipping),
    Mutant("identity_mixing", "gossip with W = I (no mixing)", _decentralized, _identity_mixing),
    Mutant("no_global_average", "Gossip-PGA never averages globally", _decentralized,
           _no_global_average),
)}


def apply(name: str, cls: type) -> tuple[Callable, Callable | None]:
    """The broken ``cls`` as (algorithm factory, aggregator or None) for ``engine.run``."""
    if name not in MUTANTS:
        raise ValueError(f"Unknown mutant {name!r}; choose one of {sorted(MUTANTS)}.")
    mutant = MUTANTS[name]
    if not mutant.applies(cls):
        raise ValueError(f"Mutant {name!r} does not apply to {cls.name!r}.")
    return mutant.make(cls)
