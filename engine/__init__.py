"""The one-process engine: every client of a federation in one Python process, no Flower.

The second driver over ``algorithms`` (the first is the Flower strategies in
``strategies``), for sweeps, experiments and benchmarks. Everything that decides a number
is the same function the Flower side calls: the client half (``client_update``, the one
training loop), this round's ``round_settings``, the aggregation rule, the server half
(``server_step``; Gossip-PGA's ``mix``), the reply metrics and their weighting. The tests
that hold the hosted strategies equal to this engine are the contract between the two.

Round r of a server-centred algorithm: every sampled client i starts from the global
model, runs the client half on its partition (``tasks.client_split``) with batch seed
``round_seed(run.seed, i, r)`` (momentum kept per client when configured); simulated
attackers (``attack.*``, the lowest client indices) send what ``client.attacks`` makes of
their result; a row that is not finite in float32 is left out, as the strategy rejects
it; the server step combines the rest with the strategy's weights. One difference, on
purpose: where fewer sound replies remain than ``strategy.min_replies`` asks, the Flower
strategy stops the run, and the engine goes on (a round without any keeps the model), so
that a sweep records how far a broken rule gets. A decentralized
algorithm keeps every node's model (the rows of X) and mixes them instead.

Records, one per round, carry the same metrics as the ServerApp's (``metrics.jsonl``,
named in ``results.metrics``); ``evaluate_every > 0`` adds the test metrics every that many rounds
and at the end; ``run.diagnostics`` adds ``tasks.diagnostics.Tracker``'s measures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

import algorithms
import tasks
from algorithms.base import reply_metrics, sampled_clients, server_step
from algorithms.settings import round_settings
from client import protocol as P
from client.attacks import attacked, num_attackers
from client.train import round_seed
from results import metrics as M
from strategies import build_aggregator
from strategies.replies import ArraySpec, Reply, flat, weighted_metrics
from tasks.diagnostics import Tracker


@dataclass
class Run:
    """What the engine produced: one record per round, the final global model (for a
    decentralized algorithm: the average of the node models), and the node models."""

    records: list[dict] = field(default_factory=list)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    X: np.ndarray | None = None  # (n, d) node models, float32 (decentralized only)


def vector(model: torch.nn.Module) -> np.ndarray:
    """The model's whole state as one float32 vector, in state_dict order."""
    return np.concatenate([t.detach().cpu().float().numpy().ravel() for t in model.state_dict().values()])


def load_vector(model: torch.nn.Module, values: np.ndarray) -> None:
    """The inverse of ``vector``."""
    state, start = {}, 0
    for name, tensor in model.state_dict().items():
        size = tensor.numel()
        state[name] = torch.from_numpy(values[start : start + size].reshape(tensor.shape).copy())
        start += size
    model.load_state_dict(state)  # copies onto the model's device


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


def _floats(metrics: dict) -> dict:
    return {key: float(value) for key, value in metrics.items()}


def run(cfg, num_clients: int, rounds: int | None = None, evaluate_every: int = 0,
        on_round=None, algorithm=None, aggregator=None, on_client=None) -> Run:
    """``rounds`` (default ``run.rounds``) rounds of ``strategy.name`` on ``num_clients``
    clients. ``on_round(record)`` is called after each round; returning True stops the run
    (e.g. a diverged one). ``algorithm`` (``(cfg, num_nodes) -> Algorithm``, e.g. a class)
    and ``aggregator`` replace the registered algorithm and ``strategy.aggregator``: an
    experiment's variant of an algorithm (``experiments.claims``' mutants) runs through
    the same driver.

    ``on_client(round, client, model, start)`` (server-centred algorithms only) is called
    right after each sampled client's ``client_update``, before any attack: ``model`` is
    the engine's model as the client half left it (the client's trained model W_k, its
    reply, in place; an algorithm that sends gradients leaves it at W_bar), and ``start``
    the round's starting global model W_bar as ``{name: tensor}`` over the trainable
    parameters. Both are the engine's own: the hook reads them and must not change them
    (the next client is reset from ``start``)."""
    make = algorithm or algorithms.get(cfg.strategy.name)
    algorithm = make(cfg, num_nodes=num_clients)
    rounds = cfg.run.rounds if rounds is None else rounds
    aggregator = aggregator or build_aggregator(cfg)
    if algorithm.decentralized:
        if on_client is not None:
            raise ValueError(f"on_client needs a server-centred algorithm; {algorithm.name!r} "
                             "keeps one model per node.")
        return _decentralized(cfg, algorithm, aggregator, num_clients, rounds, evaluate_every, on_round)
    return _centralized(cfg, algorithm, aggregator, num_clients, rounds, evaluate_every, on_round,
                        on_client)


def _evaluate(cfg, model, data, loss_fn) -> dict[str, float]:
    test = tasks.evaluate(model, data.test, loss_fn, data.kind, cfg.eval.batch_size)
    return {M.TEST_PREFIX + k: v for k, v in test.items()}


