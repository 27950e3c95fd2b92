"""FedAvg / Local SGD: Flower's ``FedAvg``, extended rather than rewritten.

Each round every sampled client runs ``local_steps`` of the one training loop from the
global model x and the server takes the example-weighted mean (McMahan et al. 2017;
analysed for ReLU networks by Deng, Kamani, Mahdavi, AISTATS 2022)::

    x <- sum_k (n_k / n) x_k

What this class adds to Flower's: the run's resolved config rides along with the model,
replies with wrong shapes or non-finite values are dropped (and logged with their node)
before averaging, nodes that were sent work but did not answer in time are logged by
node, a round with fewer than ``min_replies`` sound replies stops the run (``DropoutError``)
instead of averaging too few models, and the payload bytes sent and received are
returned as metrics (and kept in ``round_metrics`` for the ServerApp's per-round record).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from client import protocol as P
from strategies.replies import reply_problem, shapes_of


def with_max(aggregate, keys: tuple[str, ...]):
    """A train-metrics aggregation that keeps ``aggregate``'s (weighted mean) for every key
    but takes the max over the replies for ``keys`` (e.g. the worst client's drift)."""

    def aggregate_with_max(contents: list[RecordDict], weight_key: str) -> MetricRecord:
        metrics = aggregate(contents, weight_key)
        for key in keys:
            values = [float(r[P.METRICS][key]) for r in contents if key in r[P.METRICS]]
            if values:
                metrics[key] = max(values)
        return metrics

    return aggregate_with_max


def as_numpy(record: ArrayRecord) -> dict:
    return {name: array.numpy() for name, array in record.items()}


MAX_KEYS = (P.GRADIENT_DRIFT_MAX,)  # reply metrics aggregated by max, not weighted mean


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


class DropoutError(RuntimeError):
    """Too few nodes answered a round with a sound reply."""


class FedAvg(FlowerFedAvg):
    def __init__(self, run_config: ConfigRecord, weighting: str = "examples",
                 min_replies: int = 1, node_wait: float | None = None, **kwargs) -> None:
        if weighting not in ("examples", "uniform"):
            raise ValueError(f"weighting must be 'examples' or 'uniform', not {weighting!r}.")
        weight_key = P.NUM_EXAMPLES if weighting == "examples" else P.UNIT_WEIGHT
        super().__init__(arrayrecord_key=P.ARRAYS, configrecord_key=P.CONFIG,
                         weighted_by_key=weight_key,
                         train_metrics_aggr_fn=with_max(aggregate_metricrecords, MAX_KEYS),
                         **kwargs)
        self.run_config = run_config
        self.min_replies, self.node_wait = min_replies, node_wait
        self.sent_to: list[int] = []  # the nodes sent this round's training messages
        self.expected_shapes: dict[str, tuple[int, ...]] = {}
        self.bytes_sent = 0
        self.bytes_total = 0  # sent + received, all rounds so far
        self.round_metrics: dict[int, dict] = {}  # what aggregate_train returned, by round

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.node_wait is not None:  # after a node dropped, Flower's sampling could wait forever
            wait_for_nodes(grid, self.min_available_nodes, self.node_wait)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            message.content[P.RUN_CONFIG] = self.run_config
        self.expected_shapes = shapes_of(as_numpy(arrays))
        self.bytes_sent = sum(P.payload_bytes(m.content) for m in messages)
        self.sent_to = [m.metadata.dst_node_id for m in messages]
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        for message in messages:
            message.content[P.RUN_CONFIG] = self.run_config
        return messages

    def sound_replies(self, replies: Iterable[Message]) -> tuple[list[Message], int]:
        """Replies fit to average (errors pass through for Flower to log), and the
        number rejected."""
        kept, rejected = [], 0
        for reply in replies:
            if not reply.has_error():
                record = reply.content.array_records.get(P.ARRAYS)
                problem = (
                    f"no '{P.ARRAYS}' array record" if record is None
                    else reply_problem(self.expected_shapes, as_numpy(record))
                )
                if problem:
                    log(WARNING, "Rejected the reply of node %s: %s.", reply.metadata.src_node_id, problem)
                    rejected += 1
                    continue
            kept.append(reply)
        return kept, rejected

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        received = sum(P.payload_bytes(r.content) for r in replies if not r.has_error())
        kept, rejected = self.sound_replies(replies)
        arrays, metrics = super().aggregate_train(server_round, kept)
        metrics = metrics if metrics is not None else MetricRecord()
        metrics.pop(P.UNIT_WEIGHT, None)
        metrics.update(self.comm_metrics(server_round, received))
        metrics["num-replies"] = sum(1 for r in kept if not r.has_error())
        missing = self.check_dropouts(server_round, replies, metrics["num-replies"])
        metrics["num-failures"] = sum(1 for r in replies if r.has_error()) + rejected + len(missing)
        self.round_metrics[server_round] = dict(metrics)
        return arrays, metrics

    def check_dropouts(self, server_round: int, replies: list[Message], sound: int) -> list[int]:
        """Log the nodes that were sent work but did not answer (killed, unplugged, or past
        ``round_timeout``; Flower itself logs error replies), and stop the run when fewer
        than ``min_replies`` sound replies remain. Returns the silent nodes."""
        answered = {r.metadata.src_node_id for r in replies}
        missing = [node for node in self.sent_to if node not in answered]
        if missing:
            log(WARNING, "Round %d: no reply from node(s) %s; going on with %d reply(ies).",
                server_round, ", ".join(map(str, missing)), sound)
        if sound < self.min_replies:
            failed = [r.metadata.src_node_id for r in replies if r.has_error()]
            raise DropoutError(
                f"Round {server_round}: only {sound} sound reply(ies) of {len(self.sent_to)} sent, "
                f"fewer than strategy.min_replies={self.min_replies} (silent: {missing or 'none'}, "
                f"error replies: {failed or 'none'}; rejected replies are logged above). Lower "
                "strategy.min_replies, raise strategy.round_timeout, or check the SuperNodes."
            )
        return missing

    def comm_metrics(self, server_round: int, received: int) -> dict[str, int]:
        """Payload bytes of this round and so far; one round = one communication round."""
        self.bytes_total += self.bytes_sent + received
        return {"bytes-sent": self.bytes_sent, "bytes-received": received,
                "bytes-total": self.bytes_total, "comm-rounds": server_round}
