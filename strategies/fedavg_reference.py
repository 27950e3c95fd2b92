"""FedAvg, clipped FedAvg (CELGC) and naive parallel clipping in one process, without
Flower: an oracle for the hosted strategies and the engine for the CELGC sweep.

Every round each of the N clients runs the same ``client.train.local_train`` the ClientApp
runs (same partition, same batch seed ``round_seed(run.seed, i, round)``, momentum kept
per client when configured) from the global model, and the models are averaged uniformly
or by examples. ``naive_clipping`` instead averages one mini-batch gradient per client and
takes the clipped step on the server with the same ``sgd_step``.

Diagnostics, as in the ServerApp's records: ``train.drift_every > 0`` adds
``gradient_drift`` (example-weighted mean over clients of each client's max-over-steps
drift, what Flower's aggregation gives) and ``gradient_drift_max`` (max over clients);
``run.diagnostics`` adds ``tasks.diagnostics.Tracker``'s measures of the global model and
``global_train_loss`` (its loss on the whole training pool) after every round.
"""

from __future__ import annotations

import numpy as np
import torch

import tasks
from client.train import global_norm, local_train, minibatch_gradient, round_seed, sgd_step, steps_for
from tasks.diagnostics import Tracker


def simulate(cfg, num_clients: int, rounds: int | None = None, evaluate_every: int = 0,
             on_round=None) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Run ``rounds`` (default ``run.rounds``) rounds of ``strategy.name`` (fedavg,
    clipped_fedavg or naive_clipping); one record per round. ``evaluate_every > 0`` adds the
    global model's test metrics every that many rounds and at the end; ``on_round(record)``
    is called after each round (e.g. to stop a diverged run early by returning True).
    Returns the records and the final global ``state_dict``."""
    s, t = cfg.strategy, cfg.train
    rounds = cfg.run.rounds if rounds is None else rounds
    data, loss_fn, splits, model = tasks.federation(cfg, num_clients)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = np.ones(num_clients) if s.weighting == "uniform" else np.array([len(x) for x in splits], float)
    weights = torch.tensor(weights / weights.sum(), dtype=torch.float32)
    clip = s.clip_gamma if s.name in ("clipped_fedavg", "naive_clipping") else None
    client_buffers: list[list[torch.Tensor] | None] = [None] * num_clients
    server_buffers: list[torch.Tensor] = []
    tracker = Tracker(model, data.train.x[: cfg.run.probe_examples]) if cfg.run.diagnostics else None
    records = []
    for r in range(1, rounds + 1):
        start = [p.detach().clone() for p in params]
        losses, norms, clipped, updates, drifts = [], [], [], [], []
        for i in range(num_clients):
            seed = round_seed(cfg.run.seed, i, r)
            with torch.no_grad():
                for p, x in zip(params, start, strict=True):
                    p.copy_(x)
            if s.name == "naive_clipping":
                grads, loss = minibatch_gradient(model, splits[i], loss_fn, batch_size=t.batch_size,
                                                 seed=seed)
                updates.append(grads)
                losses.append(loss)
                continue
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
            updates.append([p.detach().clone() for p in params])
        mean = [sum(w * u[k] for w, u in zip(weights, updates, strict=True)) for k in range(len(params))]
        record = {"round": r, "train_loss": float(np.dot(weights.numpy(), losses))}
        with torch.no_grad():
            if s.name == "naive_clipping":
                for p, x in zip(params, start, strict=True):
                    p.copy_(x)
                norm = global_norm(mean)
                step = torch.minimum(clip / norm.clamp_min(1e-12), torch.tensor(t.lr))
                sgd_step(params, mean, server_buffers, step, t.momentum, t.weight_decay)
                clipped_now = clip / max(float(norm), 1e-12) < t.lr
                record.update(grad_norm=float(norm), clip_fraction=float(clipped_now))
            else:
                for p, x in zip(params, mean, strict=True):
                    p.copy_(x)
                record.update(grad_norm=float(np.mean(norms)), clip_fraction=float(np.mean(clipped)))
                if t.drift_every > 0:
                    record.update(gradient_drift=float(np.dot(weights.numpy(), drifts)),
                                  gradient_drift_max=max(drifts))
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
