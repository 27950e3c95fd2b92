"""The typed configuration of a fedlocal run: every key, its default, meaning and range.

This module is the single place where a config key is declared (its type, meaning and
allowed values); ``conf/base.yaml`` holds every default. The other YAML files in
``conf/`` only change values declared here, the README's config reference is generated
from the ``help`` texts below (``python -m conf --markdown``), and ``conf.load`` checks
every value against ``choices``/``ge``/``gt``/``le``/``pattern`` before any training
starts. ``strategies`` names the strategies a key has an effect for (setting it for
another strategy is warned about).
No ``flwr`` import here: the schema is plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from omegaconf import MISSING

# A value that names a file or folder (run.name, run.preset): no separators, no "..", no
# hidden files, short enough for any file system.
PLAIN_NAME = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
GOSSIP = ("gossip_pga",)


def opt(help: str, *, choices=(), ge=None, gt=None, le=None, pattern: str | None = None,
        strategies: tuple = ()):
    """A config field: its help text and allowed values; its default is in base.yaml.
    ``choices``: the allowed values, or a ``registry`` (``registered``) whose names they
    are; ``pattern``: a regular expression the whole (string) value must match;
    ``strategies``: the only strategies the key has an effect for (empty: all)."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "pattern": pattern,
            "strategies": strategies}
    return field(default=MISSING, metadata=meta)


class registered:
    """The names registered in a package's registry (``<module>.names()``), read when a
    value is checked: adding a strategy, task, aggregator or topology does not touch the
    schema. Iterable and ``in``-testable like a tuple of choices."""

    def __init__(self, module: str):
        self.module = module

    def names(self) -> tuple[str, ...]:
        import importlib

        return tuple(importlib.import_module(self.module).names())

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, value) -> bool:
        return value in self.names()

    def __bool__(self) -> bool:
        return True


@dataclass
class RunSection:
    rounds: int = opt("Number of server rounds.", ge=1)
    seed: int = opt("Seed for model init, data split and batch order (0 <= seed < 2^63).", ge=0)
    output_dir: str = opt(
        "Folder that receives one sub-folder per run. Absolute or starting with `~`: "
        "the ServerApp may run in another process with another working directory.",
    )
    name: str = opt(
        "Run folder name inside `output_dir`, a plain name (letters, digits, `.`, `_`, `-`; "
        "not starting with `.`); `auto` = `<time>-<task>-<strategy>-s<seed>`.",
        pattern=PLAIN_NAME,
    )
    preset: str = opt(
        "Experiment preset from `conf/preset/<name>.yaml` (a plain name), applied over the "
        "task and strategy defaults; `none` = no preset.",
        pattern=PLAIN_NAME,
    )
    save_model: bool = opt("Write the final global model to `model.pt`.")
    checkpoint_every: int = opt(
        "Write a checkpoint (global model, strategy state, RNG states) to the run folder's "
        "`checkpoints/` every N completed rounds, and after the last; 0 = never.", ge=0
    )
    keep_checkpoints: int = opt("How many of the newest checkpoints to keep.", ge=1)
    resume: str = opt(
        "A run folder to continue from its last checkpoint until `run.rounds`, in that "
        "folder; `none` = a new run. The folder's config must equal this one but for "
        "`run.rounds`, `run.name`, `run.output_dir` and the `run.*checkpoint*` keys."
    )
    diagnostics: bool = opt(
        "Record the lazy-regime diagnostics of the global model every round: relative "
        "weight change from the initial model (total and per weight matrix), numerical rank "
        "of each weight matrix, ReLU activation flips on the probe set (mlp) and the loss on "
        "the whole training pool.",
    )
    probe_examples: int = opt(
        "Diagnostics: the first N training inputs on which activation flips are counted.", ge=1
    )


