"""tasks.cache: a client split read back from disk equals the one built; stale keys, data
changes, torn files and FEDLOCAL_CACHE=off behave."""

from __future__ import annotations

import os

import pytest
import torch

from tasks.base import Split
from tasks.cache import cached_split


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("FEDLOCAL_CACHE", str(folder))
    return folder


class Builder:
    def __init__(self, seed=0):
        self.calls, self.seed = 0, seed

    def __call__(self) -> Split:
        self.calls += 1
        g = torch.Generator().manual_seed(self.seed)
        return Split(torch.randn(5, 3, generator=g), torch.randint(0, 4, (5,), generator=g))


def test_second_call_reads_the_same_tensors_from_disk(cache):
    build = Builder()
    first = cached_split(("digits", 0, 2), "", build)
    second = cached_split(("digits", 0, 2), "", build)
    assert build.calls == 1 and len(list(cache.glob("split-*.pt"))) == 1
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)
    assert second.y.dtype == torch.int64


def test_a_different_key_or_changed_data_file_builds_again(cache, tmp_path):
    data = tmp_path / "input.txt"
    data.write_text("abc")
    build = Builder()
    cached_split(("k", 0), str(data), build)
    cached_split(("k", 1), str(data), build)  # another partition
    assert build.calls == 2
    data.write_text("abcd")  # the data set changed: its size and mtime differ
    os.utime(data, ns=(1, 1))
    cached_split(("k", 0), str(data), build)
    assert build.calls == 3


def test_a_torn_file_is_rebuilt(cache):
    build = Builder()
    cached_split(("k",), "", build)
    (path,) = cache.glob("split-*.pt")
    path.write_bytes(b"not a tensor file")
    split = cached_split(("k",), "", build)
    assert build.calls == 2 and len(split) == 5
    assert torch.load(path, weights_only=True)["x"].shape == (5, 3)  # rewritten


def test_off_never_touches_the_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLOCAL_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    build = Builder()
    cached_split(("k",), "", build)
    cached_split(("k",), "", build)
    assert build.calls == 2 and not any(tmp_path.iterdir())


def test_named_split_keys_tell_splits_apart(cache):
    """The key tasks passes (a SplitKey): any field that differs gives another file."""
    from tasks.registry import DataKey, PartitionKey, SplitKey

    data = DataKey("digits", "auto", True, 0.2, 0, 512, 16, 32, 2, 0.0, 80, 0)
    part = PartitionKey("dirichlet", 0.5, 2, 10, 0)
    build = Builder()
    for key in [SplitKey(data, part, 4, 0), SplitKey(data, part, 4, 1),
                SplitKey(data, PartitionKey("iid", 0.5, 2, 10, 0), 4, 0),
                SplitKey(DataKey("digits", "auto", True, 0.2, 0, 512, 16, 32, 2, 0.0, 80, 1),
                         part, 4, 0)]:
        cached_split(key, "", build)
    assert build.calls == 4 and len(list(cache.glob("split-*.pt"))) == 4
    cached_split(SplitKey(data, part, 4, 1), "", build)
    assert build.calls == 4
