"""The message contract between the ServerApp and the ClientApp: every key, named once.

A train message carries ``ARRAYS`` (the model), ``CONFIG`` (the round number
``server-round``, from which the client derives every per-round setting with
``algorithms.settings.round_settings``, and Gossip-PGA's index request) and
``RUN_CONFIG`` (the run's whole resolved config, flat, so that clients parse exactly what
the server parsed). A reply carries ``ARRAYS`` and
``METRICS`` with the same metric keys from every client (Flower checks this).
"""

ARRAYS = "arrays"
CONFIG = "config"
RUN_CONFIG = "fedlocal-config"
METRICS = "metrics"

# per-round values in CONFIG
SERVER_ROUND = "server-round"
CLIENTS = "clients"  # a cohort: the logical clients this node trains this round (data.num_clients)
WANT_PARTITION_ID = "want-partition-id"  # reply with INDEX (the partition-id) in the metrics (gossip)

# node config (simulation: set by Flower; deployment: --node-config)
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
DATA_PATH = "data-path"  # a device's own data file (tasks.local_data); replaces the central slice
WARM_WORKER = "warm-worker"  # seconds a node's warm worker (client.worker) idles; 0/absent = none
FAULT = "fault"  # a rogue node, for testing the server's defences: an attack kind (client.attacks)

# reply metrics: named in results.metrics, spelled the same from the reply to the plot;
# under weighting='examples' the server weighs a reply by its NUM_EXAMPLES
from results.metrics import (  # noqa: E402
    CLIP_FRACTION,
    CUDA,
    EVAL_ACCURACY,
    EVAL_LOSS,
    GRAD_NORM,
    GRADIENT_DRIFT,
    GRADIENT_DRIFT_MAX,
    NUM_EXAMPLES,
    NUM_STEPS,
    PROCESS_SECONDS,
    SMOOTHNESS,
    SMOOTHNESS_GRAD_NORM,
    TRAIN_LOSS,
    TRAIN_SECONDS,
)
from results.metrics import PARTITION_ID as INDEX  # noqa: E402  (gossip: the graph index a node reports)

# every metric a reply may carry; the server drops any other key (strategies.replies)
TRAIN_METRICS = (
    NUM_EXAMPLES, TRAIN_LOSS, NUM_STEPS, TRAIN_SECONDS, PROCESS_SECONDS,
    CLIP_FRACTION, GRAD_NORM, SMOOTHNESS, SMOOTHNESS_GRAD_NORM, GRADIENT_DRIFT,
    GRADIENT_DRIFT_MAX, INDEX, CUDA,
)
EVALUATE_METRICS = (NUM_EXAMPLES, EVAL_LOSS, EVAL_ACCURACY)
MAX_METRICS = (GRADIENT_DRIFT_MAX,)  # combined over replies by their max, not weighted mean

# what the client keeps in context.state between rounds
STATE_MOMENTUM = "momentum"


def cohort_keys(client: int) -> tuple[str, str]:
    """The array and metric record names of logical client ``client`` in a cohort reply."""
    return f"{ARRAYS}/{client}", f"{METRICS}/{client}"


def payload_bytes(content) -> int:
    """Bytes of the records in a message's RecordDict (tensors, configs, metrics)."""
    return sum(record.count_bytes() for record in content.values())
