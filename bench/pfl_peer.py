"""Apple's pfl-research as a peer (the benchmark's ``pfl`` system): FedAvg in pfl's own
simulator, fed fedlocal's client splits, timed round by round.

pfl-research (PyPI ``pfl``; ``pip install -e ".[bench]"``, 0.6.0 was the one measured) is
an optional extra: where it is not installed the row is skipped with a note
(``available``). It runs in a process of its own, like every other system:

    python -m bench.pfl_peer --clients 10 --rounds 5 \\
        --overrides '{"task.name": "fmnist", "strategy.weighting": "examples"}' --out a.json

What pfl gets from fedlocal: the clients' splits (``tasks.federation``, the same rows),
the model (``tasks.make_model``: the same architecture and initial weights), the loss,
each round's clients (``algorithms.base.sampled_clients``, fed to pfl as its user sampler), the
learning rate, batch size and local epochs of ``round_settings``, the weighting
(``strategy.weighting``: pfl's ``WeightByDatapoints`` or ``WeightByUser``) and the
central evaluation after every round (pfl's ``model.evaluate`` on the task's test
set, ``eval.batch_size`` rows a batch). pfl walks a client's rows in the order it is
given them, every round the same (on fedlocal's fmnist splits that reached only 0.63
accuracy), so each round each client's rows are handed to pfl in the order of the first
permutation fedlocal's own loop draws for that client and round
(``torch.randperm`` seeded with ``round_seed(run.seed, client, round)``, as
``client.train.BatchStream``). Its batches are then fedlocal's, except the last of an
epoch: pfl takes the rows left over (a short batch), fedlocal a full batch of a fresh
permutation. pfl trains with plain ``torch.optim.SGD`` and applies the weighted mean of
the model differences with a central SGD step of size 1, in one process with
``--threads`` torch threads (default: one per core).

Refused (ValueError): algorithms other than fedavg, aggregators other than the mean,
local steps instead of epochs, learning-rate schedules, momentum and weight decay.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

NOTE = 'not run: pfl-research is not installed (pip install -e ".[bench]")'


def available() -> bool:
    """Whether pfl-research can be imported here."""
    return importlib.util.find_spec("pfl") is not None


def check(cfg) -> None:
    """Refuse what this peer does not reproduce (ValueError naming the key)."""
    t, s = cfg.train, cfg.strategy
    refused = {
        "strategy.name": (s.name, "fedavg"), "strategy.aggregator": (s.aggregator, "mean"),
        "train.lr_schedule": (t.lr_schedule, "constant"), "train.momentum": (t.momentum, 0.0),
        "train.weight_decay": (t.weight_decay, 0.0),
    }
    for key, (value, wanted) in refused.items():
        if value != wanted:
            raise ValueError(f"bench.pfl_peer runs only {key}={wanted!r}, got {value!r}.")
    if t.local_epochs < 1:
        raise ValueError("bench.pfl_peer runs local epochs (train.local_epochs >= 1).")


def timed_run(overrides: dict, clients: int, rounds: int, threads: int = 0) -> dict:
    """``rounds`` rounds of FedAvg in pfl-research on fedlocal's ``clients`` splits."""
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints, WeightByUser
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics, StringMetricName, Weighted
    from pfl.model.pytorch import PyTorchModel

    import tasks
    from algorithms.base import sampled_clients
    from algorithms.settings import round_settings
    from client.train import round_seed
    from conf import load_config

    start = time.perf_counter()
    cfg = load_config(overrides)
    check(cfg)
    data, loss_fn, splits, net = tasks.federation(cfg, clients)
    schedule = sampled_clients(cfg, clients, rounds)
    settings = round_settings(cfg, 1)  # constant over the rounds (check)

    class Module(torch.nn.Module):
        """fedlocal's model with the two methods pfl asks of one."""

        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

        def loss(self, x, y, eval=False):  # noqa: A002 (pfl's keyword)
            self.train(not eval)
            return loss_fn(self.net(x), y)

        @torch.no_grad()
        def metrics(self, x, y, eval=False):  # noqa: A002
            self.train(not eval)
            out = self.net(x)
            n = len(y)
            return {"loss": Weighted(float(loss_fn(out, y)) * n, n),
                    "accuracy": Weighted(float((out.argmax(-1) == y).sum()), n)}

    order = iter([(r, i) for r, chosen in enumerate(schedule, start=1) for i in chosen])

    def user(key):
        r, i = key
        split = splits[i]
        generator = torch.Generator().manual_seed(round_seed(cfg.run.seed, i, r))
        perm = torch.randperm(len(split), generator=generator)
        return Dataset(raw_data=[split.x[perm], split.y[perm]], user_id=str(i))

    marks: list[float] = []
    accuracy: list[float | None] = []

    class Clock(TrainingProcessCallback):
        """Marks the start of training and the end of every round, after evaluating the
        new model on the test set as pfl's ``CentralEvaluationCallback`` does (which
        skips the first round and evaluates the initial model instead)."""

        def on_train_begin(self, *, model):
            marks.append(time.perf_counter())
            return Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            metrics = model.evaluate(test, name_formatting_fn=lambda n: StringMetricName(
                f"Central val | {n}"), eval_params=evaluation)
            marks.append(time.perf_counter())
            accuracy.append(float(metrics.to_simple_dict()["Central val | accuracy"]))
            return False, metrics

    module = Module()
    model = PyTorchModel(model=module, local_optimizer_create=torch.optim.SGD,
                         central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0))
    backend = SimulatedBackend(
        training_data=FederatedDataset(user, lambda: next(order)),
        val_data=FederatedDataset(user, lambda: next(order)),  # never sampled: no val cohort
        postprocessors=[WeightByDatapoints() if cfg.strategy.weighting == "examples"
                        else WeightByUser()])
    params = NNAlgorithmParams(central_num_iterations=rounds,
                               evaluation_frequency=rounds + 1,  # no per-client evaluation
                               train_cohort_size=len(schedule[0]), val_cohort_size=None)
    train = NNTrainHyperParams(local_num_epochs=settings.local_epochs,
                               local_learning_rate=settings.lr,
                               local_batch_size=settings.batch_size)
    evaluation = NNEvalHyperParams(local_batch_size=cfg.eval.batch_size)
    test = Dataset(raw_data=[data.test.x, data.test.y])
    FederatedAveraging().run(
        algorithm_params=params, backend=backend, model=model, model_train_params=train,
        model_eval_params=evaluation,
        callbacks=[Clock()],
        send_metrics_to_platform=False)
    import pfl.version

    return {
        "startup": marks[0] - start,
        "round_seconds": [b - a for a, b in zip(marks, marks[1:])],
        "examples_per_round": [sum(len(splits[i]) for i in chosen) for chosen in schedule],
        "test_accuracy": accuracy,
        "final_test_accuracy": accuracy[-1] if accuracy else None,
        "torch_threads": torch.get_num_threads(),
        "pfl": pfl.version.__version__,
        "wall": time.perf_counter() - start,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of pfl's one process (default 0: one per core)")
    parser.add_argument("--overrides", default="{}", help="fedlocal config overrides as JSON")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = timed_run(json.loads(args.overrides), args.clients, args.rounds, args.threads)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, default=float)


if __name__ == "__main__":
    main()
