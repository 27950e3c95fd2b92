"""Gossip-PGA hosted on a Flower server (Chen, Yuan, Zhang, Pan, Xu, Yin, ICML 2021).

The server plays the graph: it keeps every node's model x_i and, each round (= one
iteration k), sends node i its own x_i. The node takes ``train.local_steps`` optimizer
steps (1 is the paper's setting; momentum stays on the node) and returns y_i. Then::

    X <- (11^T / n) Y   if the schedule says global average (every H iterations)
    X <- W_k Y          otherwise (one gossip step)

(the math: ``strategies.schedule``, ``strategies.topology``). Gossip SGD (never global),
Local SGD (W = I) and parallel SGD (H = 1) are configurations of this one loop.

Node i's graph index is its ``partition-id``, reported with its first reply (every node
starts from the same x_0, so round 1 needs no index), and checked every round; it never
depends on the order replies arrive in. A node that does not answer stops the run
(``failure_policy='stop'``), or is dropped and W rebuilt on the remaining graph with
Metropolis-Hastings weights (``'renormalize'``): a partial set is never averaged as if it
were complete. Flower's own round loop (``Strategy.start``) drives this; only
``configure_train`` and ``aggregate_train`` differ from FedAvg.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType
from flwr.common.logger import log
from flwr.serverapp import Grid

from client import protocol as P
from strategies.fedavg import FedAvg, as_numpy
from strategies.schedule import AveragingSchedule, mix_step, modelled_cost, without_nodes
from strategies.topology import beta, check_mixing_matrix, consensus_distance


class NodeFailure(RuntimeError):
    """A node did not answer (or sent a reply that cannot be used) in a gossip round."""


def flatten(record: ArrayRecord) -> tuple[np.ndarray, dict]:
    """One float32 vector of all arrays, and the layout to undo it."""
    arrays = as_numpy(record)
    layout = {name: (value.shape, value.dtype) for name, value in arrays.items()}
    return np.concatenate([v.astype(np.float32).ravel() for v in arrays.values()]), layout


def unflatten(vector: np.ndarray, layout: dict) -> ArrayRecord:
    """The inverse of ``flatten``."""
    arrays, start = {}, 0
    for name, (shape, dtype) in layout.items():
        size = int(np.prod(shape))
        value = vector[start : start + size].reshape(shape).astype(dtype)
        arrays[name] = Array.from_numpy_ndarray(np.ascontiguousarray(value))
        start += size
    return ArrayRecord(array_dict=arrays)


class GossipPGA(FedAvg):
    def __init__(
        self,
        run_config: ConfigRecord,
        num_nodes: int,
        mixing: Callable[[int], np.ndarray],
        schedule: AveragingSchedule,
        failure_policy: str = "stop",
        evaluate_nodes: Callable[[list[ArrayRecord]], dict[str, float]] | None = None,
    ) -> None:
        if failure_policy not in ("stop", "renormalize"):
            raise ValueError(f"failure_policy must be 'stop' or 'renormalize', not {failure_policy!r}.")
        for step in range(4):  # time-varying graphs: check the first few matrices
            W = mixing(step)
            if W.shape != (num_nodes, num_nodes):
                raise ValueError(f"W has shape {W.shape}, expected ({num_nodes}, {num_nodes}).")
            check_mixing_matrix(W)
        super().__init__(run_config, fraction_train=1.0, fraction_evaluate=0.0,
                         min_train_nodes=num_nodes, min_available_nodes=num_nodes)
        self.n, self.mixing, self.schedule = num_nodes, mixing, schedule
        self.failure_policy, self.evaluate_nodes = failure_policy, evaluate_nodes
        self.X: np.ndarray | None = None  # (n, d) node models, row = graph index
        self.layout: dict = {}
        self.node_of: dict[int, int] = {}  # graph index -> Flower node id
        self.active: list[int] = list(range(num_nodes))  # graph indices still in the run

    # ------------------------------------------------------------------ send
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[P.SERVER_ROUND] = server_round
        config[P.WANT_PARTITION_ID] = True
        if self.X is None:  # round 1: everyone starts from x_0; learn the indices
            node_ids = self._wait_for_nodes(grid)
            self.layout = flatten(arrays)[1]
            payloads = dict.fromkeys(node_ids, arrays)
        else:
            payloads = {self.node_of[i]: unflatten(self.X[i], self.layout) for i in self.active}
        messages = [
            Message(
                content=RecordDict({P.ARRAYS: record, P.CONFIG: config, P.RUN_CONFIG: self.run_config}),
                message_type=MessageType.TRAIN,
                dst_node_id=node_id,
            )
            for node_id, record in payloads.items()
        ]
        self.expected_shapes = {name: shape for name, (shape, _) in self.layout.items()}
        self.bytes_sent = sum(P.payload_bytes(m.content) for m in messages)
        return messages

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        from flwr.serverapp.strategy.strategy_utils import sample_nodes

        node_ids, all_ids = sample_nodes(grid, self.n, self.n)
        if len(all_ids) != self.n:
            raise NodeFailure(
                f"Gossip-PGA was built for {self.n} nodes but {len(all_ids)} are connected; "
                "the graph needs exactly one SuperNode per graph index."
            )
        return node_ids

    # ------------------------------------------------------------------ receive, mix
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        received = sum(P.payload_bytes(r.content) for r in replies if not r.has_error())
        kept, _ = self.sound_replies(replies)
        for reply in replies:
            if reply.has_error():  # the client's own reason, e.g. a missing partition-id
                log(WARNING, "Gossip-PGA round %d: node %s replied with an error: %s",
                    server_round, reply.metadata.src_node_id, reply.error.reason)
        by_node = {r.metadata.src_node_id: r for r in kept if not r.has_error()}
        if self.X is None:
            self._learn_indices(by_node)
        self._handle_missing(server_round, by_node)

        iteration = server_round - 1
        rows = [by_node[self.node_of[i]] for i in self.active]
        Y = np.stack([flatten(r.content[P.ARRAYS])[0] for r in rows])
        losses = [float(r.content[P.METRICS][P.TRAIN_LOSS]) for r in rows]
        mean_loss = float(np.mean(losses))
        W = self.mixing(iteration)
        if len(self.active) < self.n:
            W = without_nodes(W, self.active)
        is_global = self.schedule.is_global(iteration, mean_loss)
        X_active = mix_step(Y, W, is_global)
        if self.X is None:
            self.X = np.zeros((self.n, Y.shape[1]), dtype=Y.dtype)
        self.X[self.active] = X_active

        model_bytes = int(Y.shape[1] * Y.itemsize)
        modelled_bytes, hops = modelled_cost(W, is_global, model_bytes)
        metrics = MetricRecord({
            P.TRAIN_LOSS: mean_loss,
            "consensus-distance": consensus_distance(X_active),
            "consensus-distance-before-mixing": consensus_distance(Y),
            "global-average": int(is_global),
            "period": self.schedule.period,
            "beta": beta(W),
            "active-nodes": len(self.active),
            **self.comm_metrics(server_round, received),
            "num-replies": len(rows),
            "num-failures": self.n - len(rows),
            "modelled-bytes-per-node": modelled_bytes,
            "modelled-hops": hops,
        })
        if self.evaluate_nodes is not None:
            node_models = [unflatten(self.X[i], self.layout) for i in self.active]
            metrics.update({f"node-{k}": v for k, v in self.evaluate_nodes(node_models).items()})
        self.round_metrics[server_round] = dict(metrics)
        return unflatten(X_active.mean(axis=0, dtype=np.float64).astype(Y.dtype), self.layout), metrics

    def _learn_indices(self, by_node: dict[int, Message]) -> None:
        for node_id, reply in by_node.items():
            index = int(reply.content[P.METRICS][P.PARTITION_ID])
            if not 0 <= index < self.n or index in self.node_of:
                raise NodeFailure(
                    f"Node {node_id} reports partition-id {index}; Gossip-PGA needs each of "
                    f"0..{self.n - 1} exactly once (set num-partitions={self.n} on every node)."
                )
            self.node_of[index] = node_id
        log(INFO, "Gossip-PGA: graph index -> node id %s", dict(sorted(self.node_of.items())))

    def _handle_missing(self, server_round: int, by_node: dict[int, Message]) -> None:
        missing = [i for i in self.active if self.node_of.get(i) not in by_node]
        for node_id, reply in by_node.items():  # the index must be stable
            index = int(reply.content[P.METRICS][P.PARTITION_ID])
            if self.node_of.get(index) != node_id:
                raise NodeFailure(f"Node {node_id} changed its partition-id to {index} mid-run.")
        if not missing:
            return
        if self.failure_policy == "stop" or len(missing) == len(self.active):
            raise NodeFailure(
                f"Gossip-PGA round {server_round}: graph node(s) {missing} did not answer in "
                "time or sent an unusable reply. Stopping: averaging a partial set would break "
                "W's double stochasticity. Set strategy.failure_policy='renormalize' to drop "
                "such nodes and rebuild W on the remaining graph."
            )
        self.active = [i for i in self.active if i not in missing]
        log(WARNING, "Gossip-PGA round %d: dropped graph node(s) %s; %d remain, W rebuilt "
            "with Metropolis-Hastings weights.", server_round, missing, len(self.active))

    def node_state(self) -> dict[int, ArrayRecord]:
        """The current model of every active node, by graph index."""
        return {i: unflatten(self.X[i], self.layout) for i in self.active} if self.X is not None else {}