@dataclass
class TaskSection:
    name: str = opt(
        "Data set + model family + loss.",
        choices=registered("tasks"),
    )
    loss: str = opt(
        "`auto` = the task's natural loss (cross-entropy; squared error for "
        "`teacher`); `mse` trains a classifier with squared loss on one-hot targets.",
        choices=("auto", "cross_entropy", "mse"),
    )


@dataclass
class DataSection:
    path: str = opt(
        "Data location. fmnist: folder with the IDX files (`auto`: "
        "/usr/share/datasets/fashion-mnist, then torchvision's download); "
        "cifar10: torchvision's `cifar-10-batches-py` folder or the folder holding it "
        "(`auto`: ~/.cache/fedlocal, then torchvision's download); "
        "shakespeare: the tiny-shakespeare `input.txt`.",
    )
    download: bool = opt(
        "Allow downloading fmnist/cifar10/shakespeare when not found locally."
    )
    num_clients: int = opt(
        "Logical clients the training set is split over; 0 = one per SuperNode (the "
        "default). With N > 0 each SuperNode hosts a cohort: of N clients, node p (its "
        "partition-id, of P nodes) hosts those with c % P == p, trains the ones the server "
        "sampled one after the other and replies each client's result separately, so one "
        "message per node and round carries many clients (cross-device scale). A cohort run "
        "equals the run with N SuperNodes of one client each; under gossip_pga the N graph "
        "nodes are the logical clients.",
        ge=0,
    )
    partition: str = opt(
        "How the training set is split over clients. `natural` = by speaking role "
        "(shakespeare only).",
        choices=("iid", "dirichlet", "classes", "natural"),
    )
    alpha: float = opt("Dirichlet concentration (smaller = more skew).", gt=0.0)
    classes_per_client: int = opt("Classes per client for `classes`.", ge=1)
    min_partition_size: int = opt(
        "Smallest client partition the Dirichlet split may produce.", ge=1
    )
    test_fraction: float = opt(
        "Held-out fraction for the server's test set (digits, teacher, "
        "shakespeare; fmnist and cifar10 use their 10k test images).",
        gt=0.0,
        le=0.5,
    )
    max_train: int = opt(
        "Keep only the first N training examples after shuffling (0 = all).", ge=0
    )
    num_samples: int = opt(
        "teacher: number of generated inputs (train + test).", ge=8
    )
    input_dim: int = opt("teacher: input dimension.", ge=1)
    teacher_width: int = opt("teacher: width of the random teacher network.", ge=1)
    teacher_depth: int = opt(
        "teacher: hidden layers of the teacher network.", ge=1
    )
    label_noise: float = opt(
        "teacher: std of Gaussian noise added to the targets.", ge=0.0
    )
    seq_len: int = opt("shakespeare: characters per training sequence.", ge=2)


@dataclass
class ModelSection:
    name: str = opt(
        "`auto` = the task's own model: mlp for digits/fmnist/teacher, cnn for cifar10, "
        "lstm for shakespeare.",
        choices=("auto", "mlp", "cnn", "lstm", "rnn"),
    )
    width: int = opt("Hidden units per layer (mlp, lstm, rnn).", ge=1)
    depth: int = opt("Hidden layers (mlp) or recurrent layers (lstm, rnn).", ge=1)
    embed_dim: int = opt("Character embedding size (lstm, rnn).", ge=1)
    parametrization: str = opt(
        "`standard`: PyTorch layers, He init, biases. `ntk` (mlp with `model.depth` 1 only): "
        "the two-layer network of Du et al. (2019) that Deng, Kamani, Mahdavi (2022) analyse, "
        "f(x) = m^-1/2 sum_r a_r relu(w_r^T x), w_r ~ N(0, I), a_r uniform on {-1, +1}, no "
        "biases; a width-independent step is stable.",
        choices=("standard", "ntk"),
    )
    freeze_output: bool = opt(
        "Keep the output layer at its initial weights (requires_grad off: not trained, not "
        "averaged by the one-process engine; a Flower client returns it unchanged)."
    )


