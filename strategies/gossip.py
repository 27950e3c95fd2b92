"""Gossip-PGA hosted on a Flower server (Chen, Yuan, Zhang, Pan, Xu, Yin, ICML 2021).

The server plays the graph: it keeps every node's model x_i and, each round (= one
iteration k), sends node i its own x_i. The node takes ``train.local_steps`` optimizer
steps (1 is the paper's setting; momentum stays on the node) and returns y_i. Then::

    X <- (11^T / n) Y   if the schedule says global average (every H iterations)
    X <- W_k Y          otherwise (one gossip step)

The mixing step is the algorithm's server half (``algorithms.gossip.GossipPGA.mix``, which
the one-process ``engine`` calls too); this class keeps the node models, places nodes on
the graph and checks their replies.

Node i's graph index is its ``partition-id``, reported with its first reply (every node
starts from the same x_0, so round 1 needs no index), and checked every round; it never
depends on the order replies arrive in. Replies are checked as FedAvg's are
(``strategies.replies``), and a node whose reply cannot be used (rejected, missing
``partition-id`` or ``train_loss``, an index that is not its own) counts as not answering:
that stops the run (``failure_policy='stop'``), or the node is dropped and W rebuilt on the
remaining graph with Metropolis-Hastings weights (``'renormalize'``; the run stops when
fewer than ``min_gossip_nodes`` would remain): a partial set is never averaged as if it
were complete. The global average can be a robust one (``strategy.aggregator``).
FedAvg's round loop drives this; only ``configure_train`` and ``aggregate_train`` differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType
from flwr.common.logger import log
from flwr.serverapp import Grid

from algorithms.gossip import GossipPGA as GossipAlgorithm
from client import protocol as P
from results import metrics as M
from strategies.aggregators import Aggregator
from strategies.fedavg import FedAvg, as_numpy
from strategies.replies import ArraySpec, ReplyError, as_integer, flat


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
        cfg,
        run_config: ConfigRecord,
        algorithm: GossipAlgorithm,
        failure_policy: str = "stop",
        evaluate_nodes: Callable[[list[ArrayRecord]], dict[str, float]] | None = None,
        aggregator: Aggregator | None = None,
        min_nodes: int = 1,
    ) -> None:
        if failure_policy not in ("stop", "renormalize"):
            raise ValueError(f"failure_policy must be 'stop' or 'renormalize', not {failure_policy!r}.")
        n = algorithm.num_nodes
        hosts = cfg.strategy.min_available_nodes if cfg.data.num_clients else n
        super().__init__(cfg, run_config, algorithm, fraction_train=1.0, fraction_evaluate=0.0,
                         min_train_nodes=hosts, min_available_nodes=hosts,
                         weighting="uniform", aggregator=aggregator)
        self.cohorts = cfg.data.num_clients > 0  # graph nodes are logical clients on fewer SuperNodes
        self.min_nodes = min_nodes
        self.n, self.mixing = n, algorithm.mixing
        self.failure_policy, self.evaluate_nodes = failure_policy, evaluate_nodes
        self.X: np.ndarray | None = None  # (n, d) node models, row = graph index
        self.layout: dict = {}
        self.node_of: dict[int, int] = {}  # graph index -> Flower node id
        self.active: list[int] = list(range(n))  # graph indices still in the run

    # ------------------------------------------------------------------ send
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[P.SERVER_ROUND] = server_round
        config[P.WANT_PARTITION_ID] = True
        if self.cohorts:
            return self._cohort_messages(arrays, config, grid)
        if self.X is None:  # round 1: everyone starts from x_0; learn the indices
            node_ids = self._wait_for_nodes(grid)
            self.layout = flatten(arrays)[1]
            payloads = dict.fromkeys(node_ids, arrays)
        else:
            if not self.node_of:  # resumed from a checkpoint: node ids are new
                self._query_indices(server_round, grid)
            payloads = {self.node_of[i]: unflatten(self.X[i], self.layout) for i in self.active}
        messages = [
            Message(
                content=RecordDict({P.ARRAYS: record, P.CONFIG: config, P.RUN_CONFIG: self.run_config}),
                message_type=MessageType.TRAIN,
                dst_node_id=node_id,
            )
            for node_id, record in payloads.items()
        ]
        self.specs = [ArraySpec(name, tuple(shape), dtype) for name, (shape, dtype) in self.layout.items()]
        self.bytes_sent = sum(P.payload_bytes(m.content) for m in messages)
        return messages

    def _cohort_messages(self, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        """Cohorts: graph node i is logical client i, hosted by the SuperNode with
        partition-id i % P; each SuperNode gets one message with the models of the active
        graph nodes it hosts (``P.cohort_keys``). The graph index is the client id, so no
        node reports one before it is placed."""
        hosts = self.partition_ids(grid)
        if self.X is None:
            self.layout = flatten(arrays)[1]
        self.node_of = {i: i for i in self.active}  # graph index -> the id its reply carries
        self.cohort_of, contents = {}, {}
        for i in self.active:
            node = hosts[i % len(hosts)]
            self.cohort_of.setdefault(node, []).append(i)
            record = arrays if self.X is None else unflatten(self.X[i], self.layout)
            contents.setdefault(node, RecordDict())[P.cohort_keys(i)[0]] = record
        messages = []
        for node, content in contents.items():
            content[P.CONFIG] = ConfigRecord({**config, P.CLIENTS: self.cohort_of[node]})
            content[P.RUN_CONFIG] = self.run_config
            messages.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
        self.specs = [ArraySpec(name, tuple(shape), dtype) for name, (shape, dtype) in self.layout.items()]
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
        sound, _, _ = self.sound_replies(server_round, replies, self.specs,
                                         (P.TRAIN_LOSS, P.INDEX))
        by_node = {node: reply for node, (reply, _) in sound.items()}
        if self.X is None and not self.cohorts:  # cohorts: the server placed every client itself
            self._learn_indices(server_round, by_node)
        self._handle_missing(server_round, by_node)

        rows = [by_node[self.node_of[i]] for i in self.active]
        Y = np.stack([flat(r.arrays) for r in rows]).astype(np.float32)
        losses = [float(r.metrics[P.TRAIN_LOSS]) for r in rows]
        X_active, mixed = self.algorithm.mix(Y, losses, server_round - 1, self.active, self.aggregator)
        if self.X is None:
            self.X = np.zeros((self.n, Y.shape[1]), dtype=Y.dtype)
        self.X[self.active] = X_active
        metrics = MetricRecord({
            **mixed,
            M.ACTIVE_NODES: len(self.active),
            **self.comm_metrics(server_round, received),
            M.NUM_REPLIES: len(rows),
            M.NUM_FAILURES: self.n - len(rows),
        })
        if self.evaluate_nodes is not None:
            node_models = [unflatten(self.X[i], self.layout) for i in self.active]
            metrics.update({M.NODE_PREFIX + k: v for k, v in self.evaluate_nodes(node_models).items()})
        self.round_metrics[server_round] = dict(metrics)
        return unflatten(X_active.mean(axis=0, dtype=np.float64).astype(Y.dtype), self.layout), metrics

    def _index_of(self, node_id: int, reply) -> int | None:
        """The graph index a reply reports, or None (logged) when it is not one."""
        try:
            index = as_integer(P.INDEX, reply.metrics[P.INDEX])
        except ReplyError as err:
            log(WARNING, "Rejected the reply of node %s: %s.", node_id, err)
            return None
        if not 0 <= index < self.n:
            log(WARNING, "Rejected the reply of node %s: partition-id %d is not a graph index "
                "0..%d (set num-partitions=%d on every node).", node_id, index, self.n - 1, self.n)
            return None
        return index

    def _learn_indices(self, server_round: int, by_node: dict[int, object]) -> None:
        """Round 1: place each node on the graph by its partition-id. Nodes that report no
        usable index, or an index another node also claims, are left out (all claimants of
        a contested index: the server cannot tell which is honest) and count as missing."""
        claims: dict[int, list[int]] = {}
        for node_id, reply in by_node.items():
            index = self._index_of(node_id, reply)
            if index is not None:
                claims.setdefault(index, []).append(node_id)
        for index, nodes in sorted(claims.items()):
            if len(nodes) == 1:
                self.node_of[index] = nodes[0]
            else:
                log(WARNING, "Gossip-PGA round %d: nodes %s all claim graph index %d; none is "
                    "placed there (give every SuperNode a distinct partition-id).",
                    server_round, nodes, index)
        log(INFO, "Gossip-PGA: graph index -> node id %s", dict(sorted(self.node_of.items())))

    def _handle_missing(self, server_round: int, by_node: dict[int, object]) -> None:
        """Drop from ``by_node`` every reply that cannot be used, then apply the failure
        policy to the graph nodes without a usable reply."""
        held_by = {node: i for i, node in self.node_of.items()}
        for node_id in list(by_node):  # the index must be stable
            if node_id not in held_by:  # never placed on the graph (logged in round 1)
                del by_node[node_id]
                continue
            index = self._index_of(node_id, by_node[node_id])
            if index is not None and index != held_by[node_id]:
                log(WARNING, "Rejected the reply of node %s: it reports partition-id %s, but "
                    "holds graph index %s.", node_id, index, held_by[node_id])
                index = None
            if index is None:
                del by_node[node_id]
        missing = [i for i in self.active if self.node_of.get(i) not in by_node]
        if not missing:
            return
        if self.failure_policy == "stop":
            raise NodeFailure(
                f"Gossip-PGA round {server_round}: graph node(s) {missing} did not answer in "
                "time or sent an unusable reply (reasons logged above). Stopping: averaging a "
                "partial set would break W's double stochasticity. Set "
                "strategy.failure_policy='renormalize' to drop such nodes and rebuild W on "
                "the remaining graph."
            )
        remaining = [i for i in self.active if i not in missing]
        if len(remaining) < self.min_nodes:
            raise NodeFailure(
                f"Gossip-PGA round {server_round}: graph node(s) {missing} did not answer in "
                f"time or sent an unusable reply (reasons logged above), which would leave "
                f"{len(remaining)} node(s), fewer than strategy.min_gossip_nodes="
                f"{self.min_nodes}. Stopping. Check the nodes named above, or lower "
                "strategy.min_gossip_nodes."
            )
        self.active = remaining
        log(WARNING, "Gossip-PGA round %d: dropped graph node(s) %s; %d remain, W rebuilt "
            "with Metropolis-Hastings weights.", server_round, missing, len(self.active))

    def _query_indices(self, server_round: int, grid: Grid) -> None:
        """A resumed run: Flower node ids change across a restart, so every per-node state
        is kept by graph index, and each connected node is asked (a QUERY message) for its
        partition-id and placed by it, with the same checks as round 1."""
        by_node = self.query_nodes(grid, self._wait_for_nodes(grid))
        self._learn_indices(server_round, by_node)
        self._handle_missing(server_round, by_node)

    def state_dict(self) -> dict:
        """The node models by graph index, the active indices (and, in FedAvg's part, the
        averaging schedule);
        not the node ids, which a restart changes (``_query_indices``)."""
        return {**super().state_dict(), "X": None if self.X is None else self.X.copy(),
                "layout": dict(self.layout), "active": list(self.active)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.X = None if state["X"] is None else np.array(state["X"])
        self.layout, self.active = dict(state["layout"]), list(state["active"])
        self.node_of = {}

    def node_state(self) -> dict[int, ArrayRecord]:
        """The current model of every active node, by graph index."""
        return {i: unflatten(self.X[i], self.layout) for i in self.active} if self.X is not None else {}
