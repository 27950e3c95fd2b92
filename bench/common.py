"""What every benchmark job shares: where things are, the log line, ``--device``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "benchmarks.md"


def log(message: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", flush=True)


def with_device(args, overrides: dict) -> dict:
    """The workload's config, with ``train.device`` from ``--device`` when given."""
    return {**overrides, "train.device": args.device} if args.device else dict(overrides)
