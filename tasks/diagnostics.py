"""Diagnostics of the lazy / NTK regime and of Local SGD's gradient drift. No flwr imports.

The quantities the analysis of Local SGD on over-parameterized ReLU networks turns on
(Deng, Kamani, Mahdavi, AISTATS 2022; after Du et al. 2019 and Allen-Zhu, Li, Song 2019),
plus the numerical rank of the weights (the low-rank bias of SGD with weight decay)::

    weight change    ||W_T - W_0||_F / ||W_0||_F               (all parameters, and per matrix)
    activation flips mean_{x in P, unit j} 1[sign h_j(x; W_T) != sign h_j(x; W_0)]
                     over the pre-activations h of every hidden layer on a fixed probe set P
    gradient drift   max_t ||grad F_k(W_k^t) - grad F_k(W_bar)|| / ||grad F_k(W_bar)||
                     F_k = client k's whole local objective, W_k^0 = W_bar, t < tau
    numerical rank   #{ i : sigma_i(W) > eps * sigma_max(W) },  eps = 1e-3

``Tracker`` keeps the initial model and the probe set's initial activation pattern and
measures the server-side quantities of a later model; the training loop
(``client.train.local_train``) measures the drift with ``full_gradient`` and ``drift``.
"""

from __future__ import annotations

import torch

from tasks.base import Split

RANK_EPS = 1e-3


def _norm(tensors) -> float:
    return float(torch.linalg.vector_norm(torch.stack([t.detach().double().norm() for t in tensors])))


def weight_matrices(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the weight matrices (parameters with >= 2 dims), in model order."""
    return [name for name, value in state.items() if value.ndim >= 2 and value.is_floating_point()]


def relative_change(current: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> float:
    """``||W - W_0|| / ||W_0||`` over every floating tensor of the state (one flat vector);
    0 when ``W_0`` is all zeros and unchanged, ``inf`` when it is zero and changed."""
    names = [n for n, v in initial.items() if v.is_floating_point()]
    moved = _norm([current[n].cpu() - initial[n].cpu() for n in names])
    base = _norm([initial[n] for n in names])
    if base == 0.0:
        return 0.0 if moved == 0.0 else float("inf")
    return moved / base


def numerical_rank(matrix: torch.Tensor, eps: float = RANK_EPS) -> int:
    """Singular values above ``eps * sigma_max`` (conv kernels are flattened to
    ``out x rest``); 0 for an all-zero matrix."""
    if matrix.ndim < 2:
        raise ValueError(f"numerical_rank needs a matrix, got shape {tuple(matrix.shape)}.")
    sigma = torch.linalg.svdvals(matrix.detach().double().reshape(matrix.shape[0], -1).cpu())
    top = float(sigma.max()) if sigma.numel() else 0.0
    return int((sigma > eps * top).sum()) if top > 0 else 0


@torch.no_grad()
def activation_pattern(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """``pre-activation > 0`` of every hidden layer on ``x`` (models with ``hidden(x)``,
    i.e. the MLP)."""
    if not hasattr(model, "hidden"):
        raise ValueError(f"{type(model).__name__} has no hidden(x); activation flips need the MLP.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pattern = [h > 0 for h in model.hidden(x.to(device))]
    model.train(was_training)
    return pattern


def flip_fraction(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """Fraction of (example, hidden unit) pairs, over all hidden layers, whose ReLU is on
    in one pattern and off in the other."""
    if len(before) != len(after) or any(a.shape != b.shape for a, b in zip(before, after, strict=True)):
        raise ValueError("Activation patterns of different shapes cannot be compared.")
    flips = sum(int((a != b).sum()) for a, b in zip(before, after, strict=True))
    total = sum(a.numel() for a in before)
    return flips / total if total else 0.0


def full_gradient(model: torch.nn.Module, data: Split, loss_fn, chunk: int = 4096) -> list[torch.Tensor]:
    """The gradient of the mean loss over all of ``data`` (the client's whole objective
    F_k), in chunks of ``chunk`` examples, for the parameters that require grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    total = [torch.zeros_like(p) for p in params]
    n = len(data)
    for start in range(0, n, chunk):
        x = data.x[start : start + chunk].to(device)
        y = data.y[start : start + chunk].to(device)
        loss = loss_fn(model(x), y) * (len(x) / n)
        torch._foreach_add_(total, torch.autograd.grad(loss, params))
    return total


def drift(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """``||g - g_ref|| / ||g_ref||`` (0 if both are zero, inf if only ``g_ref`` is)."""
    moved = _norm([g - r for g, r in zip(grads, reference, strict=True)])
    base = _norm(reference)
    if base == 0.0:
        return 0.0 if moved == 0.0 else float("inf")
    return moved / base


class Tracker:
    """Server-side diagnostics of a model against its initial state, per round.

    ``measure(model)`` returns ``weight_change`` (all parameters), ``weight_change_l{i}``
    and ``rank_l{i}`` for the i-th weight matrix in model order (l0 = first layer, the
    last one is the output layer) and, for models with ``hidden(x)``, ``activation_flips``
    on the probe inputs (their pattern under the initial model is computed once here)."""

    def __init__(self, model: torch.nn.Module, probe: torch.Tensor | None = None):
        self.initial = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
        self.matrices = weight_matrices(self.initial)
        self.probe = probe if probe is not None and hasattr(model, "hidden") else None
        self.pattern = None if self.probe is None else activation_pattern(model, self.probe)

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        out = {"weight_change": relative_change(state, self.initial)}
        for i, name in enumerate(self.matrices):
            out[f"weight_change_l{i}"] = relative_change({name: state[name]}, {name: self.initial[name]})
            out[f"rank_l{i}"] = numerical_rank(state[name])
        if self.pattern is not None:
            out["activation_flips"] = flip_fraction(self.pattern, activation_pattern(model, self.probe))
        return out
