"""Run the app on a Flower runtime of its own, simulated or deployed, then stop it.

``flwr run .`` alone talks to a shared local SuperLink that outlives the command and, by
default, installs the app's dependencies into a fresh environment on every run. This
launcher instead starts ``flower-superlink --simulation`` on free ports with runtime
dependency installation off, under ``FLWR_HOME`` (a temporary folder unless given),
runs ``flwr run <app> --stream``, checks the run's final status (``--stream`` can exit
0 for a failed run) and kills the SuperLink's whole process group by its PID::

    python -m deploy.launch --num-supernodes 10 --run-config "run.rounds=5 train.lr=0.1"

With ``--deployment`` it starts a SuperLink and N SuperNodes as separate OS processes
talking gRPC on loopback instead (Flower's Deployment Engine), and stops them all on exit
or Ctrl-C. Before it starts anything it checks the overrides with the config funnel
(``conf.load_config``, against ``--num-supernodes`` nodes) and names a bad key, where
``flwr run`` would only say "Invalid run configuration". With ``--ray-address`` the
simulation joins an existing Ray cluster (Flower's Ray backend calls ``ray.init()``, which
attaches to ``RAY_ADDRESS``). Tests use ``LocalSimulation`` and ``LocalDeployment``
directly.
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
import warnings
from pathlib import Path
from typing import Self

from conf.load import ConfigError, load_config, parse_run_config

APP_DIR = Path(__file__).resolve().parents[1]
CERTS_SCRIPT = Path(__file__).with_name("certs.sh")
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


def run_status(env: dict, run_id: str) -> str:
    """A run's final status from ``flwr ls`` (``flwr run --stream`` can exit 0 for a failed
    run), e.g. ``finished:completed``; ``unknown`` if the SuperLink does not say."""
    result = subprocess.run(["flwr", "ls", CONNECTION, "--format", "json"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    try:
        runs = json.loads(result.stdout)["runs"]
    except (json.JSONDecodeError, KeyError):
        return "unknown"
    return next((r["status"] for r in runs if r["run-id"] == run_id), "unknown")


def deployment_env(num_supernodes: int) -> dict[str, str]:
    """Environment for N SuperNodes on this host, minus what the caller already set."""
    defaults = {
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // max(1, num_supernodes))),
    }
    return {key: value for key, value in defaults.items() if key not in os.environ}


def make_certs(folder: Path, num_nodes: int) -> None:
    """CA, SuperLink certificate and ``num_nodes`` SuperNode key pairs (deploy/certs.sh)."""
    result = subprocess.run(["bash", str(CERTS_SCRIPT), str(folder), str(num_nodes)],
                            capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{CERTS_SCRIPT} failed:\n{result.stdout}{result.stderr}")


def _start(cmd: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    """Start a Flower process in its own process group, output to ``log_path``. Its
    working directory is the app folder: Ray's simulation workers put the SuperLink's
    working directory first on sys.path, so started elsewhere they could import
    ``client``/``tasks`` from there instead of the app that ``flwr run`` bundled."""
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=APP_DIR)


def _kill_group(process: subprocess.Popen | None) -> None:
    """SIGTERM the process's whole group (it and what it started), SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