@dataclass
class TrainSection:
    local_steps: int = opt(
        "Optimizer steps per client per round (ignored if local_epochs > 0).", ge=1
    )
    local_epochs: int = opt(
        "If > 0: passes over the client's data per round instead of local_steps.",
        ge=0,
    )
    batch_size: int = opt("Mini-batch size (capped at the client's data size).", ge=1)
    lr: float = opt("SGD learning rate (eta); the peak of `lr_schedule`.", gt=0.0)
    lr_schedule: str = opt(
        "The learning rate eta_r of server round r (Gossip-PGA: iteration r), the same on "
        "every client and in every strategy: `constant` = lr; `step` = lr x lr_decay^floor((r-1)"
        " / lr_step_rounds); `cosine` = from lr down to lr x lr_min_factor over run.rounds; "
        "`warmup_cosine` = linear from lr / lr_warmup_rounds up to lr over the first "
        "lr_warmup_rounds rounds, then cosine. Clipped FedAvg's gamma follows eta "
        "(gamma_r = clip_gamma x eta_r / lr), so the clipping norm gamma/eta stays fixed.",
        choices=("constant", "step", "cosine", "warmup_cosine"),
    )
    lr_decay: float = opt("`step`: the factor eta is multiplied by every lr_step_rounds rounds.",
                          gt=0.0, le=1.0)
    lr_step_rounds: int = opt("`step`: rounds between two decays.", ge=1)
    lr_min_factor: float = opt("`cosine`/`warmup_cosine`: the last round's eta as a fraction "
                               "of lr.", ge=0.0, le=1.0)
    lr_warmup_rounds: int = opt("`warmup_cosine`: rounds of linear warm-up.", ge=0)
    momentum: float = opt("SGD momentum.", ge=0.0, le=0.999)
    weight_decay: float = opt("L2 weight decay added to the gradient.", ge=0.0)
    persist_optimizer_state: bool = opt(
        "Keep momentum buffers on the client across rounds (in context.state) "
        "instead of starting each round from zero.",
    )
    device: str = opt(
        "`auto` = cuda when available, else cpu.", choices=("auto", "cpu", "cuda")
    )
    smoothness_every: int = opt(
        "If > 0: estimate the local smoothness ||g(x') - g(x)|| / ||x' - x|| on every k-th "
        "local step (one extra forward/backward) and report it.",
        ge=0,
    )
    drift_every: int = opt(
        "If > 0: measure the gradient drift max_t ||grad F_k(x_t) - grad F_k(x_0)|| / "
        "||grad F_k(x_0)|| on every k-th local step (F_k = the client's whole data; one extra "
        "full-data gradient per measured step unless batches are the whole data) and report it.",
        ge=0,
    )


