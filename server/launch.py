"""Run the app in Flower's simulation engine on a SuperLink of its own, then stop it.

``flwr run .`` alone talks to a shared local SuperLink that outlives the command and, by
default, installs the app's dependencies into a fresh environment on every run. This
launcher instead starts ``flower-superlink --simulation`` on free ports with runtime
dependency installation off, under ``FLWR_HOME`` (a temporary folder unless given),
runs ``flwr run <app> --stream``, checks the run's final status (``--stream`` can exit
0 for a failed run) and kills the SuperLink's whole process group by its PID::

    python -m server.launch --num-supernodes 10 --run-config "run.rounds=5 train.lr=0.1"

Tests use ``LocalSimulation`` directly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from conf.load import parse_run_config

APP_DIR = Path(__file__).resolve().parents[1]
CONNECTION = "fedlocal-sim"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def toml_value(value) -> str:
    """A Python scalar as a TOML value for ``--run-config``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


class LocalSimulation:
    """A private simulation SuperLink: ``with LocalSimulation() as sim: sim.run(...)``."""

    def __init__(self, flwr_home: str | Path | None = None, startup_timeout: float = 60.0):
        self._tmp = None if flwr_home else tempfile.TemporaryDirectory(prefix="fedlocal-flwr-")
        self.home = Path(flwr_home or self._tmp.name)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.port = free_port()
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        }

    def __enter__(self) -> Self:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        log = open(self.home / "superlink.log", "w")
        self.process = subprocess.Popen(
            ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
             "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
             "--port", str(self.port), "--fleet-api-address", f"127.0.0.1:{free_port()}"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"flower-superlink exited; see {self.home / 'superlink.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"flower-superlink did not start within {self.startup_timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Kill the SuperLink and everything it started (its own process group)."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def run(self, run_config: dict | None = None, num_supernodes: int = 10,
            cpus_per_client: int = 1, timeout: float = 1800, echo: bool = False):
        """``flwr run`` the app; returns ``(status, output)``, status e.g.
        ``finished:completed`` or ``finished:failed``."""
        cmd = ["flwr", "run", str(APP_DIR), CONNECTION, "--stream",
               "--federation-config",
               f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client}"]
        if run_config:
            cmd += ["--run-config", " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())]
        proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line)
                if echo:
                    print(line, end="", flush=True)
            proc.wait(timeout=timeout)
        except BaseException:
            proc.kill()
            raise
        output = "".join(lines)
        match = re.search(r"started run (\d+)", output)
        if not match:
            return "not-started", output
        return self.status(match.group(1)), output

    def status(self, run_id: str) -> str:
        result = subprocess.run(["flwr", "ls", CONNECTION, "--format", "json"], env=self.env,
                                capture_output=True, text=True, timeout=60, check=False)
        try:
            runs = json.loads(result.stdout)["runs"]
        except (json.JSONDecodeError, KeyError):
            return "unknown"
        return next((r["status"] for r in runs if r["run-id"] == run_id), "unknown")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-supernodes", type=int, default=10)
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument("--run-config", default="", help="e.g. \"run.rounds=5 task.name='fmnist'\"")
    parser.add_argument("--flwr-home", default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    with LocalSimulation(args.flwr_home) as sim:
        status, _ = sim.run(parse_run_config(args.run_config), args.num_supernodes,
                            args.cpus_per_client, echo=True)
    print(f"run status: {status}")
    return 0 if status == "finished:completed" else 1


if __name__ == "__main__":
    sys.exit(main())
