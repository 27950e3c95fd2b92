"""The Flower side of the server: two drivers over the algorithms (``algorithms``), plus
the pure math they share (aggregation rules, topologies, the averaging schedule, reply
checks).

``strategies.fedavg.FedAvg`` drives every server-centred algorithm, ``strategies.gossip.
GossipPGA`` every decentralized one (``Algorithm.decentralized``): which one runs is the
algorithm's property, not a name check.
"""

from __future__ import annotations


def build_aggregator(cfg):
    """The aggregation rule named by ``strategy.aggregator``, with its settings."""
    from strategies.aggregators import make_aggregator

    s = cfg.strategy
    return make_aggregator(s.aggregator, trim_fraction=s.trim_fraction, byzantine=s.byzantine,
                           gm_tolerance=s.gm_tolerance, gm_max_iter=s.gm_max_iter,
                           gm_smoothing=s.gm_smoothing, bgmd_fraction=s.bgmd_fraction,
                           bgmd_memory=s.bgmd_memory, pre_aggregation=s.pre_aggregation)


def build_strategy(cfg, run_config, num_nodes: int | None = None, evaluate_nodes=None,
                   algorithm=None):
    """The Flower driver for the algorithm ``strategy.name`` (``algorithms.get``),
    configured from the typed config. ``run_config`` is the resolved config as a
    ConfigRecord, sent along to clients; ``num_nodes`` (the graph size) and
    ``evaluate_nodes`` are for decentralized algorithms; ``algorithm`` an algorithm
    object built already (default: from the config)."""
    import algorithms

    s = cfg.strategy
    if algorithm is None:
        algorithm = algorithms.get(s.name)(cfg, num_nodes=num_nodes)
    if algorithm.decentralized:
        from strategies.gossip import GossipPGA

        return GossipPGA(cfg, run_config, algorithm, failure_policy=s.failure_policy,
                         evaluate_nodes=evaluate_nodes if s.evaluate_nodes else None,
                         aggregator=build_aggregator(cfg), min_nodes=s.min_gossip_nodes)
    from strategies.fedavg import FedAvg

    return FedAvg(
        cfg, run_config, algorithm,
        weighting=s.weighting,
        max_examples=s.max_examples,
        aggregator=build_aggregator(cfg),
        min_replies=s.min_replies,
        node_wait=s.node_wait,
        fraction_train=s.fraction_train,
        fraction_evaluate=s.fraction_evaluate,
        min_train_nodes=s.min_train_nodes,
        min_evaluate_nodes=s.min_train_nodes if s.fraction_evaluate > 0 else 0,
        min_available_nodes=s.min_available_nodes,
        num_clients=cfg.data.num_clients,
    )
