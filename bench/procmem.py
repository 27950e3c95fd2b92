"""Peak memory of a process tree, sampled from /proc (no psutil needed).

Every ``interval`` seconds the sampler finds every process descended from the given
root PIDs (by walking the parent links in ``/proc/<pid>/stat``; a warm worker,
``client.worker``, counts as its SuperExec's child) and sums their resident
set sizes (``/proc/<pid>/statm``). RSS counts pages shared between processes (torch's
libraries, Ray's plasma store) once per process, so the sum overstates what the tree
really occupies; every ``pss_every``-th sample also sums the proportional set size
(``/proc/<pid>/smaps_rollup``), which splits shared pages between their users and so
adds up to the tree's real footprint. Both peaks are reported.

With ``lifetimes=True`` every sample also reads each process's ``/proc/<pid>/stat``:
its start (to the clock tick, on the boot clock), whether it has exited (a zombie not
yet reaped) and its user + system CPU seconds, so that ``lifetimes()`` can say, per
program, how many processes ran, how long each lived and how much CPU the tree spent in
them while it was watched (a process that ends between two samples is caught as a
zombie or loses at most one interval of CPU time).
"""

from __future__ import annotations

import os
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


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
        if stat.startswith(b"python", stat.find(b"(") + 1):
            parents[int(entry)] = _warm_worker_parent(int(entry)) or parents[int(entry)]
    return parents


def _warm_worker_parent(pid: int) -> int | None:
    """A warm worker (``python -m client.worker ... --parent P``) is started in a session of
    its own and outlives the ClientApp process that started it: it belongs to P, the
    node's SuperExec, for this accounting."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = handle.read().split(b"\0")
    except OSError:
        return None
    if b"client.worker" not in args or b"--parent" not in args:
        return None
    try:
        return int(args[args.index(b"--parent") + 1])
    except (IndexError, ValueError):
        return None


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


def proc_stat(pid: int) -> tuple[str, float, float] | None:
    """``(state, start, cpu)`` of a process: its state letter (``Z`` once it has exited
    and waits to be reaped), its start in seconds on the boot clock, and its user +
    system CPU seconds; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # fields[0] is field 3 of proc(5)
    try:
        return (fields[0].decode(), int(fields[19]) / TICK,
                (int(fields[11]) + int(fields[12])) / TICK)
    except (IndexError, ValueError):
        return None


class TreeMemory:
    """``with TreeMemory([pid]) as mem: ...`` then ``mem.peak_rss``, ``mem.peak_pss``
    (bytes) and ``mem.max_processes``. Roots may be added while it runs (``add``).
    ``lifetimes=True`` also records each process's life and CPU time (``lifetimes()``)."""

    def __init__(self, roots: list[int] | None = None, interval: float = 0.2, pss_every: int = 5,
                 lifetimes: bool = False):
        self.roots = list(roots or [])
        self.interval, self.pss_every = interval, pss_every
        self.peak_rss = self.peak_pss = self.max_processes = self.samples = 0
        self.at_peak: dict[str, float] = {}  # process name -> RSS MB, at the RSS peak
        self.count_at_peak: dict[str, int] = {}  # process name -> processes, at the RSS peak
        self.track = lifetimes
        # with lifetimes, every pss_every-th sample: (seconds since start, RSS MB, processes)
        self.timeline: list[tuple[float, float, int]] = []
        self._t0 = time.perf_counter()
        # (pid, start) -> {"name", "start", "first_seen", "last_seen", "end", "cpu0", "cpu"}
        self.procs: dict[tuple[int, float], dict] = {}
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
            self.at_peak, self.count_at_peak = {}, {}
            self.peak_time = time.perf_counter() - self._t0
            for pid, size in sizes.items():
                if not size:  # gone between listing and reading
                    continue
                name = process_name(pid)
                self.at_peak[name] = self.at_peak.get(name, 0.0) + size / 2**20
                self.count_at_peak[name] = self.count_at_peak.get(name, 0) + 1
        if self.samples % self.pss_every == 0:
            self.peak_pss = max(self.peak_pss, sum(pss_bytes(p) for p in pids))
        if self.track:
            self._observe(pids)
            if self.samples % self.pss_every == 0:
                self.timeline.append((round(time.perf_counter() - self._t0, 2),
                                      round(total / 2**20), len(pids)))
        self.samples += 1

    def _observe(self, pids: list[int]) -> None:
        now = self._now = time.clock_gettime(time.CLOCK_BOOTTIME)  # /proc's start clock
        first = self.samples == 0
        for pid in pids:
            stat = proc_stat(pid)
            if stat is None:
                continue
            state, start, cpu = stat
            key = (pid, start)
            rec = self.procs.get(key)
            if rec is None:
                if state == "Z":  # born and gone between two samples: no name left to read
                    continue
                rec = self.procs[key] = {
                    "name": process_name(pid) or "?", "start": start, "first_seen": now,
                    # CPU spent before the watch began is not the watched run's
                    "cpu0": cpu if first else 0.0, "end": None, "cpu": cpu,
                    "before_watch": first}
            rec["last_seen"] = now
            rec["cpu"] = cpu
            if state == "Z":
                if rec["end"] is None:
                    rec["end"] = now
            elif rec["first_seen"] != now:
                # the name it ends with (fork, then exec; pyenv's shims exec twice more),
                # but not the empty command line of a process on its way out
                name = process_name(pid)
                if name and name != "?":
                    rec["name"] = name

    def lifetimes(self) -> dict[str, dict]:
        """Per program name: processes seen, CPU seconds spent while watched (in all, and
        median per process), and the wall seconds from start to exit of those that ended
        (median, p90, in all). A process still alive at the last sample has no end."""
        groups: dict[str, list[dict]] = {}
        for rec in self.procs.values():
            groups.setdefault(rec["name"], []).append(rec)
        out = {}
        for name, recs in groups.items():
            cpu = sorted(r["cpu"] - r["cpu0"] for r in recs)
            # gone without a zombie sighting: it ended between last_seen and the next sample;
            # seen alive in the last sample: still running, no lifetime
            lives = sorted((r["end"] or r["last_seen"] + self.interval / 2) - r["start"]
                           for r in recs if not r["before_watch"]
                           and (r["end"] is not None or r["last_seen"] < self._now))
            out[name] = {
                "processes": len(recs),
                "cpu_seconds": sum(cpu),
                "cpu_seconds_median": percentile(cpu, 50),
                "ended": len(lives),
                "lifetime_median": percentile(lives, 50),
                "lifetime_p90": percentile(lives, 90),
                "lifetime_total": sum(lives),
            }
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_seconds"]))

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
        if self.track:  # one last look: what is alive now has not ended
            self.sample()

    _now = float("inf")
    peak_time = None  # the boot-clock time of the latest sample

    def as_dict(self) -> dict:
        return {
            "peak_rss_mb": self.peak_rss / 2**20,
            "peak_pss_mb": self.peak_pss / 2**20,
            "max_processes": self.max_processes,
            "samples": self.samples,
            "rss_mb_at_peak_by_process": dict(sorted(self.at_peak.items(), key=lambda kv: -kv[1])),
            **({"processes_at_peak_by_name": self.count_at_peak,
                "peak_seconds": self.peak_time, "timeline": self.timeline} if self.track else {}),
        }


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), None for no values (the
    benchmark's)."""
    ordered = sorted(values)
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