class _LocalFlower:
    """A private SuperLink under its own FLWR_HOME; subclasses say how it runs apps."""

    superlink_flags: tuple[str, ...] = ()

    def __init__(self, flwr_home: str | Path | None = None, startup_timeout: float = 60.0,
                 secure: bool = False, app_dir: str | Path = APP_DIR, env: dict | None = None):
        """``env``: extra environment variables for every Flower process (e.g.
        ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``); ``app_dir``: the app ``flwr run`` bundles."""
        self._tmp = None if flwr_home else tempfile.TemporaryDirectory(prefix="fedlocal-flwr-")
        self.home = Path(flwr_home or self._tmp.name)
        self.startup_timeout = startup_timeout
        self.secure = secure
        self.app_dir = Path(app_dir)
        self.certs = self.home / "certs"
        self.process: subprocess.Popen | None = None
        self.port, self.fleet_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            **(env or {}),
        }

    def __enter__(self) -> Self:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.secure:
            make_certs(self.certs, self.num_keys())
            tls = f'root-certificates = "{self.certs / "ca.crt"}"'
            security = ["--ssl-ca-certfile", str(self.certs / "ca.crt"),
                        "--ssl-certfile", str(self.certs / "server.pem"),
                        "--ssl-keyfile", str(self.certs / "server.key"), "--enable-supernode-auth"]
        else:
            tls, security = "insecure = true", ["--insecure"]
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\n{tls}\n'
        )
        self.process = _start(
            ["flower-superlink", *security, *self.superlink_flags, "--isolation", "subprocess",
             "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
             "--port", str(self.port), "--fleet-api-address", f"127.0.0.1:{self.fleet_port}"],
            self.env, self.home / "superlink.log",
        )
        try:
            self._wait_for_port(self.port, self.process, "flower-superlink")
            self.start_nodes()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_port(self, port: int, process: subprocess.Popen, name: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited; see the logs in {self.home}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{name} did not start within {self.startup_timeout:.0f} s")

    def num_keys(self) -> int:
        """How many SuperNode key pairs a secure runtime makes."""
        return 0

    def start_nodes(self) -> None:
        """Start the SuperNodes, if this runtime has separate ones."""

    def stop_nodes(self) -> None:
        """Stop the SuperNodes (before the SuperLink, which they would keep retrying)."""

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Kill every process this object started, SuperNodes first."""
        self.stop_nodes()
        _kill_group(self.process)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def run_flwr(self, extra: list[str], run_config: dict | None, timeout: float, echo: bool):
        """``flwr run`` the app; returns ``(status, output)``, status e.g.
        ``finished:completed`` or ``finished:failed``."""
        cmd = ["flwr", "run", str(self.app_dir), CONNECTION, "--stream", *extra]
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
        return run_status(self.env, run_id)


class LocalSimulation(_LocalFlower):
    """A private simulation SuperLink: ``with LocalSimulation() as sim: sim.run(...)``."""

    superlink_flags = ("--simulation",)

    def run(self, run_config: dict | None = None, num_supernodes: int = 10,
            cpus_per_client: int = 1, timeout: float = 1800, echo: bool = False):
        federation = f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client}"
        return self.run_flwr(["--federation-config", federation], run_config, timeout, echo)


class LocalDeployment(_LocalFlower):
    """A SuperLink and ``num_supernodes`` SuperNodes, each its own OS process, talking
    gRPC (grpc-rere Fleet API) on loopback; SuperNode i gets
    ``--node-config "partition-id=i num-partitions=N"``. Every ClientApp message runs in a
    fresh process that each SuperNode starts (Flower's subprocess isolation), which hands
    it to the node's warm worker (``client.worker``) unless ``warm_worker=0``."""

    superlink_flags = ("--fleet-api-type", "grpc-rere")

    def __init__(self, num_supernodes: int = 2, node_config: dict[int, str] | None = None,
                 warm_worker: float = 120, **kwargs):
        """``node_config[i]``: extra ``key=value`` pairs for SuperNode i's node config.
        ``warm_worker``: seconds each node's warm worker waits for the next message (node
        config ``warm-worker``; 0: every message imports torch and builds the model again in
        its own ClientApp process). Launch settings (``env`` and the caller's environment
        override them): SuperExec polls for tasks every 0.2 s instead of 1 s, and torch in
        each ClientApp process uses its share of the cores (``OMP_NUM_THREADS``), since N
        SuperNodes share this host; with torch's default (one thread per core each) a
        Fashion-MNIST round took 56 s instead of 30 s on 2 cores (docs/benchmarks.md)."""
        env = {**deployment_env(num_supernodes), **(kwargs.pop("env", None) or {})}
        super().__init__(env=env, **kwargs)
        self.num_supernodes = num_supernodes
        self.extra_node_config = node_config or {}
        self.warm_worker = warm_worker
        self.nodes: list[subprocess.Popen | None] = []

    def num_keys(self) -> int:
        return self.num_supernodes

    def start_nodes(self) -> None:
        self._wait_for_port(self.fleet_port, self.process, "the SuperLink's Fleet API")
        for i in range(self.num_supernodes):
            if self.secure:
                self.register(self.certs / f"supernode-{i}.pub")
            self.nodes.append(None)
            self.start_node(i)

    def register(self, public_key: Path) -> None:
        """Register a SuperNode's public key with the SuperLink (``flwr supernode register``);
        only registered nodes may connect when node authentication is on."""
        result = subprocess.run(["flwr", "supernode", "register", str(public_key), CONNECTION],
                                env=self.env, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"flwr supernode register {public_key} failed:\n{result.stdout}{result.stderr}"
            )

    def node_command(self, i: int, private_key: Path | None = None) -> list[str]:
        """The ``flower-supernode`` command line of SuperNode ``i`` (TLS and its key pair
        when secure)."""
        n = self.num_supernodes
        extra = self.extra_node_config.get(i, "")
        warm = f"warm-worker={self.warm_worker:g}" if self.warm_worker and "warm-worker" not in extra else ""
        node_config = " ".join(part for part in (f"partition-id={i} num-partitions={n}", warm, extra) if part)
        if self.secure:
            key = private_key or self.certs / f"supernode-{i}"
            security = ["--root-certificates", str(self.certs / "ca.crt"),
                        "--auth-supernode-private-key", str(key)]
        else:
            security = ["--insecure"]
        return ["flower-supernode", *security, "--grpc-rere",
                "--superlink", f"127.0.0.1:{self.fleet_port}", "--isolation", "subprocess",
                "--port", str(free_port()), "--max-retries", "5", "--max-wait-time", "30",
                "--node-config", node_config]

    def start_node(self, i: int, **kwargs) -> subprocess.Popen:
        """(Re)start SuperNode ``i``; returns once it serves its ClientApp port."""
        cmd = self.node_command(i, **kwargs)
        log = self.home / f"supernode-{i}.log"
        if log.exists():  # a restart keeps the earlier log
            log.rename(log.with_suffix(f".{int(time.time() * 1000)}.log"))
        node = _start(cmd, self.env, log)
        self.nodes[i] = node
        self._wait_for_port(int(cmd[cmd.index("--port") + 1]), node, f"SuperNode {i}")
        return node

    def kill_node(self, i: int) -> None:
        """Stop SuperNode ``i`` (its whole process group), as a crash or unplugged device."""
        _kill_group(self.nodes[i])

    def stop_nodes(self) -> None:
        for node in self.nodes:
            _kill_group(node)
        self.nodes = []

    def run(self, run_config: dict | None = None, timeout: float = 1800, echo: bool = False):
        """Runs wait for all N SuperNodes (``strategy.min_available_nodes = N`` unless the
        run config sets it)."""
        run_config = {"strategy.min_available_nodes": self.num_supernodes, **(run_config or {})}
        return self.run_flwr([], run_config, timeout, echo)



def check_overrides(overrides: dict, num_supernodes: int, deployment: bool) -> list[str]:
    """Run the overrides through the config funnel as the run will see them (a deployment
    run waits for all N nodes: ``strategy.min_available_nodes = N`` unless set) on
    ``num_supernodes`` nodes; raises ``ConfigError``, returns the funnel's warnings."""
    if deployment:
        overrides = {"strategy.min_available_nodes": num_supernodes, **overrides}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_config(overrides, num_nodes=num_supernodes)
    return [str(w.message) for w in caught]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", action="store_true",
                        help="separate SuperNode processes over gRPC instead of the simulation engine")
    parser.add_argument("--secure", action="store_true",
                        help="with --deployment: TLS (a private CA made by deploy/certs.sh) and "
                             "SuperNode authentication (each node's key registered first)")
    parser.add_argument("--num-supernodes", type=int, default=10)
    parser.add_argument("--warm-worker", type=float, default=120, metavar="SECONDS",
                        help="with --deployment: each node's warm worker (client.worker) waits this "
                             "long for the next message; 0: none, every message imports torch afresh")
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument("--run-config", default="", help="e.g. \"run.rounds=5 task.name='fmnist'\"")
    parser.add_argument("--flwr-home", default=None, help="default: a temporary folder")
    parser.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                        help="simulation on an existing Ray cluster (its head's address, as "
                             "`ray start --head` prints it): the SuperLink runs with RAY_ADDRESS "
                             "set, so Flower's Ray backend joins that cluster instead of starting "
                             "one; every Ray node needs fedlocal, its dependencies and the data")
    args = parser.parse_args(argv)
    if args.ray_address is not None and args.deployment:
        parser.error("--ray-address is for the simulation engine; --deployment starts its own "
                     "SuperNode processes instead")
    try:
        overrides = parse_run_config(args.run_config)
        for warning in check_overrides(overrides, args.num_supernodes, args.deployment):
            print(f"config warning: {warning}", file=sys.stderr)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 1
    if args.deployment:
        with LocalDeployment(args.num_supernodes, flwr_home=args.flwr_home, secure=args.secure,
                             warm_worker=args.warm_worker) as deployment:
            status, _ = deployment.run(overrides, echo=True)
    else:
        env = {"RAY_ADDRESS": args.ray_address} if args.ray_address else None
        with LocalSimulation(args.flwr_home, env=env) as sim:
            status, _ = sim.run(overrides, args.num_supernodes, args.cpus_per_client, echo=True)
    print(f"run status: {status}")
    return 0 if status == "finished:completed" else 1


if __name__ == "__main__":
    sys.exit(main())
