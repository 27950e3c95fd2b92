"""Run any Flower app (fedlocal or the quickstart-style baseline) on a private Flower
runtime, timing the run and sampling the memory of its process tree.

``deploy.launch.LocalSimulation`` (and ``LocalDeployment``, where the checkout has it)
start and stop the SuperLink (and SuperNodes), each a process group killed by PID; their
``run()`` always runs the fedlocal repository, so ``AppSimulation`` / ``AppDeployment``
add ``run_app(app_dir, ...)`` for any app folder. Only the start and stop are borrowed
from ``deploy.launch``; running and checking the app is done here.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import deploy.launch as launch
from bench.procmem import TreeMemory
from deploy.launch import CONNECTION, LocalSimulation, run_status, toml_value


@dataclass
class AppRun:
    status: str  # e.g. finished:completed
    wall: float  # seconds of the whole `flwr run` command
    output: str
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)
    memory: dict = field(default_factory=dict)
    superlink_start: float = 0.0
    processes: dict = field(default_factory=dict)  # per program: count, CPU s, lifetimes


class _AppRunner:
    """``run_app`` for a started runtime (``self.process``: the SuperLink; ``self.nodes``:
    SuperNodes, where the runtime has separate ones)."""

    def __enter__(self):
        start = time.perf_counter()
        super().__enter__()
        self.start_seconds = time.perf_counter() - start
        return self

    def _run(self, app_dir: str | Path, extra: list[str], run_config: dict | None,
             timeout: float, lifetimes: bool = False) -> AppRun:
        cmd = ["flwr", "run", str(app_dir), CONNECTION, "--stream", *extra]
        if run_config:
            cmd += ["--run-config", " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())]
        lines: list[tuple[float, str]] = []
        roots = [self.process.pid] + [node.pid for node in getattr(self, "nodes", [])]
        memory = TreeMemory(roots, lifetimes=lifetimes)
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
        status = run_status(self.env, match.group(1)) if match else "not-started"
        return AppRun(status, wall, output, lines, memory.as_dict(),
                      getattr(self, "start_seconds", 0.0),
                      memory.lifetimes() if lifetimes else {})


class AppSimulation(_AppRunner, LocalSimulation):
    """A private simulation SuperLink (``LocalSimulation``) that runs any app folder."""

    def run_app(self, app_dir: str | Path, run_config: dict | None = None,
                num_supernodes: int = 10, cpus_per_client: int = 1,
                timeout: float = 1800, gpus_per_client: float = 0.0) -> AppRun:
        """``gpus_per_client``: each ClientApp's share of a GPU (Ray shows the GPU only to
        clients with a share)."""
        federation = f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client}"
        if gpus_per_client > 0:
            federation += f" client-resources-num-gpus={gpus_per_client:g}"
        return self._run(app_dir, ["--federation-config", federation], run_config, timeout)


def deployment_available() -> bool:
    return hasattr(launch, "LocalDeployment")


def app_deployment(num_supernodes: int, env: dict | None = None):
    """A SuperLink and ``num_supernodes`` SuperNode processes (``LocalDeployment``) that
    run any app folder, with ``env`` added to every Flower process's environment; None
    where this checkout has no local deployment. Its runs also record every process's
    life and CPU time (``AppRun.processes``)."""
    if not deployment_available():
        return None

    class AppDeployment(_AppRunner, launch.LocalDeployment):
        def run_app(self, app_dir: str | Path, run_config: dict | None = None,
                    timeout: float = 1800) -> AppRun:
            config = {"strategy.min_available_nodes": self.num_supernodes, **(run_config or {})}
            return self._run(app_dir, [], config, timeout, lifetimes=True)

    try:
        return AppDeployment(num_supernodes, env=env)
    except TypeError:  # a LocalDeployment without env=: its environment is self.env
        deployment = AppDeployment(num_supernodes)
        deployment.env.update(env or {})
        return deployment
