"""Checkpoint files, the resume checks, and every strategy's state round trip (fast; the
bit-exact runs are in test_resume.py)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from conf import ConfigError, load_config, to_yaml
from server.checkpoint import (
    checkpoints,
    config_differences,
    load_checkpoint,
    open_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from server.results import RunFolder
from strategies.fedavg import canonical_order
from strategies.replies import Reply


def test_checkpoints_are_written_whole_and_only_the_newest_are_kept(tmp_path):
    for r in range(1, 6):
        save_checkpoint(tmp_path, r, {"round": r, "x": np.full(3, r)}, keep=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["round-000004.pt", "round-000005.pt"]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    np.testing.assert_array_equal(load_checkpoint(checkpoints(tmp_path)[-1])["x"], [5, 5, 5])
    # round 10 sorts after round 9 (numbers, not names)
    save_checkpoint(tmp_path, 10, {"round": 10}, keep=5)
    assert checkpoints(tmp_path)[-1].name == "round-000010.pt"


def test_rng_states_round_trip():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_config_differences_ignore_only_the_resumable_keys():
    saved = {"run.rounds": 3, "run.name": "a", "train.lr": 0.1, "run.resume": "none"}
    assert config_differences(saved, {**saved, "run.rounds": 9, "run.name": "b", "run.resume": "/x"}) == []
    assert config_differences(saved, {**saved, "train.lr": 0.2, "run.seed": 1}) == ["run.seed", "train.lr"]


def make_run(tmp_path, rounds=3, **overrides):
    cfg = load_config({"run.output_dir": str(tmp_path), "run.name": "r", "run.rounds": rounds, **overrides})
    folder = RunFolder(cfg)
    for r in range(1, rounds + 1):
        folder.record_round(r, {"loss": 1.0 / r}, {})
    save_checkpoint(folder.path, rounds, {"round": rounds, "records": folder.records, "initial": {},
                                         "elapsed": 5.0})
    return folder.path


def test_open_resume_refuses_what_cannot_continue_and_names_why(tmp_path):
    path = make_run(tmp_path)
    ok = load_config({"run.output_dir": str(tmp_path), "run.rounds": 5, "run.resume": str(path)})
    assert open_resume(ok)[1]["round"] == 3
    cases = [
        ({"run.resume": str(tmp_path / "nope")}, "is not a fedlocal run folder"),
        ({"run.resume": str(path), "train.lr": 0.5}, "train.lr (0.05 there, 0.5 now)"),
        ({"run.resume": str(path), "run.rounds": 2}, "would shorten it"),
        ({"run.resume": str(path), "train.persist_optimizer_state": True, "train.momentum": 0.9},
         "context.state"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            open_resume(load_config({"run.output_dir": str(tmp_path), "run.rounds": 5, **overrides}))
    for p in checkpoints(path):
        p.unlink()
    with pytest.raises(ConfigError, match="has no checkpoint"):
        open_resume(ok)


def test_a_cosine_schedule_may_resume_but_not_be_extended(tmp_path):
    """The cosine runs over run.rounds: extending a run would rewrite the learning rate of
    the rounds already run; a step schedule does not depend on run.rounds."""
    for schedule in ("cosine", "warmup_cosine"):
        path = make_run(tmp_path / schedule, rounds=3, **{"train.lr_schedule": schedule})
        same = {"run.output_dir": str(tmp_path), "run.resume": str(path), "train.lr_schedule": schedule}
        assert open_resume(load_config({**same, "run.rounds": 3}))[1]["round"] == 3
        with pytest.raises(ConfigError, match="cosine runs over run.rounds"):
            open_resume(load_config({**same, "run.rounds": 5}))
    path = make_run(tmp_path / "step", rounds=3, **{"train.lr_schedule": "step"})
    assert open_resume(load_config({"run.output_dir": str(tmp_path), "run.resume": str(path),
                                    "train.lr_schedule": "step", "run.rounds": 5}))[1]["round"] == 3


def test_a_resumed_folder_keeps_the_checkpoints_rounds_only(tmp_path):
    """A server killed after logging round 4 but before its checkpoint: round 4 is run again,
    so metrics.jsonl must not hold it twice."""
    path = make_run(tmp_path)
    with open(path / "metrics.jsonl", "a") as handle:
        handle.write('{"round": 4}\n')
    cfg = load_config({"run.output_dir": str(tmp_path), "run.rounds": 5, "run.resume": str(path)})
    folder = RunFolder.resumed(cfg, path, open_resume(cfg)[1])
    folder.record_round(4, {"loss": 0.25}, {})
    lines = (path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3, 4]
    assert folder.records[-1]["elapsed"] >= 5.0  # the clock continues
    assert (path / "config.yaml").read_text() == to_yaml(cfg)


def reply(values) -> Reply:
    return Reply(arrays={"w": np.asarray(values, np.float32)}, metrics={})


def test_canonical_order_does_not_depend_on_node_ids_or_arrival():
    rows = [[1.0, 2.0], [3.0, -1.0], [0.5, 0.25], [7.0, 7.0]]
    a = canonical_order({10 + i: (reply(r), float(i + 1)) for i, r in enumerate(rows)})
    b = canonical_order({99 - i: (reply(r), float(i + 1)) for i, r in reversed(list(enumerate(rows)))})
    np.testing.assert_array_equal(a[3], b[3])
    np.testing.assert_array_equal(a[2], b[2])
    assert sorted(map(tuple, a[3])) == sorted(map(tuple, np.asarray(rows)))


def strategy_of(**overrides):
    from strategies import build_strategy

    cfg = load_config(overrides)
    return build_strategy(cfg, ConfigRecord({}), num_nodes=4 if cfg.strategy.name == "gossip_pga" else None)


@pytest.mark.parametrize("overrides", [
    {"strategy.aggregator": "bgmd"},
    {"strategy.name": "naive_clipping", "train.momentum": 0.9},
    {"strategy.name": "gossip_pga", "strategy.averaging": "adaptive"},
])
def test_strategy_state_round_trips_through_a_checkpoint(tmp_path, overrides):
    """Fill each strategy's state as a run would, save it, load it into a fresh strategy:
    every field equal, and the loaded state is a copy (the saver may go on)."""
    s = strategy_of(**overrides)
    s.bytes_total, s.round_metrics = 1234, {1: {"train_loss": 0.5}}
    rng = np.random.default_rng(0)
    if overrides.get("strategy.aggregator") == "bgmd":
        s.aggregator.memory = rng.normal(size=7)
    if "train.momentum" in overrides:
        s.algorithm.buffers = [torch.randn(3, 2), torch.randn(2)]
    if overrides.get("strategy.name") == "gossip_pga":
        s.X = rng.normal(size=(4, 5)).astype(np.float32)
        s.layout, s.active = {"w": ((5,), "float32")}, [0, 2, 3]
        s.node_of = {0: 11, 2: 12, 3: 13}
        schedule = s.algorithm.schedule
        schedule.is_global(schedule.next_global, 2.0)
        schedule.is_global(schedule.next_global, 0.5)  # the loss fell 4x: the period doubles
    save_checkpoint(tmp_path, 1, {"strategy": s.state_dict()})
    fresh = strategy_of(**overrides)
    fresh.load_state_dict(load_checkpoint(checkpoints(tmp_path)[-1])["strategy"])
    assert fresh.bytes_total == 1234 and fresh.round_metrics == {1: {"train_loss": 0.5}}
    if overrides.get("strategy.aggregator") == "bgmd":
        np.testing.assert_array_equal(fresh.aggregator.memory, s.aggregator.memory)
    if "train.momentum" in overrides:
        pairs = zip(fresh.algorithm.buffers, s.algorithm.buffers, strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)
    if overrides.get("strategy.name") == "gossip_pga":
        np.testing.assert_array_equal(fresh.X, s.X)
        assert fresh.active == [0, 2, 3] and fresh.layout == s.layout
        assert vars(fresh.algorithm.schedule) == vars(schedule) and schedule.period != schedule.initial_period
        assert fresh.node_of == {}  # node ids change across a restart: asked again


def test_the_checkpoint_cost_benchmark_measures_the_whole_state():
    """bench.checkpoint_cost: gossip-digits' checkpoint holds all 16 node models."""
    from bench.checkpoint_cost import measure

    row = measure("gossip-digits", repeats=2)
    assert row["checkpoint_bytes"] > 16 * row["model_bytes"] and row["seconds_median"] > 0
