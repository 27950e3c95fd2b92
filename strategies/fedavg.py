"""The Flower driver of every server-centred algorithm (``algorithms``: FedAvg, CELGC,
naive clipping, FedProx): Flower's ``FedAvg`` extended through its hooks.

Each round the sampled clients receive the global model x and the round number; what they
do with it is the algorithm's client half (with ``round_settings(cfg, round)``). This
class only moves messages and checks them; every number is decided by
``algorithms.base.server_step``, the same function the one-process ``engine`` calls:

    x <- server_update(x, A(u_1, ..., u_K; w_1, ..., w_K))     u_k = x_k - x (or g_k)

with server-side weights w_k: 1 (``weighting='uniform'``) or the reply's ``num_examples``
capped at ``strategy.max_examples`` (``'examples'``).

What this class adds to Flower's: no field of a reply is trusted (``strategies.replies``
checks records, arrays, dtypes, sizes and metrics before anything is averaged; a bad reply
is rejected with its node named and the round goes on); the aggregate itself must be finite
or the round's model is not taken; nodes sent work that did not answer are logged by node;
a round with fewer than ``min_replies`` sound replies stops the run (``DropoutError``);
the run config rides along with the model; payload bytes and failures are returned as
metrics (and kept in ``round_metrics`` for the ServerApp's per-round record).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from logging import ERROR, INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.serverapp.strategy import Result

from algorithms.base import Algorithm, required_replies, sampled_clients, server_step
from algorithms.settings import round_settings
from client import protocol as P
from results import metrics as M
from strategies.aggregators import Aggregator, make_aggregator
from strategies.replies import (
    Reply,
    ReplyError,
    as_integer,
    example_weight,
    flat,
    parse_cohort_reply,
    parse_reply,
    specs_of,
    weighted_metrics,
)


def as_numpy(record: ArrayRecord) -> dict:
    """The arrays of a record the server made itself (trusted)."""
    return {name: array.numpy() for name, array in record.items()}


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def wait_for_nodes(grid: Grid, at_least: int, timeout: float, poll: float = 1.0) -> int:
    """How many SuperNodes are connected, once at least ``at_least`` are; an error after
    ``timeout`` seconds (Flower's own sampling would wait forever)."""
    deadline = time.monotonic() + timeout
    while (count := len(list(grid.get_node_ids()))) < at_least:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"Only {count} SuperNode(s) connected after {timeout:.0f} s but "
                f"strategy.min_available_nodes = {at_least}: start more SuperNodes (simulation: "
                "--federation-config \"num-supernodes=N\") or lower strategy.min_available_nodes."
            )
        time.sleep(poll)
    return count


def canonical_order(sound: dict[int, tuple[Reply, float]]):
    """The sound replies as ``(node ids, replies, weights, (n, d) rows)``, in the order of a
    digest of each row's bytes, not of node ids or arrival: the same replies give the same
    float sums in any run, which a resumed run (new node ids) needs to be bit-exact."""
    nodes, items = list(sound), list(sound.values())
    digests = [hashlib.blake2b(flat(reply.arrays).tobytes()).digest() for reply, _ in items]
    order = sorted(range(len(items)), key=digests.__getitem__)
    # one (n, d) float64 matrix and nothing else of that size: a cohort round's replies are
    # many (1000 clients x the model), so the rows are flattened straight into their place
    # and each reply lets go of its arrays once they are there
    rows = np.empty((len(items), sum(np.size(v) for v in items[0][0].arrays.values()) if items else 0))
    for k, i in enumerate(order):
        rows[k] = flat(items[i][0].arrays)
        items[i][0].arrays = {}
    return ([nodes[i] for i in order], [items[i][0] for i in order],
            np.array([items[i][1] for i in order]), rows)


class DropoutError(RuntimeError):
    """Too few nodes answered a round with a sound reply (``strategy.min_replies``)."""


