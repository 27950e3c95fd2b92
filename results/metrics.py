"""Every metric fedlocal records, named once and spelled the same everywhere: in a client's
reply, in the strategies' and the engine's round metrics, in ``metrics.jsonl`` and
``summary.json``, and in the plots. Plain strings, no imports.

A round's record (``server.results.RunFolder.record_round``; ``engine`` records the same
keys) holds ``ROUND`` (``ITERATION`` in the engine's decentralized records), ``SECONDS``,
``ELAPSED``, the server's test metrics (``TEST_PREFIX`` + loss, accuracy, perplexity), the
example-weighted means of the reply metrics, and the round metrics below.
"""

# ---------------------------------------------------------------- a client's reply
NUM_EXAMPLES = "num_examples"  # the client's data size; the server's weight under weighting='examples'
TRAIN_LOSS = "train_loss"  # mean mini-batch loss over the local steps
NUM_STEPS = "num_steps"
TRAIN_SECONDS = "train_seconds"
PROCESS_SECONDS = "process_seconds"  # age of the ClientApp process at reply (Linux; else 0)
CUDA = "cuda"  # 1 when the client's process trains on a CUDA device, else 0
CLIP_FRACTION = "clip_fraction"  # fraction of local steps where gamma/||g|| < eta
GRAD_NORM = "grad_norm"  # mean ||g|| before clipping
SMOOTHNESS = "smoothness"  # mean local smoothness estimate over sampled steps
SMOOTHNESS_GRAD_NORM = "smoothness_grad_norm"  # mean ||g|| at those steps
GRADIENT_DRIFT = "gradient_drift"  # max_t ||grad F_k(x_t) - grad F_k(x_0)|| / ||grad F_k(x_0)||
GRADIENT_DRIFT_MAX = "gradient_drift_max"  # the same value; the server takes its max, not mean
PARTITION_ID = "partition_id"  # Gossip-PGA: the node's graph index
EVAL_LOSS = "eval_loss"  # federated evaluation on the client's own data
EVAL_ACCURACY = "eval_accuracy"

# ---------------------------------------------------------------- a round, on the server
ROUND = "round"
ITERATION = "iteration"
SECONDS = "seconds"  # this round's wall time
ELAPSED = "elapsed"  # since the run started
NUM_REPLIES = "num_replies"  # sound replies combined
NUM_FAILURES = "num_failures"  # nodes sent work whose reply was an error, rejected or missing
BYTES_SENT = "bytes_sent"
BYTES_RECEIVED = "bytes_received"
BYTES_TOTAL = "bytes_total"  # sent + received, all rounds so far
COMM_ROUNDS = "comm_rounds"
AGGREGATION_SECONDS = "aggregation_seconds"
AGGREGATE_REJECTED = "aggregate_rejected"  # 1 when the round's model was not finite (not taken)
MEAN_GRAD_NORM = "mean_grad_norm"  # naive clipping: ||g|| of the aggregated gradient
# Gossip-PGA
ACTIVE_NODES = "active_nodes"
TRAIN_LOSS_MEDIAN = "train_loss_median"
CONSENSUS_DISTANCE = "consensus_distance"
CONSENSUS_DISTANCE_BEFORE_MIXING = "consensus_distance_before_mixing"
GLOBAL_AVERAGE = "global_average"
PERIOD = "period"
BETA = "beta"
MODELLED_BYTES_PER_NODE = "modelled_bytes_per_node"
MODELLED_HOPS = "modelled_hops"
NODE_PREFIX = "node_"  # the node models' mean test metrics: node_test_loss, ...
XBAR_TRAIN_LOSS = "xbar_train_loss"  # engine: the average model's loss on the training pool
# the aggregation rules (strategies.aggregators)
NNM_NEIGHBOURS = "nnm_neighbours"
TRIM_CUT = "trim_cut"
KRUM_NEIGHBOURS = "krum_neighbours"
KRUM_CLAMPED = "krum_clamped"
KRUM_SELECTED = "krum_selected"
GM_ITERATIONS = "gm_iterations"
GM_CONVERGED = "gm_converged"
BGMD_K = "bgmd_k"
BGMD_MEMORY_NORM = "bgmd_memory_norm"

# ---------------------------------------------------------------- evaluation
TEST_PREFIX = "test_"  # the server's test set: test_loss, test_accuracy, test_perplexity
LOSS, ACCURACY, PERPLEXITY = "loss", "accuracy", "perplexity"  # what tasks.evaluate returns
TEST_LOSS, TEST_ACCURACY, TEST_PERPLEXITY = (TEST_PREFIX + k for k in (LOSS, ACCURACY, PERPLEXITY))
GLOBAL_TRAIN_LOSS = "global_train_loss"  # run.diagnostics: the global model on the training pool