@dataclass
class StrategySection:
    name: str = opt(
        "The algorithm (`algorithms/<name>.py`): `fedavg` = FedAvg / Local SGD; "
        "`clipped_fedavg` = CELGC; `naive_clipping` = gradients averaged and clipped on the "
        "server every step; `fedprox` = FedAvg with a proximal term; `gossip_pga` = Gossip-PGA.",
        choices=registered("algorithms"),
    )
    weighting: str = opt(
        "fedavg/clipped_fedavg/naive_clipping: `uniform` = every sound reply weighs 1 "
        "(nothing is read from the reply; the average the Local SGD and CELGC analyses use), "
        "or `examples` = weigh by the `num_examples` each client reports, a positive integer "
        "capped at `strategy.max_examples` (a client decides its own weight up to that cap).",
        choices=("examples", "uniform"),
    )
    max_examples: int = opt(
        "`weighting='examples'`: the most examples one reply may claim; larger claims count as "
        "this many. 0 = no cap (trusts every client's count).",
        ge=0,
    )
    aggregator: str = opt(
        "How the server combines the sound replies (fedavg/clipped_fedavg: the model updates; "
        "naive_clipping: the gradients; gossip_pga: the node models at a global average): "
        "weighted `mean`; coordinate-wise `median`; `trimmed_mean` (`trim_fraction` cut from "
        "each end); `krum` / `multi_krum` (`byzantine` = f); `geometric_median` (smoothed "
        "Weiszfeld); `bgmd` (block-coordinate geometric median with memory, Acharya et al. "
        "2022, `bgmd_fraction`). See docs/robustness.md.",
        choices=registered("strategies.aggregators"),
    )
    trim_fraction: float = opt(
        "`trimmed_mean`: fraction of the replies cut from each end, per coordinate.",
        ge=0.0, le=0.49,
    )
    byzantine: int = opt(
        "`krum`/`multi_krum`: f, the number of attackers to tolerate (Krum scores each reply "
        "by its n - f - 2 nearest others; Multi-Krum averages the n - f best).",
        ge=0,
    )
    gm_tolerance: float = opt(
        "`geometric_median`/`bgmd`: Weiszfeld stops when an iteration moves the estimate by "
        "less than this times the (weighted) median distance of the replies to it.",
        gt=0.0,
    )
    gm_max_iter: int = opt(
        "`geometric_median`/`bgmd`: the most Weiszfeld iterations; an estimate that has not "
        "converged by then is used as it is and reported (`gm_converged` = 0), never zeros.",
        ge=1,
    )
    gm_smoothing: float = opt(
        "`geometric_median`/`bgmd`: nu, the smallest distance Weiszfeld divides by.", gt=0.0
    )
    bgmd_fraction: float = opt(
        "`bgmd`: k/d, the fraction of coordinates (the columns of largest norm) whose "
        "geometric median is taken each round; the rest goes into the server's memory.",
        gt=0.0, le=1.0,
    )
    bgmd_memory: str = opt(
        "`bgmd`: how the residual of the columns left out is remembered: `mean` (the paper's "
        "error feedback; a minority can move it, see docs/robustness.md) or `median` "
        "(coordinate-wise, ours).",
        choices=("mean", "median"),
    )
    pre_aggregation: str = opt(
        "Before the rule: `nnm` replaces each update by the mean of its n - f nearest updates "
        "(Nearest Neighbour Mixing, Allouah et al. 2023; f = `byzantine`, or ceil(n/2) - 1 "
        "when that is 0), which keeps robust rules accurate on heterogeneous data; `none` "
        "feeds the rule the raw updates; `auto` is `nnm` for every rule but `mean`.",
        choices=("auto", "none", "nnm"),
    )
    clip_gamma: float = opt(
        "clipped_fedavg/naive_clipping: gamma in the step x <- x - min(eta, gamma/||g||) g; "
        "the same as clipping g to norm c = gamma/eta, then stepping with eta = train.lr.",
        gt=0.0,
    )
    proximal_mu: float = opt(
        "fedprox: mu, the weight of the proximal term mu/2 ||x - x_global||^2 each client "
        "adds to its local objective (Li et al., MLSys 2020); 0 = FedAvg.",
        ge=0.0, strategies=("fedprox",),
    )
    fraction_train: float = opt(
        "Fraction of connected nodes sampled per round.", gt=0.0, le=1.0
    )
    min_train_nodes: int = opt("Fewest nodes sampled for a round.", ge=1)
    min_available_nodes: int = opt(
        "Nodes that must be connected before a round starts.", ge=1
    )
    min_replies: float = opt(
        "fedavg/clipped_fedavg/naive_clipping: fewest sound replies a round may combine; "
        "below 1 a fraction of the nodes sent work (rounded up), from 1 on a count. A round "
        "with fewer (nodes dropped, timed out, failed or sent unusable replies) stops the run, "
        "and the launcher exits non-zero.",
        gt=0.0,
    )
    fraction_evaluate: float = opt(
        "Fraction of nodes for federated evaluation on their local data "
        "(0 = central evaluation only).",
        ge=0.0,
        le=1.0,
    )
    round_timeout: float = opt(
        "Seconds to wait for the replies of one round.", gt=0.0
    )
    node_wait: float = opt(
        "Seconds the ServerApp waits for `min_available_nodes` SuperNodes (before the run and "
        "before each FedAvg round) before it stops "
        "with an error (instead of waiting forever).",
        gt=0.0,
    )
    topology: str = opt(
        "gossip_pga: the graph whose mixing matrix W the server applies "
        "(`identity` = no gossip, i.e. Local SGD).",
        choices=registered("strategies.topology"),
        strategies=GOSSIP,
    )
    averaging: str = opt(
        "gossip_pga: when to average globally. `periodic` every `period` iterations "
        "(Gossip-PGA), `adaptive` from `period` growing as the loss falls (Gossip-AGA, "
        "our rule: H = ceil(period * sqrt(F_0 / F))), `never` (Gossip SGD).",
        choices=("periodic", "adaptive", "never"),
        strategies=GOSSIP,
    )
    period: int = opt("gossip_pga: H, iterations between global averages (1 = parallel SGD).",
                      ge=1, strategies=GOSSIP)
    edge_probability: float = opt("gossip_pga: edge probability of `erdos_renyi`.",
                                  gt=0.0, le=1.0, strategies=GOSSIP)
    failure_policy: str = opt(
        "gossip_pga: a node that does not answer in time: `stop` the run, or `renormalize` "
        "(drop it and rebuild W on the remaining graph with Metropolis-Hastings weights).",
        choices=("stop", "renormalize"),
        strategies=GOSSIP,
    )
    min_gossip_nodes: int = opt(
        "gossip_pga with `failure_policy='renormalize'`: the run stops when fewer graph "
        "nodes than this would remain.",
        ge=1,
        strategies=GOSSIP,
    )
    evaluate_nodes: bool = opt(
        "gossip_pga: also evaluate every node's own model on the test set each round "
        "(mean over nodes).",
        strategies=GOSSIP,
    )


