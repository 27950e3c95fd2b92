"""Gossip-PGA in one process, without Flower: the oracle for the hosted strategy and the
engine for fast sweeps.

All n node models are stacked as the rows of X (n, d). Each iteration k every node runs
the same ``client.train.local_train`` the ClientApp runs, on the same partition
(``tasks.client_split``), with the same batch seed ``round_seed(run.seed, i, k + 1)`` and,
when configured, its own momentum carried over; then ``strategies.schedule.mix_step``
applies W_k or the global mean (robust with ``strategy.aggregator``), exactly as
``strategies.gossip.GossipPGA`` does; simulated attackers (``attack.*``, lowest graph
indices) send what ``client.attacks`` makes of their result. Given the same config the two
produce the same node models up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

import tasks
from client.attacks import attacked, num_attackers
from client.train import local_train, round_seed, steps_for
from strategies import build_aggregator
from strategies.schedule import AveragingSchedule, loss_statistic, mix_step, modelled_cost
from strategies.topology import build_topology, consensus_distance


@dataclass
class ReferenceRun:
    X: np.ndarray  # (n, d) final node models, float32
    records: list[dict] = field(default_factory=list)  # one per iteration


def _vector(model: torch.nn.Module) -> np.ndarray:
    return np.concatenate([t.detach().cpu().float().numpy().ravel() for t in model.state_dict().values()])


def _state(model: torch.nn.Module, vector: np.ndarray) -> dict[str, torch.Tensor]:
    state, start = {}, 0
    for name, tensor in model.state_dict().items():
        size = tensor.numel()
        state[name] = torch.from_numpy(vector[start : start + size].reshape(tensor.shape).copy())
        start += size
    return state


def _load(model: torch.nn.Module, vector: np.ndarray) -> None:
    model.load_state_dict(_state(model, vector))


def simulate(cfg, num_nodes: int, iterations: int | None = None, evaluate_every: int = 0) -> ReferenceRun:
    """Run ``iterations`` (default ``run.rounds``) Gossip-PGA iterations of ``cfg``.

    ``evaluate_every > 0`` adds, every that many iterations and at the end, the test
    metrics of the average model and its loss on the whole training pool.
    """
    s, t = cfg.strategy, cfg.train
    iterations = cfg.run.rounds if iterations is None else iterations
    data, loss_fn, splits, model = tasks.federation(cfg, num_nodes)
    x0 = _vector(model)
    X = np.tile(x0, (num_nodes, 1))
    mixing = build_topology(s.topology, num_nodes, seed=cfg.run.seed, p=s.edge_probability)
    schedule = AveragingSchedule(s.averaging, s.period)
    buffers: list[list[torch.Tensor] | None] = [None] * num_nodes
    aggregator = build_aggregator(cfg)
    attack = cfg.attack
    attackers = num_attackers(attack.fraction, num_nodes) if attack.kind != "none" else 0
    run = ReferenceRun(X)
    for k in range(iterations):
        Y = np.empty_like(X)
        losses = []
        for i in range(num_nodes):
            _load(model, X[i])
            result = local_train(
                model, splits[i], loss_fn,
                steps=steps_for(len(splits[i]), t.batch_size, t.local_steps, t.local_epochs),
                batch_size=t.batch_size, lr=t.lr, momentum=t.momentum,
                weight_decay=t.weight_decay,
                momentum_buffers=buffers[i] if t.persist_optimizer_state else None,
                seed=round_seed(cfg.run.seed, i, k + 1),
            )
            buffers[i] = result.momentum
            losses.append(result.loss)
            Y[i] = _vector(model)
            if i < attackers:
                start = _state(model, X[i])
                sent = attacked(attack.kind, start, model.state_dict(), scale=attack.scale,
                                std=attack.std, seed=round_seed(cfg.run.seed, i, k + 1))
                Y[i] = np.concatenate([v.detach().cpu().float().numpy().ravel() for v in sent.values()])
        if not np.isfinite(Y).all():
            raise ValueError(f"Iteration {k + 1}: a node model is not finite (attack.kind="
                             f"{attack.kind!r}); the strategy would drop or stop on that node.")
        is_global = schedule.is_global(k, loss_statistic(losses))
        X = mix_step(Y, mixing(k), is_global, aggregator)
        modelled_bytes, hops = modelled_cost(mixing(k), is_global, X.shape[1] * X.itemsize)
        record = {"iteration": k + 1, "train_loss": float(np.mean(losses)),
                  "train_loss_median": loss_statistic(losses),
                  "consensus_distance": consensus_distance(X), "global_average": int(is_global),
                  "period": schedule.period, "modelled_bytes_per_node": modelled_bytes,
                  "modelled_hops": hops}
        if evaluate_every and ((k + 1) % evaluate_every == 0 or k + 1 == iterations):
            _load(model, X.mean(axis=0, dtype=np.float64).astype(np.float32))
            test = tasks.evaluate(model, data.test, loss_fn, data.kind, cfg.eval.batch_size)
            train = tasks.evaluate(model, data.train, loss_fn, data.kind, cfg.eval.batch_size)
            record.update({f"test_{key}": value for key, value in test.items()})
            record["xbar_train_loss"] = train["loss"]
        run.records.append(record)
    run.X = X
    return run
