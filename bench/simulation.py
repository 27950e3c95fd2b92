"""Run any Flower app (fedlocal or the quickstart-style baseline) on a private
simulation SuperLink, timing the run and sampling the memory of its process tree.

``server.launch.LocalSimulation`` starts and stops the SuperLink (its whole process
group, by PID); its ``run()`` always runs the fedlocal repository, so ``AppSimulation``
adds ``run_app(app_dir, ...)`` for any app folder.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procmem import TreeMemory
from server.launch import CONNECTION, LocalSimulation, toml_value


@dataclass
class AppRun:
    status: str  # e.g. finished:completed
    wall: float  # seconds of the whole `flwr run` command
    output: str
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)
    memory: dict = field(default_factory=dict)
    superlink_start: float = 0.0


class AppSimulation(LocalSimulation):
    """A private simulation SuperLink (``LocalSimulation``) that runs any app folder."""

    def __enter__(self) -> AppSimulation:
        start = time.perf_counter()
        super().__enter__()
        self.start_seconds = time.perf_counter() - start
        return self

    def run_app(self, app_dir: str | Path, run_config: dict | None = None,
                num_supernodes: int = 10, cpus_per_client: int = 1,
                timeout: float = 1800) -> AppRun:
        cmd = ["flwr", "run", str(app_dir), CONNECTION, "--stream", "--federation-config",
               f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client}"]
        if run_config:
            cmd += ["--run-config", " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())]
        lines: list[tuple[float, str]] = []
        memory = TreeMemory([self.process.pid])
        with memory:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            memory.add(proc.pid)
            watchdog = threading.Timer(timeout, proc.kill)
            watchdog.start()
            try:
                for line in proc.stdout:
                    lines.append((time.perf_counter() - start, line))
                proc.wait()
            finally:
                watchdog.cancel()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            wall = time.perf_counter() - start
        output = "".join(line for _, line in lines)
        match = re.search(r"started run (\d+)", output)
        status = self.status(match.group(1)) if match else "not-started"
        return AppRun(status, wall, output, lines, memory.as_dict(),
                      getattr(self, "start_seconds", 0.0))
