"""FedAvg, clipped FedAvg (CELGC) and naive parallel clipping in one process, without
Flower: an oracle for the hosted strategies and the engine for the CELGC sweep.

Every round each of the N clients runs the same ``client.train.local_train`` the ClientApp
runs (same partition, same batch seed ``round_seed(run.seed, i, round)``, momentum kept
per client when configured) from the global model; the server combines the updates with
the same aggregation rule and weights as the strategy (``strategy.aggregator``,
``strategy.weighting``). ``naive_clipping`` instead combines one mini-batch gradient per
client and takes the clipped step on the server with the same ``clipped_step``.
Simulated attackers (``attack.*``) send what ``client.attacks`` makes of their result, and
a reply that is not finite in float32 is left out, as the strategy rejects it.

Diagnostics, as in the ServerApp's records: ``train.drift_every > 0`` adds
``gradient_drift`` (example-weighted mean over clients of each client's max-over-steps
drift, what Flower's aggregation gives) and ``gradient_drift_max`` (max over clients);
``run.diagnostics`` adds ``tasks.diagnostics.Tracker``'s measures of the global model and
``global_train_loss`` (its loss on the whole training pool) after every round.
"""

from __future__ import annotations

import time

import numpy as np
import torch

import tasks
from client.attacks import attacked, num_attackers
from client.train import clipped_step, local_train, minibatch_gradient, round_seed, steps_for
from strategies import build_aggregator
from strategies.replies import ArraySpec, flat, unflat
from tasks.diagnostics import Tracker


def client_weights(cfg, splits, attackers: int) -> np.ndarray:
    """The server's weights, as the strategy computes them from the replies: 1 each, or
    each client's example count (an attacker's claimed count under ``weight_inflation``)
    capped at ``strategy.max_examples``."""
    s = cfg.strategy
    if s.weighting == "uniform":
        return np.ones(len(splits))
    counts = [cfg.attack.claimed_examples if i < attackers and cfg.attack.kind == "weight_inflation"
              else len(split) for i, split in enumerate(splits)]
    return np.array([min(c, s.max_examples) if s.max_examples > 0 else c for c in counts], float)


