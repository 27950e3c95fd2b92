"""A run folder: ``config.yaml``, ``metrics.jsonl`` (one record per round), ``summary.json``
and ``model.pt``. Plain Python + torch; no flwr. Plots read only these files."""

from __future__ import annotations

import json
import math
import platform
import time
from datetime import datetime
from pathlib import Path

from conf import to_yaml
from results import metrics as M

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, MODEL_FILE, NODE_MODELS_FILE = (
    "config.yaml", "metrics.jsonl", "summary.json", "model.pt", "node_models.pt",
)


def _clean(value):
    """JSON-safe numbers: NaN/inf become null (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_name(cfg, now: datetime | None = None) -> str:
    if cfg.run.name != "auto":
        return cfg.run.name
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{cfg.task.name}-{cfg.strategy.name}-s{cfg.run.seed}"


class RunFolder:
    """Creates a fresh folder (never overwrites one) and appends round records to it;
    ``RunFolder.resumed`` reopens one at a checkpoint."""

    @classmethod
    def resumed(cls, cfg, path: Path, checkpoint: dict) -> RunFolder:
        """The folder of a run that continues after ``checkpoint``'s round: its records are
        the checkpoint's (metrics.jsonl is rewritten to them, so rounds logged after the
        checkpoint are run again, not duplicated) and its clock continues."""
        folder = cls.__new__(cls)
        folder.path, folder.cfg = Path(path), cfg
        (folder.path / CONFIG_FILE).write_text(to_yaml(cfg))
        folder.records = [dict(r) for r in checkpoint["records"]]
        folder.initial = dict(checkpoint["initial"])
        tmp = folder.path / f".{METRICS_FILE}.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in folder.records), encoding="utf-8")
        tmp.replace(folder.path / METRICS_FILE)
        folder.started = time.perf_counter() - float(checkpoint["elapsed"])
        folder.last = time.perf_counter()
        return folder

    def __init__(self, cfg):
        root = Path(cfg.run.output_dir).expanduser()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"Cannot create run.output_dir {root}: {err}") from err
        base = root / run_name(cfg)
        path, n = base, 0
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:
                n += 1
                path = base.with_name(f"{base.name}-{n}")
        self.path = path
        self.cfg = cfg
        (path / CONFIG_FILE).write_text(to_yaml(cfg))
        self.started = time.perf_counter()
        self.last = self.started
        self.records: list[dict] = []
        self.initial: dict = {}

    def record_round(self, server_round: int, test: dict, train: dict) -> dict:
        """Append the round's record to metrics.jsonl (flushed at once) and return it."""
        now = time.perf_counter()
        record = {M.ROUND: server_round, M.SECONDS: now - self.last, M.ELAPSED: now - self.started}
        self.last = now
        record.update({M.TEST_PREFIX + k: v for k, v in test.items()})
        record.update(train)  # the strategy's round metrics, named in results.metrics
        record = {k: _clean(v) for k, v in record.items()}
        if server_round == 0:
            self.initial = record
            return record
        self.records.append(record)
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return record

    def save_node_models(self, states: dict[int, dict]) -> None:
        """Every node's own model (decentralized strategies), by graph index."""
        import torch

        torch.save(states, self.path / NODE_MODELS_FILE)

    def finish(self, state_dict: dict | None, error: str | None = None) -> dict:
        """Write summary.json (and model.pt) and return the summary; ``error`` says why a
        run stopped early."""
        import torch  # here, so that plotting (which reads this module) starts fast

        if state_dict is not None and self.cfg.run.save_model:
            torch.save(state_dict, self.path / MODEL_FILE)
        last = self.records[-1] if self.records else {}
        accuracies = [r[M.TEST_ACCURACY] for r in self.records if r.get(M.TEST_ACCURACY) is not None]
        failures = failures_by_round(self.records)
        status = "failed" if error else "completed_with_failures" if failures else "completed"
        summary = {
            "run_dir": str(self.path),
            "status": status,
            "error": error,
            "last_round": last.get(M.ROUND, 0),
            "failures": failures,
            "task": self.cfg.task.name,
            "strategy": self.cfg.strategy.name,
            "rounds": len(self.records),
            "seconds": time.perf_counter() - self.started,
            "initial": self.initial,
            "final": last,
            "best_test_accuracy": max(accuracies) if accuracies else None,
            "bytes_sent": sum(r.get("bytes_sent") or 0 for r in self.records),
            "bytes_received": sum(r.get("bytes_received") or 0 for r in self.records),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "flwr": _version("flwr"),
            },
        }
        (self.path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def failures_by_round(records: list[dict]) -> dict[str, dict]:
    """The rounds in which some node failed (silent, error reply, rejected reply) or the
    aggregate was not taken, with the counts; empty for a clean run."""
    out = {}
    for record in records:
        failed, rejected = record.get(M.NUM_FAILURES) or 0, record.get(M.AGGREGATE_REJECTED) or 0
        if failed or rejected:
            out[str(record[M.ROUND])] = {M.NUM_FAILURES: failed, M.NUM_REPLIES: record.get(M.NUM_REPLIES),
                                         M.AGGREGATE_REJECTED: rejected}
    return out


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The round records of a run folder; a clear error if it is not one."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a fedlocal run folder (no {METRICS_FILE}).")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not valid JSON: {err}") from err
    return records
