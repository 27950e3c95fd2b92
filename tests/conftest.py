"""Shared fixtures: Flower's message identity for runtime-free hook tests, data paths, and
the ``fmnist`` marker: a test that needs Fashion-MNIST is skipped, saying why, where the
data cannot be had (no Debian package, no earlier download, no network)."""

from __future__ import annotations

import functools
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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fmnist: needs Fashion-MNIST (skipped, saying why, where it is not installed, "
        "not downloaded before and cannot be downloaded)")


def fmnist_missing_reason(path: str | None = None) -> str | None:
    """Why the tests cannot have Fashion-MNIST here, or None when they can: the configured
    ``data.path`` (``auto``: Debian's dataset-fashion-mnist, then an earlier download),
    else torchvision's download, tried once."""
    from tasks.vision import locate_fmnist

    try:
        locate_fmnist(_fmnist_path() if path is None else path, download=True)
    except FileNotFoundError as err:
        return f"Fashion-MNIST is not available: {err}"
    return None


def _fmnist_path() -> str:
    from conf import load_config

    return load_config({"task.name": "fmnist"}).data.path


@functools.cache
def _fmnist_verdict() -> str | None:
    return fmnist_missing_reason()


def pytest_runtest_setup(item):
    if item.get_closest_marker("fmnist") is not None and (reason := _fmnist_verdict()):
        pytest.skip(reason)


@pytest.fixture
def fmnist_folder() -> Path:
    """The folder of Fashion-MNIST's four IDX files (the test is skipped without them)."""
    from tasks.vision import locate_fmnist

    if reason := _fmnist_verdict():
        pytest.skip(reason)
    return locate_fmnist(_fmnist_path(), download=True)
