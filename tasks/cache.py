"""A disk cache of client splits, shared by the processes of one machine.

Flower's deployment runs every ClientApp message in a fresh process. Without this cache
each of them imports scikit-learn or flwr-datasets, loads the whole data set and
partitions it again (for Fashion-MNIST: seconds and ~1 GB per message) to keep one
client's few thousand rows. With it, the first message of a node writes its split as a
tensor file and every later one reads just that.

The file name is a hash of everything that shapes the split (a ``tasks.registry.SplitKey``:
the task's ``DataKey``, the ``PartitionKey``, the number of partitions, the partition id;
its ``repr`` names every field) plus the size and modification time of the data file or
folder, so a changed config or data set never
reads a stale split. ``FEDLOCAL_CACHE`` picks the folder (default
``$XDG_CACHE_HOME/fedlocal`` or ``~/.cache/fedlocal``); ``FEDLOCAL_CACHE=off`` turns it
off. A file that cannot be read is rebuilt; one that cannot be written is skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Hashable
from pathlib import Path

import torch

from tasks.base import Split

FORMAT = 2  # bump when what a key means changes (2: named keys, tasks.registry)
log = logging.getLogger(__name__)


def cache_dir() -> Path | None:
    """The cache folder, or None when ``FEDLOCAL_CACHE=off``."""
    value = os.environ.get("FEDLOCAL_CACHE", "")
    if value.lower() in ("off", "0", "false", "no"):
        return None
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "fedlocal"


def _fingerprint(path: str) -> tuple:
    """Size and mtime of a data file, or of each file of a data folder."""
    if not path:
        return ()
    target = Path(path).expanduser()
    if target.is_file():
        stat = target.stat()
        return ((target.name, stat.st_size, stat.st_mtime_ns),)
    if target.is_dir():
        return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                     for p in sorted(target.rglob("*")) if p.is_file())
    return ()


def cached_split(key: Hashable, data_path: str, build: Callable[[], Split]) -> Split:
    """``build()``'s split, read from the cache when an identical one was built before:
    same ``repr(key)`` (a ``SplitKey``; any value whose repr shows all it holds) and same
    files under ``data_path``."""
    folder = cache_dir()
    if folder is None:
        return build()
    digest = hashlib.sha256(repr((FORMAT, key, _fingerprint(data_path))).encode()).hexdigest()
    path = folder / f"split-{digest[:32]}.pt"
    if path.exists():
        try:
            saved = torch.load(path, weights_only=True)
            return Split(saved["x"], saved["y"])
        except Exception as err:  # a torn or foreign file: rebuild it
            log.warning("fedlocal: ignoring unreadable cache file %s (%s)", path, err)
    split = build()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        torch.save({"x": split.x.contiguous(), "y": split.y.contiguous()}, partial)
        os.replace(partial, path)  # atomic: readers never see half a file
    except OSError as err:
        log.warning("fedlocal: cannot write the split cache in %s (%s); set FEDLOCAL_CACHE "
                    "to a writable folder or to off", folder, err)
    return split
