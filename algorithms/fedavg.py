"""FedAvg / Local SGD (McMahan et al. 2017; for over-parameterized ReLU networks, Deng,
Kamani, Mahdavi, AISTATS 2022). Round r: every sampled client k runs the local steps of
the one training loop from the global model x and returns x_k; the server combines the
updates with the configured rule A (``strategies.aggregators``; the weighted mean by
default, weights 1 or the clients' example counts)::

    x <- x + A(x_1 - x, ..., x_K - x; w_1, ..., w_K)       A = mean: x <- sum_k (w_k / w) x_k

Both halves are ``Algorithm``'s defaults.
"""

from __future__ import annotations

from algorithms import register
from algorithms.base import Algorithm


@register
class FedAvg(Algorithm):
    name = "fedavg"
