"""Shared fixtures: Flower's message identity for runtime-free hook tests, data paths."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The ClientApp's split cache (tasks.cache) goes to a folder of this test session's own,
# inherited by every Flower process a test starts, never to the user's ~/.cache.
_CACHE = tempfile.TemporaryDirectory(prefix="fedlocal-test-cache-")
os.environ["FEDLOCAL_CACHE"] = _CACHE.name
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture
def flower_identity():
    """Flower's Message() needs a run/node identity, which the runtime normally sets."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture
def shakespeare_path() -> str:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"tiny Shakespeare not found at {SHAKESPEARE} (it lives in ../shared/data)")
    return str(SHAKESPEARE)