def simulate(cfg, num_clients: int, rounds: int | None = None, evaluate_every: int = 0,
             on_round=None) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Run ``rounds`` (default ``run.rounds``) rounds of ``strategy.name`` (fedavg,
    clipped_fedavg or naive_clipping); one record per round. ``evaluate_every > 0`` adds the
    global model's test metrics every that many rounds and at the end; ``on_round(record)``
    is called after each round (e.g. to stop a diverged run early by returning True).
    Returns the records and the final global ``state_dict``."""
    s, t, a = cfg.strategy, cfg.train, cfg.attack
    rounds = cfg.run.rounds if rounds is None else rounds
    data, loss_fn, splits, model = tasks.federation(cfg, num_clients)
    params = [p for p in model.parameters() if p.requires_grad]
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    attackers = num_attackers(a.fraction, num_clients) if a.kind != "none" else 0
    weights = client_weights(cfg, splits, attackers)
    aggregator = build_aggregator(cfg)
    clip = s.clip_gamma if s.name in ("clipped_fedavg", "naive_clipping") else None
    client_buffers: list[list[torch.Tensor] | None] = [None] * num_clients
    server_buffers: list[torch.Tensor] = []
    tracker = Tracker(model, data.train.x[: cfg.run.probe_examples]) if cfg.run.diagnostics else None
    records = []
    for r in range(1, rounds + 1):
        start = [p.detach().clone() for p in params]
        losses, norms, clipped, rows, drifts = [], [], [], [], []
        for i in range(num_clients):
            seed = round_seed(cfg.run.seed, i, r)
            with torch.no_grad():
                for p, x in zip(params, start, strict=True):
                    p.copy_(x)
            if s.name == "naive_clipping":
                grads, loss = minibatch_gradient(model, splits[i], loss_fn, batch_size=t.batch_size,
                                                 seed=seed)
                sent, origin = dict(zip(names, grads, strict=True)), None
                losses.append(loss)
            else:
                result = local_train(
                    model, splits[i], loss_fn,
                    steps=steps_for(len(splits[i]), t.batch_size, t.local_steps, t.local_epochs),
                    batch_size=t.batch_size, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                    clip_gamma=clip,
                    momentum_buffers=client_buffers[i] if t.persist_optimizer_state else None,
                    seed=seed, drift_every=t.drift_every,
                )
                client_buffers[i] = result.momentum
                drifts.append(result.drift)
                losses.append(result.loss)
                norms.append(result.grad_norm)
                clipped.append(result.clipped_fraction)
                sent = {n: p.detach().clone() for n, p in zip(names, params, strict=True)}
                origin = dict(zip(names, start, strict=True))
            if i < attackers:
                sent = attacked(a.kind, origin, sent, scale=a.scale, std=a.std, seed=seed)
            rows.append(flat({n: v.numpy() for n, v in sent.items()}))
        x = flat({n: v.numpy() for n, v in zip(names, start, strict=True)})
        specs = [ArraySpec(n, tuple(p.shape), np.dtype(np.float32))
                 for n, p in zip(names, params, strict=True)]
        kept = [k for k, row in enumerate(rows) if np.isfinite(row.astype(np.float32)).all()]
        record = {"round": r, "train_loss": float("nan"), "num_replies": len(kept), "aggregate_rejected": 1}
        if kept:
            Y = np.stack([rows[k] for k in kept]) - (0.0 if s.name == "naive_clipping" else x)
            w = weights[kept]
            started = time.perf_counter()
            aggregate = aggregator(Y, w, keys=kept)
            record["aggregation_seconds"] = time.perf_counter() - started
            record["train_loss"] = float(np.dot(w / w.sum(), [losses[k] for k in kept]))
            record.update({key.replace("-", "_"): float(v) for key, v in aggregate.info.items()})
            with torch.no_grad():
                for p, x0 in zip(params, start, strict=True):
                    p.copy_(x0)
                if s.name == "naive_clipping":
                    g = [torch.from_numpy(v) for v in unflat(aggregate.vector, specs).values()]
                    saved = [b.clone() for b in server_buffers]
                    norm = clipped_step(params, g, server_buffers, t.lr, clip, t.momentum, t.weight_decay)
                    record.update(grad_norm=norm, clip_fraction=float(clip / max(norm, 1e-12) < t.lr))
                else:
                    for p, v in zip(params, unflat(x + aggregate.vector, specs).values(), strict=True):
                        p.copy_(torch.from_numpy(v))
                    record.update(grad_norm=float(np.mean(norms)), clip_fraction=float(np.mean(clipped)))
                    if t.drift_every > 0:
                        record.update(gradient_drift=float(np.dot(weights / weights.sum(), drifts)),
                                      gradient_drift_max=max(drifts))
                if all(torch.isfinite(p).all() for p in params):
                    record["aggregate_rejected"] = 0
                else:  # as the strategy: the round's model is not taken
                    for p, x0 in zip(params, start, strict=True):
                        p.copy_(x0)
                    if s.name == "naive_clipping":
                        server_buffers[:] = saved
        if tracker is not None:
            record.update(tracker.measure(model))
            record["global_train_loss"] = tasks.evaluate(model, data.train, loss_fn, data.kind,
                                                         cfg.eval.batch_size)["loss"]
        if evaluate_every and (r % evaluate_every == 0 or r == rounds):
            test = tasks.evaluate(model, data.test, loss_fn, data.kind, cfg.eval.batch_size)
            record.update({f"test_{k}": v for k, v in test.items()})
        records.append(record)
        if on_round is not None and on_round(record):
            break
    return records, model.state_dict()