def _centralized(cfg, algorithm, aggregator, num_clients, rounds, evaluate_every, on_round,
                 on_client=None) -> Run:
    a = cfg.attack
    data, loss_fn, splits, model = tasks.federation(cfg, num_clients)
    model = model.to(tasks.pick_device(cfg.train.device))
    params = [p for p in model.parameters() if p.requires_grad]
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    specs = [ArraySpec(n, tuple(p.shape), np.dtype(np.float32)) for n, p in zip(names, params, strict=True)]
    attackers = num_attackers(a.fraction, num_clients) if a.kind != "none" else 0
    weights = client_weights(cfg, splits, attackers)
    momentum: list[list[torch.Tensor] | None] = [None] * num_clients
    tracker = Tracker(model, data.train.x[: cfg.run.probe_examples]) if cfg.run.diagnostics else None
    out = Run()
    for r, clients in enumerate(sampled_clients(cfg, num_clients, rounds), start=1):
        started = time.perf_counter()
        settings = round_settings(cfg, r, algorithm)
        start = [p.detach().clone() for p in params]
        state = dict(zip(names, start, strict=True))  # W_bar, what every client starts from
        origin = None if settings.gradient else state
        rows, replies = [], []
        for i in clients:
            seed = round_seed(cfg.run.seed, i, r)
            with torch.no_grad():
                for p, x in zip(params, start, strict=True):
                    p.copy_(x)
            update = algorithm.client_update(model, splits[i], loss_fn, settings, seed=seed,
                                             momentum=momentum[i])
            momentum[i] = update.result.momentum
            if on_client is not None:
                on_client(r, i, model, state)
            sent = {n: update.arrays[n] for n in names}
            if i < attackers:
                sent = attacked(a.kind, origin, sent, scale=a.scale, std=a.std, seed=seed)
            metrics = reply_metrics(update.result, settings)
            if i < attackers and a.kind == "weight_inflation":  # as the ClientApp's attacker claims
                metrics[P.NUM_EXAMPLES] = a.claimed_examples
            rows.append(flat({n: v.detach().cpu().numpy() for n, v in sent.items()}))
            replies.append(Reply({}, metrics))
        x = flat({n: v.cpu().numpy() for n, v in state.items()})
        kept = [k for k, row in enumerate(rows) if np.isfinite(row.astype(np.float32)).all()]
        record = {M.ROUND: r, M.TRAIN_LOSS: float("nan"), M.NUM_REPLIES: 0, M.AGGREGATE_REJECTED: 1}
        new = state  # the model holds the last client's W_k: a round without a new model keeps W_bar
        if kept:  # where the Flower strategy would stop (strategy.min_replies), a sweep goes on
            w = weights[[clients[k] for k in kept]]
            step = server_step(algorithm, aggregator, x, np.stack([rows[k] for k in kept]), w,
                               [clients[k] for k in kept], settings, specs)
            record.update({M.NUM_REPLIES: len(kept),
                           **_floats(weighted_metrics([replies[k] for k in kept], list(w), P.MAX_METRICS)),
                           **_floats(step.metrics)})
            if step.arrays is not None:  # a model that is not finite is not taken
                new = step.arrays
        with torch.no_grad():
            for p, name in zip(params, names, strict=True):
                p.copy_(torch.as_tensor(new[name]))
        record[M.SECONDS] = time.perf_counter() - started
        if tracker is not None:
            record.update(tracker.measure(model))
            record[M.GLOBAL_TRAIN_LOSS] = tasks.evaluate(model, data.train, loss_fn, data.kind,
                                                         cfg.eval.batch_size)["loss"]
        if evaluate_every and (r % evaluate_every == 0 or r == rounds):
            record.update(_evaluate(cfg, model, data, loss_fn))
        out.records.append(record)
        if on_round is not None and on_round(record):
            break
    out.state = model.state_dict()
    return out


def _decentralized(cfg, algorithm, aggregator, num_nodes, rounds, evaluate_every, on_round) -> Run:
    a = cfg.attack
    data, loss_fn, splits, model = tasks.federation(cfg, num_nodes)
    model = model.to(tasks.pick_device(cfg.train.device))
    X = np.tile(vector(model), (num_nodes, 1))
    attackers = num_attackers(a.fraction, num_nodes) if a.kind != "none" else 0
    momentum: list[list[torch.Tensor] | None] = [None] * num_nodes
    active = list(range(num_nodes))
    out = Run()
    for k in range(rounds):
        started = time.perf_counter()
        settings = round_settings(cfg, k + 1, algorithm)
        Y = np.empty_like(X)
        losses = []
        for i in active:
            seed = round_seed(cfg.run.seed, i, k + 1)
            load_vector(model, X[i])
            origin = {n: t.clone() for n, t in model.state_dict().items()}
            update = algorithm.client_update(model, splits[i], loss_fn, settings, seed=seed,
                                             momentum=momentum[i])
            momentum[i] = update.result.momentum
            losses.append(update.result.loss)
            sent = update.arrays
            if i < attackers:
                sent = attacked(a.kind, origin, sent, scale=a.scale, std=a.std, seed=seed)
            Y[i] = np.concatenate([v.detach().cpu().float().numpy().ravel() for v in sent.values()])
        if not np.isfinite(Y).all():
            raise ValueError(f"Iteration {k + 1}: a node model is not finite (attack.kind="
                             f"{a.kind!r}); the strategy would drop or stop on that node.")
        X, metrics = algorithm.mix(Y, losses, k, active, aggregator)
        record = {M.ITERATION: k + 1, **_floats(metrics), M.SECONDS: time.perf_counter() - started}
        if evaluate_every and ((k + 1) % evaluate_every == 0 or k + 1 == rounds):
            load_vector(model, X.mean(axis=0, dtype=np.float64).astype(np.float32))
            record.update(_evaluate(cfg, model, data, loss_fn))
            record[M.XBAR_TRAIN_LOSS] = tasks.evaluate(model, data.train, loss_fn, data.kind,
                                                       cfg.eval.batch_size)["loss"]
        out.records.append(record)
        if on_round is not None and on_round(record):
            break
    load_vector(model, X.mean(axis=0, dtype=np.float64).astype(np.float32))
    out.state, out.X = model.state_dict(), X
    return out
