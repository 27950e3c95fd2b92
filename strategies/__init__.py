"""Server strategies: Flower strategies extended through their hooks, plus pure math."""

from __future__ import annotations


def build_strategy(cfg, run_config):
    """The strategy named by ``strategy.name``, configured from the typed config.
    ``run_config`` is the resolved config as a ConfigRecord, sent along to clients."""
    s = cfg.strategy
    if s.name == "fedavg":
        from strategies.fedavg import FedAvg

        return FedAvg(
            run_config,
            fraction_train=s.fraction_train,
            fraction_evaluate=s.fraction_evaluate,
            min_train_nodes=s.min_train_nodes,
            min_evaluate_nodes=s.min_train_nodes if s.fraction_evaluate > 0 else 0,
            min_available_nodes=s.min_available_nodes,
        )
    raise ValueError(f"Unknown strategy {s.name!r}.")
