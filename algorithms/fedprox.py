"""FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, MLSys 2020): FedAvg whose clients
minimise, from the global model x^r they received, the proximal local objective::

    h_k(x) = F_k(x) + mu/2 ||x - x^r||^2      grad h_k(x) = grad F_k(x) + mu (x - x^r)

with the same local SGD steps (the proximal gradient is an option of the one training
loop, ``RoundSettings.prox_mu``); the server half is FedAvg's. mu = 0 is FedAvg exactly.
"""

from __future__ import annotations

from algorithms import register
from algorithms.base import Algorithm


@register
class FedProx(Algorithm):
    name = "fedprox"

    @classmethod
    def adjust(cls, settings, cfg):
        return settings.with_(prox_mu=cfg.strategy.proximal_mu)
