"""Local SGD's gradient drift, split into ReLU flips and fixed-pattern (kernel) dynamics.

Deng, Kamani, Mahdavi (AISTATS 2022) prove Local SGD converges on ReLU networks although
they are not gradient-Lipschitz: their key lemma bounds the drift g_k(W_k) - g_k(W_bar)
of client k's full local gradient g_k = grad F_k between its local model W_k and the
averaged model W_bar. Two things move that gradient: the residuals change smoothly with W
(what a linearised, kernel model also does), and ReLU gates switch (the non-smoothness).
With g_k(W; D) the gradient of the network whose ReLUs are replaced by fixed 0/1 gates D
(``MLP.forward_masked``) and D(W) the gates of W on client k's inputs, g_k(W; D(W)) = g_k(W)
and::

    g_k(W_k) - g_k(W_bar) = [g_k(W_k; D(W_k)) - g_k(W_k; D(W_bar))]      flip part
                          + [g_k(W_k; D(W_bar)) - g_k(W_bar; D(W_bar))]  kernel part

The kernel part holds W_bar's patterns fixed (a network that is smooth in W, and linear in
W for the two-layer net with a fixed output layer); the flip part is zero when no gate on
client k's data changed. ``flip_share = ||flip|| / (||flip|| + ||kernel||)`` is in [0, 1]:
0 with no flips, 1 when the drift is all flips. No flwr imports.
"""

from __future__ import annotations

import torch

from tasks.base import Split
from tasks.diagnostics import _norm, activation_pattern, flip_fraction


def _gradient(model: torch.nn.Module, data: Split, loss_fn, masks) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(data.x) if masks is None else model.forward_masked(data.x, masks)
    return [g.detach() for g in torch.autograd.grad(loss_fn(out, data.y), params)]


def drift_decomposition(local: torch.nn.Module, average: torch.nn.Module, data: Split,
                        loss_fn) -> dict[str, float]:
    """The drift of ``local`` (W_k) from ``average`` (W_bar, same architecture) on ``data``
    (client k's whole partition, one batch), split as in the module docstring. Returns,
    relative to ||g_k(W_bar)||: ``drift`` (the whole), ``drift_flip``, ``drift_kernel``; and
    ``flip_share`` and ``pattern_flips`` (fraction of (example, unit) gates that differ)."""
    if not hasattr(local, "forward_masked"):
        raise ValueError(f"{type(local).__name__} has no forward_masked(x, masks); the drift "
                         "decomposition needs the MLP.")
    gates_bar = activation_pattern(average, data.x)
    gates_k = activation_pattern(local, data.x)
    g_bar = _gradient(average, data, loss_fn, None)
    g_k = _gradient(local, data, loss_fn, None)
    g_k_fixed = _gradient(local, data, loss_fn, gates_bar)  # W_k under W_bar's gates
    flip = [a - b for a, b in zip(g_k, g_k_fixed, strict=True)]
    kernel = [a - b for a, b in zip(g_k_fixed, g_bar, strict=True)]
    total = [a - b for a, b in zip(g_k, g_bar, strict=True)]
    base, d, f, k = _norm(g_bar), _norm(total), _norm(flip), _norm(kernel)
    scale = 1.0 / base if base > 0 else float("inf")
    return {
        "drift": d * scale if d > 0 else 0.0,
        "drift_flip": f * scale if f > 0 else 0.0,
        "drift_kernel": k * scale if k > 0 else 0.0,
        "flip_share": f / (f + k) if f + k > 0 else 0.0,
        "pattern_flips": flip_fraction(gates_bar, gates_k),
    }
