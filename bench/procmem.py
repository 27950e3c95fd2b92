"""Peak memory of a process tree, sampled from /proc (no psutil needed).

Every ``interval`` seconds the sampler finds every process descended from the given
root PIDs (by walking the parent links in ``/proc/<pid>/stat``) and sums their resident
set sizes (``/proc/<pid>/statm``). RSS counts pages shared between processes (torch's
libraries, Ray's plasma store) once per process, so the sum overstates what the tree
really occupies; every ``pss_every``-th sample also sums the proportional set size
(``/proc/<pid>/smaps_rollup``), which splits shared pages between their users and so
adds up to the tree's real footprint. Both peaks are reported.
"""

from __future__ import annotations

import os
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: parse after the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    return parents


def descendants(roots: list[int]) -> list[int]:
    """``roots`` (those still alive) and every process below them."""
    parents = _parents()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [r for r in roots if r in parents]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


class TreeMemory:
    """``with TreeMemory([pid]) as mem: ...`` then ``mem.peak_rss``, ``mem.peak_pss``
    (bytes) and ``mem.max_processes``. Roots may be added while it runs (``add``)."""

    def __init__(self, roots: list[int] | None = None, interval: float = 0.2, pss_every: int = 5):
        self.roots = list(roots or [])
        self.interval, self.pss_every = interval, pss_every
        self.peak_rss = self.peak_pss = self.max_processes = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def add(self, pid: int) -> None:
        self.roots.append(pid)

    def sample(self) -> None:
        pids = descendants(self.roots)
        self.max_processes = max(self.max_processes, len(pids))
        self.peak_rss = max(self.peak_rss, sum(rss_bytes(p) for p in pids))
        if self.samples % self.pss_every == 0:
            self.peak_pss = max(self.peak_pss, sum(pss_bytes(p) for p in pids))
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def as_dict(self) -> dict:
        return {
            "peak_rss_mb": self.peak_rss / 2**20,
            "peak_pss_mb": self.peak_pss / 2**20,
            "max_processes": self.max_processes,
            "samples": self.samples,
        }
