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


def process_name(pid: int) -> str:
    """A short name: Ray workers' titles (``ray::ClientAppActor``), else the program."""
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return "?"
    first = cmd[0].decode(errors="replace")
    if first.startswith("ray::"):
        return first.split(".")[0].split(" ")[0]
    words = [c.decode(errors="replace") for c in cmd if c]
    program = ""
    if "python" in first.rsplit("/", 1)[-1]:  # python [-u] [-m] script-or-module ...
        program = next((w for w in words[1:] if not w.startswith("-")), "")
    return (program or first).rsplit("/", 1)[-1][:40]


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
        self.at_peak: dict[str, float] = {}  # process name -> RSS MB, at the RSS peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def add(self, pid: int) -> None:
        self.roots.append(pid)

    def sample(self) -> None:
        pids = descendants(self.roots)
        self.max_processes = max(self.max_processes, len(pids))
        sizes = {p: rss_bytes(p) for p in pids}
        total = sum(sizes.values())
        if total > self.peak_rss:
            self.peak_rss = total
            self.at_peak = {}
            for pid, size in sizes.items():
                if not size:  # gone between listing and reading
                    continue
                name = process_name(pid)
                self.at_peak[name] = self.at_peak.get(name, 0.0) + size / 2**20
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
            "rss_mb_at_peak_by_process": dict(sorted(self.at_peak.items(), key=lambda kv: -kv[1])),
        }
