"""Server strategies: Flower strategies extended through their hooks, plus pure math."""

from __future__ import annotations


def build_aggregator(cfg):
    """The aggregation rule named by ``strategy.aggregator``, with its settings."""
    from strategies.aggregators import make_aggregator

    s = cfg.strategy
    return make_aggregator(s.aggregator, trim_fraction=s.trim_fraction, byzantine=s.byzantine,
                           gm_tolerance=s.gm_tolerance, gm_max_iter=s.gm_max_iter,
                           gm_smoothing=s.gm_smoothing, bgmd_fraction=s.bgmd_fraction,
                           bgmd_memory=s.bgmd_memory, pre_aggregation=s.pre_aggregation)


def build_strategy(cfg, run_config, num_nodes: int | None = None, evaluate_nodes=None):
    """The strategy named by ``strategy.name``, configured from the typed config.
    ``run_config`` is the resolved config as a ConfigRecord, sent along to clients;
    ``num_nodes`` (the graph size) and ``evaluate_nodes`` are for gossip_pga."""
    s = cfg.strategy
    sampling = {
        "weighting": s.weighting,
        "max_examples": s.max_examples,
        "aggregator": build_aggregator(cfg),
        "min_replies": s.min_replies,
        "node_wait": s.node_wait,
        "fraction_train": s.fraction_train,
        "fraction_evaluate": s.fraction_evaluate,
        "min_train_nodes": s.min_train_nodes,
        "min_evaluate_nodes": s.min_train_nodes if s.fraction_evaluate > 0 else 0,
        "min_available_nodes": s.min_available_nodes,
    }
    t = cfg.train
    if s.name == "fedavg":
        from strategies.fedavg import FedAvg

        return FedAvg(run_config, **sampling)
    if s.name == "clipped_fedavg":
        from strategies.clipped import ClippedFedAvg

        if t.local_epochs > 0:
            raise ValueError("clipped_fedavg counts I in steps: set train.local_steps, not local_epochs.")
        return ClippedFedAvg(run_config, lr=t.lr, clip_gamma=s.clip_gamma,
                             local_steps=t.local_steps, **sampling)
    if s.name == "naive_clipping":
        from strategies.clipped import NaiveClipping

        return NaiveClipping(run_config, lr=t.lr, clip_gamma=s.clip_gamma, momentum=t.momentum,
                             weight_decay=t.weight_decay, **sampling)
    if s.name == "gossip_pga":
        from strategies.gossip import GossipPGA
        from strategies.schedule import AveragingSchedule
        from strategies.topology import build_topology

        if num_nodes is None:
            raise ValueError("gossip_pga needs the number of nodes to build its graph.")
        return GossipPGA(
            run_config,
            num_nodes=num_nodes,
            mixing=build_topology(s.topology, num_nodes, seed=cfg.run.seed, p=s.edge_probability),
            schedule=AveragingSchedule(s.averaging, s.period),
            failure_policy=s.failure_policy,
            evaluate_nodes=evaluate_nodes if s.evaluate_nodes else None,
            aggregator=build_aggregator(cfg),
            min_nodes=s.min_gossip_nodes,
        )
    raise ValueError(f"Unknown strategy {s.name!r}.")
