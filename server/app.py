"""fedlocal ServerApp: parse the config once, build the strategy, evaluate centrally,
write the run folder.

Flower-facing code only. The config funnel (``conf``) takes the user's overrides as
Flower received them (``--run-config``); the strategy comes from ``strategies``; data,
model and evaluation from ``tasks``; the run folder from ``server.results``.
"""

from __future__ import annotations

import time
from logging import ERROR, INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

import algorithms
import tasks
from conf import ConfigError, check_nodes, load_config, to_flat
from results import metrics as M
from server.checkpoint import checkpoint_state, open_resume, save_checkpoint, set_rng_state
from server.grid import PollingGrid
from server.results import RunFolder
from strategies import build_strategy
from strategies.fedavg import wait_for_nodes
from strategies.topology import beta
from tasks.diagnostics import Tracker

app = ServerApp()


def user_overrides(grid: Grid, context: Context) -> dict:
    """What the user set with ``--run-config``. Flower's ``context.run_config`` also holds
    every ``[tool.flwr.app.config]`` default from pyproject.toml, which would flatten the
    task/strategy/preset layers, so take the run's own override dict where there is one."""
    try:
        return dict(grid.run.override_config)
    except (AttributeError, RuntimeError):
        log(WARNING, "Run overrides unavailable; using the full run_config as overrides.")
        return dict(context.run_config)


def progress_line(record: dict, rounds: int) -> str:
    parts = [f"round {record[M.ROUND]}/{rounds}"]
    for key, label in ((M.TRAIN_LOSS, "train_loss"), (M.TEST_LOSS, "test_loss"),
                       (M.TEST_ACCURACY, "test_acc"), (M.TEST_PERPLEXITY, "test_ppl")):
        if record.get(key) is not None:
            parts.append(f"{label} {record[key]:.4f}")
    parts.append(f"{record[M.SECONDS]:.1f} s")
    return " | ".join(parts)


def diagnostics_of(tracker: Tracker | None, model, data, loss_fn, cfg) -> dict[str, float]:
    """``run.diagnostics``: the tracker's measures plus the loss on the whole training
    pool (the objective F(x_bar) the clients jointly minimise); nothing when off."""
    if tracker is None:
        return {}
    out = tracker.measure(model)
    out[M.GLOBAL_TRAIN_LOSS] = tasks.evaluate(model, data.train, loss_fn, data.kind,
                                              cfg.eval.batch_size)["loss"]
    return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_config(user_overrides(grid, context))
    grid = PollingGrid(grid)  # replies polled every 0.1 s (deployment) / 0.01 s, not 3 s / 0.1 s
    spec = tasks.task_spec(cfg)
    # the training pool only for diagnostics: otherwise the server holds the test set alone
    data = tasks.load_task(cfg) if cfg.run.diagnostics else None
    test_set = data.test if data is not None else tasks.load_test_set(cfg)
    model = tasks.make_model(cfg, spec).to(tasks.pick_device(cfg.train.device))
    loss_fn = tasks.make_loss(cfg, spec)
    checkpoint = None
    if cfg.run.resume != "none":
        path, checkpoint = open_resume(cfg)
        folder = RunFolder.resumed(cfg, path, checkpoint)
        log(INFO, "fedlocal: resuming %s after round %d of %d", folder.path, checkpoint["round"],
            cfg.run.rounds)
    else:
        folder = RunFolder(cfg)
    log(INFO, "fedlocal: %s on %s, %d rounds; results go to %s",
        cfg.strategy.name, cfg.task.name, cfg.run.rounds, folder.path)
    connected = wait_for_nodes(grid, cfg.strategy.min_available_nodes, cfg.strategy.node_wait)
    try:  # node counts the federation cannot meet, with the nodes connected now (more may come)
        check_nodes(cfg.strategy, connected, cfg.data.num_clients)
    except ConfigError as err:
        log(WARNING, "fedlocal: with the %d node(s) connected now: %s", connected, err)
    num_nodes = evaluate_nodes = None
    if algorithms.get(cfg.strategy.name).decentralized:  # one model per node, on a graph
        num_nodes = cfg.data.num_clients or connected  # cohorts: the logical clients

        def evaluate_nodes(records: list[ArrayRecord]) -> dict[str, float]:
            results = []
            for record in records:
                model.load_state_dict(record.to_torch_state_dict())
                results.append(tasks.evaluate(model, test_set, loss_fn, spec.kind, cfg.eval.batch_size))
            return {M.TEST_PREFIX + key: sum(r[key] for r in results) / len(results) for key in results[0]}

    strategy = build_strategy(cfg, ConfigRecord(to_flat(cfg)), num_nodes, evaluate_nodes)
    tracker = None
    if cfg.run.diagnostics:
        tracker = Tracker(model, data.train.x[: cfg.run.probe_examples])
    if num_nodes is not None:
        log(INFO, "fedlocal: gossip graph %s on %d nodes, beta = ||W - 11^T/n||_2 = %.4f",
            cfg.strategy.topology, num_nodes, beta(strategy.mixing(0)))

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        test = tasks.evaluate(model, test_set, loss_fn, spec.kind, cfg.eval.batch_size)
        diagnostics = diagnostics_of(tracker, model, data, loss_fn, cfg)
        train = {**strategy.round_metrics.get(server_round, {}), **diagnostics}
        record = folder.record_round(server_round, test, train)
        if server_round > 0:
            log(INFO, "fedlocal: %s", progress_line(record, cfg.run.rounds))
        return MetricRecord({**test, **diagnostics})

    initial = ArrayRecord(model.state_dict())
    if checkpoint is not None:
        initial = ArrayRecord(checkpoint["model"])
        strategy.load_state_dict(checkpoint["strategy"])
        set_rng_state(checkpoint["rng"])
    last_good = {"arrays": initial}

    def after_round(server_round: int, arrays: ArrayRecord) -> None:
        last_good["arrays"] = arrays
        every = cfg.run.checkpoint_every
        if every and (server_round % every == 0 or server_round == cfg.run.rounds):
            state = checkpoint_state(server_round, arrays.to_torch_state_dict(), strategy,
                                     folder.records, folder.initial,
                                     time.perf_counter() - folder.started)
            save_checkpoint(folder.path, server_round, state, keep=cfg.run.keep_checkpoints)

    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=cfg.run.rounds,
            timeout=cfg.strategy.round_timeout,
            train_config=ConfigRecord(),
            evaluate_fn=central_evaluate,
            first_round=checkpoint["round"] + 1 if checkpoint is not None else 1,
            after_round=after_round,
        )
    except Exception as err:  # keep what the run produced, say why it stopped
        folder.finish(last_good["arrays"].to_torch_state_dict(), error=f"{type(err).__name__}: {err}")
        log(ERROR, "fedlocal: the run stopped: %s; the last good global model and the records "
            "so far are in %s", err, folder.path)
        raise
    final = result.arrays.to_torch_state_dict() if result.arrays is not None else None
    if hasattr(strategy, "node_state"):
        folder.save_node_models({i: r.to_torch_state_dict() for i, r in strategy.node_state().items()})
    summary = folder.finish(final)
    log(INFO, "fedlocal: done in %.1f s; final %s", summary["seconds"],
        {k: v for k, v in summary["final"].items() if k.startswith("test_")})
    if summary["failures"]:
        log(WARNING, "fedlocal: status %s: replies failed or were rejected in round(s) %s "
            "(counts in summary.json; reasons in the log above)", summary["status"],
            ", ".join(summary["failures"]))
    log(INFO, "fedlocal: results in %s", folder.path)