@dataclass
class AttackSection:
    kind: str = opt(
        "Simulated attackers, for research and tests (the server is never told who they "
        "are). An attacker that trained x_i from x sends x + s (x_i - x): `sign_flip` s = "
        "-`scale`, `scale` s = +`scale`; `gaussian` adds N(0, `std`^2) noise to x_i; "
        "`zero_model` sends zeros; `weight_inflation` trains honestly but claims "
        "`claimed_examples`; `free_rider` sends x back untrained; `nan` sends NaN. "
        "naive_clipping: the same on the gradient (x = 0).",
        choices=("none", "sign_flip", "scale", "gaussian", "zero_model", "weight_inflation",
                 "free_rider", "nan"),
    )
    fraction: float = opt(
        "Fraction of the clients that attack: those with the lowest partition-ids "
        "(floor(fraction x num-partitions)).",
        ge=0.0, le=1.0,
    )
    scale: float = opt("`sign_flip`/`scale`: the factor s applied to the update.", gt=0.0)
    std: float = opt("`gaussian`: the noise's standard deviation.", ge=0.0)
    claimed_examples: int = opt("`weight_inflation`: the `num_examples` an attacker claims.", ge=1)


@dataclass
class EvalSection:
    batch_size: int = opt("Batch size for evaluation.", ge=1)


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    task: TaskSection = field(default_factory=TaskSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    strategy: StrategySection = field(default_factory=StrategySection)
    attack: AttackSection = field(default_factory=AttackSection)
    eval: EvalSection = field(default_factory=EvalSection)


def iter_fields(cls=Config, prefix: str = ""):
    """Yield ``(dotted_key, dataclass_field)`` for every leaf of the schema."""
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        if f.metadata.get("help") is None and f.default_factory is not None:  # section
            yield from iter_fields(f.default_factory, key + ".")
        else:
            yield key, f