class FedAvg(FlowerFedAvg):
    def __init__(self, cfg, run_config: ConfigRecord, algorithm: Algorithm,
                 weighting: str = "examples", min_replies: float = 1,
                 node_wait: float | None = None, aggregator: Aggregator | None = None,
                 max_examples: int = 0, num_clients: int = 0, **kwargs) -> None:
        if weighting not in ("examples", "uniform"):
            raise ValueError(f"weighting must be 'examples' or 'uniform', not {weighting!r}.")
        super().__init__(arrayrecord_key=P.ARRAYS, configrecord_key=P.CONFIG,
                         weighted_by_key=P.NUM_EXAMPLES, **kwargs)
        self.cfg, self.run_config, self.algorithm = cfg, run_config, algorithm
        self.weighting, self.max_examples = weighting, max_examples
        self.aggregator = aggregator if aggregator is not None else make_aggregator("mean")
        self.min_replies, self.node_wait = min_replies, node_wait
        self.sent_to: list[int] = []  # the nodes sent this round's training messages
        self.specs = []  # ArraySpec of each array of the model sent this round
        self.x: np.ndarray | None = None  # the model sent this round, flat float64
        self.bytes_sent = 0
        self.bytes_total = 0  # sent + received, all rounds so far
        self.round_metrics: dict[int, dict] = {}  # what aggregate_train returned, by round
        self.round_timeout: float | None = None  # start()'s timeout, for messages of its own
        # cohorts (num_clients > 0): logical clients, hosted by the node whose partition-id
        # is client % (number of nodes); the schedule of sampled clients is seeded
        self.num_clients = num_clients
        self.schedule = sampled_clients(cfg, num_clients, cfg.run.rounds) if num_clients else []
        self.cohort_of: dict[int, list[int]] = {}  # node id -> the clients it was sent this round
        self.hosts: dict[int, int] | None = None  # partition-id -> node id, asked once
        self.sent_count = 0  # clients sent work this round (logical clients, or nodes)

    # ------------------------------------------------------------------ send
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.node_wait is not None:  # after a node dropped, Flower's sampling could wait forever
            wait_for_nodes(grid, self.min_available_nodes, self.node_wait)
        if self.num_clients:
            messages = self.cohort_messages(server_round, arrays, config, grid)
        else:
            messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            message.content[P.RUN_CONFIG] = self.run_config
        model = as_numpy(arrays)
        self.specs, self.x = specs_of(model), flat(model)
        self.bytes_sent = sum(P.payload_bytes(m.content) for m in messages)
        self.sent_to = [m.metadata.dst_node_id for m in messages]
        self.sent_count = sum(map(len, self.cohort_of.values())) if self.num_clients else len(messages)
        return messages

    def cohort_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> list[Message]:
        """One message per SuperNode naming the logical clients of this round's sample it
        hosts (client c lives on the node with partition-id c % P)."""
        hosts = self.partition_ids(grid)  # partition-id -> node id
        clients = self.schedule[server_round - 1] if server_round <= len(self.schedule) else \
            sampled_clients(self.cfg, self.num_clients, server_round)[-1]
        self.cohort_of = {}
        for client in clients:
            self.cohort_of.setdefault(hosts[client % len(hosts)], []).append(client)
        messages = []
        for node, cohort in self.cohort_of.items():
            node_config = ConfigRecord({**config, P.SERVER_ROUND: server_round, P.CLIENTS: cohort})
            messages.append(Message(
                content=RecordDict({P.ARRAYS: arrays, P.CONFIG: node_config}),
                message_type=MessageType.TRAIN, dst_node_id=node))
        return messages

    def partition_ids(self, grid: Grid) -> dict[int, int]:
        """Every connected node's partition-id (a QUERY message), as partition-id -> node
        id; the partition-ids must be 0..P-1, each once."""
        node_ids = sorted(grid.get_node_ids())
        if self.hosts is not None and sorted(self.hosts.values()) == node_ids:
            return self.hosts  # the same nodes as last round: no need to ask again
        replies = self.query_nodes(grid, node_ids)
        hosts: dict[int, int] = {}
        for node, reply in replies.items():
            index = int(reply.metrics[P.INDEX])
            if index in hosts:
                raise RuntimeError(f"Nodes {hosts[index]} and {node} both have partition-id {index}; "
                                   "give every SuperNode a distinct partition-id.")
            hosts[index] = node
        if sorted(hosts) != list(range(len(hosts))):
            raise RuntimeError(f"The SuperNodes' partition-ids are {sorted(hosts)}; cohorts need "
                               f"0..{len(hosts) - 1}, one per node (num-partitions={len(hosts)}).")
        self.hosts = hosts
        return hosts

    def query_nodes(self, grid: Grid, node_ids: list[int]) -> dict[int, Reply]:
        """Ask each node its partition-id (a QUERY message); the sound answers by node id,
        the others logged and left out."""
        messages = [Message(content=RecordDict({P.CONFIG: ConfigRecord({P.WANT_PARTITION_ID: True}),
                                                P.RUN_CONFIG: self.run_config}),
                            message_type=MessageType.QUERY, dst_node_id=node) for node in node_ids]
        by_node = {}
        for reply in grid.send_and_receive(messages=messages, timeout=self.round_timeout):
            node = reply.metadata.src_node_id
            try:
                if reply.has_error():
                    raise ReplyError(f"an error: {getattr(reply.error, 'reason', reply.error)}")
                metrics = reply.content.metric_records.get(P.METRICS)
                if metrics is None or P.INDEX not in metrics:
                    raise ReplyError("no partition-id")
                as_integer(P.INDEX, metrics[P.INDEX])
                by_node[node] = Reply(arrays={}, metrics=dict(metrics))
            except Exception as err:  # noqa: BLE001 - a hostile reply may break the decoder
                log(WARNING, "Rejected the index reply of node %s: %s.", node, err)
        return by_node

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        for message in messages:
            message.content[P.RUN_CONFIG] = self.run_config
        return messages

    # ------------------------------------------------------------------ check replies
    def required_metrics(self) -> tuple[str, ...]:
        return (P.TRAIN_LOSS,) + ((P.NUM_EXAMPLES,) if self.weighting == "examples" else ())

    def weight_of(self, reply: Reply) -> float:
        """The server's weight for a sound reply: 1, or its capped example count."""
        if self.weighting == "uniform":
            return 1.0
        return example_weight(reply.metrics, self.max_examples)

    def sound_replies(self, server_round: int, replies: Iterable[Message], specs, required,
                      known=P.TRAIN_METRICS) -> tuple[dict[int, tuple[Reply, float]], list[int], list[int]]:
        """The replies fit to use, by node, with their weights; the nodes whose reply was
        an error; the nodes whose reply was rejected (each logged with its reason)."""
        sound: dict[int, tuple[Reply, float]] = {}
        errors, rejected, seen = [], [], set()
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                errors.append(node)
                log(WARNING, "Round %d: node %s replied with an error: %s", server_round, node,
                    getattr(reply.error, "reason", reply.error))
                continue
            try:
                if node in seen:
                    raise ReplyError("a second reply from the same node")
                seen.add(node)
                if specs is not None and node in self.cohort_of:  # a cohort: one reply per client
                    self.add_cohort(server_round, node, reply, sound, specs, required, known)
                    continue
                parsed = parse_reply(reply.content, specs, required, known)
                sound[node] = (parsed, self.weight_of(parsed))
            except ReplyError as err:
                problem = str(err)
            except Exception as err:  # noqa: BLE001 - whatever a hostile reply makes the decoder raise
                problem = f"it could not be decoded ({type(err).__name__}: {err})"
            else:
                continue
            rejected.append(node)
            log(WARNING, "Rejected the reply of node %s: %s.", node, problem)
        return sound, errors, rejected

    def add_cohort(self, server_round: int, node: int, reply: Message, sound: dict, specs,
                   required, known) -> None:
        """A cohort reply: each of the node's clients is checked as a reply of its own and
        enters ``sound`` under its client id; a client whose records fail is left out
        (logged with the node and the client); a reply whose records do not name exactly
        the clients the node was sent is rejected whole (ReplyError)."""
        for client, parsed in parse_cohort_reply(reply.content, self.cohort_of[node], specs,
                                                 required, known).items():
            if isinstance(parsed, ReplyError):
                log(WARNING, "Round %d: rejected client %d of node %s: %s.", server_round, client,
                    node, parsed)
            else:
                sound[client] = (parsed, self.weight_of(parsed))

    # ------------------------------------------------------------------ aggregate
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        received = sum(P.payload_bytes(r.content) for r in replies if not r.has_error())
        sound, errors, rejected = self.sound_replies(server_round, replies, self.specs,
                                                     self.required_metrics())
        missing = self.check_dropouts(server_round, replies, len(sound), errors, rejected)
        keys, kept, weights, rows = canonical_order(sound)
        if len(kept) < self.aggregator.min_replies():
            log(WARNING, "Round %d: %d sound replies, fewer than the %d that strategy.aggregator="
                "'%s' needs to tolerate strategy.byzantine=%d bad ones; its result is not robust "
                "this round.", server_round, len(kept), self.aggregator.min_replies(),
                self.aggregator.name, self.aggregator.settings.byzantine)
        step = server_step(self.algorithm, self.aggregator, self.x, rows, weights, keys,
                           round_settings(self.cfg, server_round), self.specs)
        metrics = MetricRecord(weighted_metrics(kept, list(weights), P.MAX_METRICS))
        metrics.pop(P.INDEX, None)
        metrics.update(self.comm_metrics(server_round, received))
        metrics.update(step.metrics)
        metrics[M.NUM_REPLIES] = len(kept)
        metrics[M.NUM_FAILURES] = len(errors) + len(rejected) + len(missing)
        if step.arrays is None:
            log(ERROR, "Round %d: the aggregate of %d sound replies is not finite (%s); the "
                "round's model is NOT taken and the previous global model stays. The replies "
                "passed every check, so their values are finite but too large to combine: try a "
                "robust strategy.aggregator (e.g. 'median' or 'geometric_median').",
                server_round, len(kept), self.aggregator.name)
        self.round_metrics[server_round] = dict(metrics)
        return (to_record(step.arrays) if step.arrays is not None else None), metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Federated evaluation: the example-weighted mean of the sound replies' metrics."""
        sound, _, _ = self.sound_replies(server_round, replies, None, (P.NUM_EXAMPLES,),
                                         P.EVALUATE_METRICS)
        if not sound:
            return None
        kept = [reply for reply, _ in sound.values()]
        weights = [example_weight(r.metrics, self.max_examples) for r in kept]
        return MetricRecord(weighted_metrics(kept, weights))

    def check_dropouts(self, server_round: int, replies: list[Message], sound: int,
                       errors: list[int], rejected: list[int]) -> list[int]:
        """Log the nodes that were sent work but did not answer (killed, unplugged, or past
        ``round_timeout``), and stop the run when fewer than ``min_replies`` sound replies
        remain. Returns the nodes counted as silent.

        The SuperLink answers for a node it cannot reach with an error reply from its own
        node id, naming the node only by ``reply_to_message_id`` (``server.grid.PollingGrid``
        gives such a reply the node's id). One that still comes from no node sent work is in
        ``errors`` already and answers for one unanswered node: that node is not also silent."""
        answered = {r.metadata.src_node_id for r in replies}
        missing = [node for node in self.sent_to if node not in answered]
        unreachable = min(len(missing), sum(
            1 for r in replies if r.has_error() and r.metadata.src_node_id not in self.sent_to))
        silent = missing[unreachable:]  # which of `missing` were unreachable, Flower does not say
        note = f" (the SuperLink reported {unreachable} of them unreachable)" if unreachable else ""
        if missing:
            log(WARNING, "Round %d: no reply from node(s) %s%s; going on with %d reply(ies).",
                server_round, ", ".join(map(str, missing)), note, sound)
        need = required_replies(self.min_replies, self.sent_count)
        if sound < need or sound == 0:
            raise DropoutError(
                f"Round {server_round}: only {sound} sound reply(ies) of {self.sent_count} sent, "
                f"fewer than strategy.min_replies={self.min_replies:g} asks ({need}): "
                f"silent: {missing or 'none'}{note}; error replies: {errors or 'none'}; rejected as "
                f"unusable (reasons logged above): {rejected or 'none'}. Lower "
                "strategy.min_replies, raise strategy.round_timeout, or look at the nodes named."
            )
        return silent

    def comm_metrics(self, server_round: int, received: int) -> dict[str, int]:
        """Payload bytes of this round and so far; one round = one communication round."""
        self.bytes_total += self.bytes_sent + received
        return {M.BYTES_SENT: self.bytes_sent, M.BYTES_RECEIVED: received,
                M.BYTES_TOTAL: self.bytes_total, M.COMM_ROUNDS: server_round}

    # ------------------------------------------------------------------ checkpoint, loop
    def state_dict(self) -> dict:
        """What the strategy needs to continue after its last completed round (plain
        Python and numpy; ``server.checkpoint`` saves it)."""
        return {"bytes_total": self.bytes_total, "round_metrics": dict(self.round_metrics),
                "aggregator": self.aggregator.state_dict(), "algorithm": self.algorithm.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.bytes_total = int(state["bytes_total"])
        self.round_metrics = dict(state["round_metrics"])
        self.aggregator.load_state_dict(state["aggregator"])
        self.algorithm.load_state_dict(state["algorithm"])

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              first_round: int = 1,
              after_round: Callable[[int, ArrayRecord], None] | None = None) -> Result:
        """Flower's round loop (train, federated evaluation, central evaluation), from
        ``first_round`` (a resumed run: ``initial_arrays`` is the global model after round
        ``first_round - 1``, and round 0 is not evaluated again); ``after_round(round,
        arrays)`` runs when a round is complete (a checkpoint)."""
        self.round_timeout = timeout
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result, arrays = Result(arrays=initial_arrays), initial_arrays
        if evaluate_fn is not None and first_round == 1:
            metrics = evaluate_fn(0, initial_arrays)
            if metrics is not None:
                result.evaluate_metrics_serverapp[0] = metrics
        for current in range(first_round, num_rounds + 1):
            log(INFO, "[ROUND %s/%s]", current, num_rounds)
            replies = grid.send_and_receive(
                messages=self.configure_train(current, arrays, train_config, grid), timeout=timeout)
            new, metrics = self.aggregate_train(current, replies)
            if new is not None:
                result.arrays = arrays = new
            if metrics is not None:
                result.train_metrics_clientapp[current] = metrics
            messages = list(self.configure_evaluate(current, arrays, evaluate_config, grid))
            if messages:
                evaluated = self.aggregate_evaluate(
                    current, grid.send_and_receive(messages=messages, timeout=timeout))
                if evaluated is not None:
                    result.evaluate_metrics_clientapp[current] = evaluated
            if evaluate_fn is not None:
                metrics = evaluate_fn(current, arrays)
                if metrics is not None:
                    result.evaluate_metrics_serverapp[current] = metrics
            if after_round is not None:
                after_round(current, arrays)
        return result
