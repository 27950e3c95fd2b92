"""Run folders: never overwritten, one JSON record per round, a summary even on failure."""

from __future__ import annotations

import json
import math

import torch
import yaml

from conf import load_config
from server.results import RunFolder, read_metrics


def test_folders_are_never_overwritten_and_hold_the_config(tmp_path):
    cfg = load_config({"run.output_dir": str(tmp_path), "run.name": "same", "train.lr": 0.2})
    first, second = RunFolder(cfg), RunFolder(cfg)
    assert (first.path.name, second.path.name) == ("same", "same-1")
    assert yaml.safe_load((first.path / "config.yaml").read_text())["train"]["lr"] == 0.2


def test_round_records_and_summary(tmp_path):
    folder = RunFolder(load_config({"run.output_dir": str(tmp_path)}))
    folder.record_round(0, {"loss": 2.3, "accuracy": 0.1}, {})
    folder.record_round(1, {"loss": 1.0, "accuracy": 0.6}, {"train_loss": 1.2, "bytes_sent": 10})
    folder.record_round(2, {"loss": math.nan, "accuracy": 0.7}, {"train_loss": 0.9, "bytes_sent": 10})
    records = read_metrics(folder.path)
    assert [r["round"] for r in records] == [1, 2]  # round 0 is the initial evaluation
    assert records[0]["train_loss"] == 1.2 and records[1]["test_loss"] is None  # NaN -> null
    summary = folder.finish({"w": torch.ones(2)})
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["best_test_accuracy"] == 0.7 and summary["bytes_sent"] == 20
    assert summary["initial"]["test_accuracy"] == 0.1
    assert torch.equal(torch.load(folder.path / "model.pt")["w"], torch.ones(2))
    assert json.loads((folder.path / "summary.json").read_text()) == summary


def test_a_failed_run_keeps_its_records_and_says_why(tmp_path):
    folder = RunFolder(load_config({"run.output_dir": str(tmp_path)}))
    folder.record_round(1, {"loss": 1.0}, {})
    summary = folder.finish(None, error="NodeFailure: graph node(s) [3] did not answer")
    assert summary["status"] == "failed" and "did not answer" in summary["error"]
    assert not (folder.path / "model.pt").exists() and len(read_metrics(folder.path)) == 1


def test_too_few_supernodes_is_an_error_not_a_hang():
    import pytest

    from strategies.fedavg import wait_for_nodes

    class Grid:
        def __init__(self, ids):
            self.ids = ids

        def get_node_ids(self):
            return self.ids

    assert wait_for_nodes(Grid([1, 2, 3]), 2, timeout=0.1) == 3
    with pytest.raises(RuntimeError, match=r"Only 1 SuperNode.*strategy.min_available_nodes = 4"):
        wait_for_nodes(Grid([1]), 4, timeout=0.05, poll=0.01)
