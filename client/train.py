"""The one local training loop every strategy runs on a client. No flwr imports.

Each local step t on a client (plain SGD with optional momentum, weight decay and the
local gradient clipping of CELGC, Liu, Zhuang, Lei, Liao, NeurIPS 2022)::

    g     = grad f(x; xi_t)                       # raw mini-batch gradient, all parameters
    g     = g + mu * (x - x_0)     if mu > 0      # FedProx's proximal term (Li et al. 2020)
    d     = g + wd * x                            # weight decay joins the direction
    buf   = m * buf + d ;  d = buf                # momentum m (buf starts at d), if m > 0
    eta_t = min(eta, gamma / ||g||)  if clipping  # ||g||: one global norm of the raw g
            eta                      otherwise
    x     = x - eta_t * d

What the loop does in a round (eta, gamma, mu, steps, ...) is one ``RoundSettings``
(``algorithms.settings.round_settings(cfg, round)``). Clipping with ``gamma`` is the same
as clipping g to norm ``c = gamma / eta`` and then stepping with ``eta`` (when
momentum = wd = 0). With ``drift_every = k > 0`` the loop also
measures Local SGD's gradient drift (Deng, Kamani, Mahdavi, AISTATS 2022)::

    drift = max_{t < steps, k | t} ||grad F(x_t) - grad F(x_0)|| / ||grad F(x_0)||

with F the mean loss over the client's whole data and x_0 the received (global) model.
Mini-batches are drawn without
replacement from a permutation of the client's data, reshuffled every pass, all from one
seeded generator: the same seed gives the same batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from algorithms.settings import RoundSettings
from tasks.base import Split
from tasks.diagnostics import drift, full_gradient


@dataclass
class LocalResult:
    """What one call of ``local_train`` produced (the model is updated in place)."""

    loss: float  # mean mini-batch loss over the steps, each before its update
    steps: int
    examples: int  # size of the client's data (FedAvg's weight)
    seconds: float
    clipped_fraction: float = 0.0  # steps where gamma / ||g|| < eta
    grad_norm: float = 0.0  # mean ||g|| (raw, before clipping) over the steps
    momentum: list[torch.Tensor] = field(default_factory=list)  # buffers after the last step
    # sampled steps: (||g(x_t)||, ||g(x_{t+1}) - g(x_t)|| / ||x_{t+1} - x_t||), same batch
    smoothness: list[tuple[float, float]] = field(default_factory=list)
    drift: float | None = None  # max relative gradient drift (drift_every > 0), else None


def round_seed(*parts: int) -> int:
    """A 63-bit seed derived from (run seed, client, round, ...): independent streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class BatchStream:
    """Endless mini-batch indices: a fresh permutation of ``n`` every pass."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device):
        self.n, self.batch_size = n, min(batch_size, n)
        self.generator = torch.Generator().manual_seed(seed)
        self.device, self.perm, self.pos = device, None, n

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator).to(self.device)
            self.pos = 0
        batch = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return batch


def sgd_step(params, grads, buffers, lr, momentum: float, weight_decay: float) -> None:
    """``x -= lr * d`` with d = g + wd*x and momentum as in the module docstring.
    ``lr`` may be a float or a 0-dim tensor (the clipped step size); ``buffers`` is a list
    that is filled on the first call."""
    directions = list(grads)
    if weight_decay:
        directions = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum:
        if buffers:
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, directions)
        else:
            buffers.extend(torch._foreach_add(directions, 0.0))  # copies
        directions = buffers
    if isinstance(lr, torch.Tensor):
        torch._foreach_add_(params, torch._foreach_mul(directions, -lr))
    else:
        torch._foreach_add_(params, directions, alpha=-lr)


def clipped_step(params, grads, buffers, lr: float, clip_gamma: float, momentum: float,
                 weight_decay: float) -> float:
    """One clipped step x <- x - min(eta, gamma / ||g||) (g + wd x) on ``params`` in place
    (naive parallel clipping's server step, on the aggregated gradient); returns ||g||."""
    norm = global_norm(grads)
    step = torch.minimum(clip_gamma / norm.clamp_min(1e-12), torch.tensor(lr))
    sgd_step(params, grads, buffers, step, momentum, weight_decay)
    return float(norm)


def global_norm(tensors) -> torch.Tensor:
    """One L2 norm over all tensors (as if they were one flat vector)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))


def local_train(
    model: torch.nn.Module,
    data: Split,
    loss_fn,
    settings: RoundSettings,
    *,
    momentum_buffers: list[torch.Tensor] | None = None,
    seed: int = 0,
) -> LocalResult:
    """Run this round's local steps (``settings.steps(len(data))``) on ``data`` (a client's
    partition) and update ``model``.

    ``settings.clip_gamma`` switches on CELGC's clipped step; ``settings.prox_mu > 0`` adds
    FedProx's proximal term mu (x - x_0) to every gradient (x_0: the received model);
    ``momentum_buffers`` (from the previous round, on the model's device) continue the
    momentum instead of restarting it; ``smoothness_every = k > 0`` estimates the local
    smoothness ``||g(x_{t+1}) - g(x_t)|| / ||x_{t+1} - x_t||`` on every k-th step (one
    extra forward/backward on the same batch), the premise of relaxed smoothness;
    ``drift_every = k > 0`` measures the gradient drift (module docstring) on every k-th
    step: one full-data gradient per measured step, free when a batch is the whole data.
    """
    if len(data) == 0:
        raise ValueError("This client has no training data; check the partitioning.")
    s = settings
    clip_gamma, drift_every, smoothness_every = s.clip_gamma, s.drift_every, s.smoothness_every
    if clip_gamma is not None and clip_gamma < 0:  # 0 only where a schedule takes eta to 0
        raise ValueError(f"clip_gamma must be >= 0, got {clip_gamma}.")
    if drift_every < 0:
        raise ValueError(f"drift_every must be >= 0, got {drift_every}.")
    if s.prox_mu < 0:
        raise ValueError(f"The proximal mu must be >= 0, got {s.prox_mu}.")
    steps = s.steps(len(data))
    start = time.perf_counter()
    device = next(model.parameters()).device
    data = data.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if s.prox_mu > 0 else None
    buffers = list(momentum_buffers or [])
    if buffers and [b.shape for b in buffers] != [p.shape for p in params]:
        raise ValueError("Saved momentum buffers do not match the model's parameters.")
    stream = BatchStream(len(data), s.batch_size, seed, device)
    loss_sum = torch.zeros((), device=device)
    norm_sum = torch.zeros((), device=device)
    clipped = torch.zeros((), device=device)
    # The step size is a tensor on both paths, so an unclipped step and a clipped step
    # that is not cut (gamma / ||g|| >= eta) do exactly the same arithmetic.
    eta = torch.tensor(s.lr, device=device)
    model.train()
    smoothness = []
    # Full-batch steps already compute grad F (the batch is a permutation of the data).
    full_batch = stream.batch_size == len(data)
    reference = full_gradient(model, data, loss_fn) if drift_every > 0 and not full_batch else None
    worst_drift = 0.0
    for t in range(steps):
        index = stream.next()
        loss = loss_fn(model(data.x[index]), data.y[index])
        grads = torch.autograd.grad(loss, params)
        if drift_every > 0:
            if t == 0 and full_batch:
                reference = [g.detach() for g in grads]
            elif t > 0 and t % drift_every == 0:
                now = grads if full_batch else full_gradient(model, data, loss_fn)
                worst_drift = max(worst_drift, drift(now, reference))
        if anchor is not None:  # FedProx: grad of f + mu/2 ||x - x_0||^2
            with torch.no_grad():
                grads = torch._foreach_add(grads, torch._foreach_sub([p.detach() for p in params], anchor),
                                           alpha=s.prox_mu)
        loss_sum += loss.detach()
        norm = global_norm(grads)
        norm_sum += norm
        step = eta
        if clip_gamma is not None:
            ratio = clip_gamma / norm.clamp_min(1e-12)
            clipped += (ratio < eta).float()
            step = torch.minimum(ratio, eta)
        sample = smoothness_every > 0 and t % smoothness_every == 0
        before = [p.detach().clone() for p in params] if sample else None
        with torch.no_grad():
            sgd_step(params, grads, buffers, step, s.momentum, s.weight_decay)
        if sample:
            after = torch.autograd.grad(loss_fn(model(data.x[index]), data.y[index]), params)
            moved = global_norm(torch._foreach_sub([p.detach() for p in params], before))
            change = global_norm(torch._foreach_sub(list(after), list(grads)))
            if float(moved) > 0:
                smoothness.append((float(norm), float(change / moved)))
    return LocalResult(
        loss=float(loss_sum) / steps,
        steps=steps,
        examples=len(data),
        seconds=time.perf_counter() - start,
        clipped_fraction=float(clipped) / steps,
        grad_norm=float(norm_sum) / steps,
        momentum=buffers,
        smoothness=smoothness,
        drift=worst_drift if drift_every > 0 else None,
    )


def minibatch_gradient(model: torch.nn.Module, data: Split, loss_fn, *, batch_size: int,
                       seed: int) -> tuple[list[torch.Tensor], float]:
    """The gradient of the loss on one mini-batch at the current model, and that loss.
    The batch is the first one ``local_train`` would draw with the same ``seed``."""
    if len(data) == 0:
        raise ValueError("This client has no training data; check the partitioning.")
    device = next(model.parameters()).device
    data = data.to(device)
    index = BatchStream(len(data), batch_size, seed, device).next()
    model.train()
    loss = loss_fn(model(data.x[index]), data.y[index])
    params = [p for p in model.parameters() if p.requires_grad]
    return [g.detach() for g in torch.autograd.grad(loss, params)], float(loss.detach())
