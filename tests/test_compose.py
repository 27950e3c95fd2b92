"""The docker-compose deployment (docker-compose.yml, docs/compose.md).

Without a container engine: the compose files' structure (TLS on, SuperNode authentication,
process isolation, one partition-id per SuperNode, the state volume, the results mount, the
GPU overrides, the extra-nodes generator) and, when a compose tool with a ``config`` command
is installed (``docker compose``, Debian's ``docker-compose`` 1.29, a podman-compose newer than 1.0),
that it accepts the files.

With podman and podman-compose (``apt-get install -y podman podman-compose``): builds the
image on the local base image from deploy/base-image.sh, brings the deployment up on free
ports with fresh certificates, runs 2 FedAvg rounds and 2 Gossip-PGA rounds through it with
``flwr run``, checks the results on the host, and removes every container, network, volume
and image it made.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from deploy.compose_nodes import override
from deploy.requirements import dependencies

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
GPU_NVIDIA = REPO / "docker-compose.gpu.yml"
GPU_CDI = REPO / "deploy" / "compose.gpu-cdi.yml"
BASE_IMAGE = os.environ.get("FEDLOCAL_BASE_IMAGE", "localhost/fedlocal-base:bookworm")
MAKE_BASE = f"deploy/base-image.sh {BASE_IMAGE}"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def command(service: dict) -> str:
    """A service's entrypoint + command as one string."""
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key) or []
        parts += [value] if isinstance(value, str) else value
    return " ".join(parts)


def flags(service: dict) -> dict[str, str]:
    """``--flag=value`` / ``--flag`` arguments of a service's command."""
    return dict(re.findall(r"(--[a-z-]+)(?:=(\S+))?", command(service)))


def supernodes(services: dict) -> dict[str, dict]:
    return {name: s for name, s in services.items() if re.fullmatch(r"supernode-\d+", name)}


def merge(base: dict, extra: dict) -> dict:
    """Compose's merge of an override file, for the keys these files use: mappings merge,
    ``volumes`` add up, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif key == "volumes" and isinstance(out.get(key), list):
            out[key] = out[key] + [v for v in value if v not in out[key]]
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------- the files, no engine


def check_deployment(services: dict, num_nodes: int) -> None:
    """What every variant of the deployment must hold, for ``num_nodes`` SuperNodes."""
    link = flags(services["superlink"])
    assert link["--fleet-api-type"] == "grpc-rere"
    assert link["--isolation"] == "process"
    assert "--enable-supernode-auth" in link and "--disable-runtime-dependency-installation" in link
    assert {link[f] for f in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile")} == {
        "/certs/ca.crt", "/certs/server.pem", "/certs/server.key"}
    for name in ("superlink", "superexec-serverapp", *supernodes(services)):
        assert "--insecure" not in flags(services[name]), f"{name} must use TLS"
    # The SuperLink's state lives in a named volume, at the --database path.
    state = next(v for v in services["superlink"]["volumes"] if v.startswith("superlink-state:"))
    assert link["--database"].startswith(state.split(":")[1] + "/")
    # Certificates and keys are mounted read-only.
    for service in services.values():
        for volume in service.get("volumes", []):
            if "/certs/" in volume or "/keys/" in volume:
                assert volume.endswith(":ro"), volume

    serverapp = flags(services["superexec-serverapp"])
    assert serverapp["--runtime-api-address"] == "superlink:8000"
    assert serverapp["--root-certificates"] == "/certs/ca.crt"
    assert any(v.endswith(":/outputs") for v in services["superexec-serverapp"]["volumes"])

    nodes = supernodes(services)
    assert len(nodes) == num_nodes
    partition_ids = sorted(int(s["environment"]["PARTITION_ID"]) for s in nodes.values())
    assert partition_ids == list(range(num_nodes))
    registered = " ".join(services["register"]["volumes"])
    for name, node in nodes.items():
        i = name.split("-")[1]
        assert node["environment"] == {**node["environment"], "PARTITION_ID": i,
                                       "NUM_PARTITIONS": str(num_nodes)}
        assert 'partition-id=$${PARTITION_ID} num-partitions=$${NUM_PARTITIONS}' in command(node)
        node_flags = flags(node)
        assert node_flags["--superlink"] == "superlink:9092"
        assert node_flags["--root-certificates"] == "/certs/ca.crt"
        assert node_flags["--isolation"] == "process"
        key = node_flags["--auth-supernode-private-key"]
        assert any(v.endswith(f"/supernode-{i}:{key}:ro") for v in node["volumes"])
        assert f"/supernode-{i}.pub:" in registered
        clientapp = services[f"superexec-clientapp-{i}"]
        assert flags(clientapp)["--runtime-api-address"] == f"supernode-{i}:9094"
    assert "--insecure" not in command(services["register"])


def test_compose_file_runs_a_tls_authenticated_deployment():
    compose = load(COMPOSE)
    # podman-compose 1.0 leaves ${VAR:-} (an empty default) unexpanded
    assert not re.search(r"\$\{\w+:?-\}", json.dumps(compose))
    check_deployment(compose["services"], num_nodes=2)
    assert "superlink-state" in compose["volumes"]
    assert "build" in compose["services"]["superlink"]
    images = {s["image"] for s in compose["services"].values()}
    assert images == {"${FEDLOCAL_IMAGE:-fedlocal:latest}"}  # one image for every process


def test_gpu_overrides_give_every_clientapp_superexec_the_gpus():
    clientapps = [n for n in load(COMPOSE)["services"] if n.startswith("superexec-clientapp-")]
    nvidia, cdi = load(GPU_NVIDIA)["services"], load(GPU_CDI)["services"]
    assert sorted(nvidia) == sorted(cdi) == sorted(clientapps)
    for name in clientapps:
        (device,) = nvidia[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert cdi[name]["devices"] == ["nvidia.com/gpu=all"]


@pytest.mark.parametrize("gpu", [None, "nvidia", "cdi"])
def test_compose_nodes_adds_supernodes_with_their_own_partition_and_key(gpu):
    base = load(COMPOSE)
    merged = merge(base, override(5, base, gpu))
    check_deployment(merged["services"], num_nodes=5)
    new = merged["services"]["superexec-clientapp-4"]
    assert ("deploy" in new) == (gpu == "nvidia") and ("devices" in new) == (gpu == "cdi")
    with pytest.raises(ValueError):
        override(1, base)


def compose_tools() -> list[list[str]]:
    """Installed compose tools that have a ``config`` command."""
    tools = []
    for tool in (["docker", "compose"], ["docker-compose"], ["podman-compose"]):
        if not shutil.which(tool[0]):
            continue
        probes = [subprocess.run([*tool, *args], capture_output=True, text=True, timeout=60, check=False)
                  for args in (["version"], ["config", "--help"])]  # `docker` alone takes `compose`'s --help
        if all(probe.returncode == 0 for probe in probes):
            tools.append(tool)
    return tools


def test_compose_tools_accept_the_files(tmp_path):
    tools = compose_tools()
    if not tools:
        pytest.skip("no compose tool with a `config` command (docker compose, docker-compose, "
                    "a podman-compose newer than 1.0); apt-get install -y docker-compose")
    nodes = tmp_path / "nodes.yml"
    nodes.write_text(yaml.safe_dump(override(3, load(COMPOSE), "nvidia")))
    env = {**os.environ, "FEDLOCAL_CERTS": str(tmp_path / "certs"), "FEDLOCAL_OUTPUTS": str(tmp_path / "out")}
    for tool in tools:
        for files, num_nodes in (([COMPOSE], 2), ([COMPOSE, GPU_NVIDIA], 2), ([COMPOSE, GPU_CDI], 2),
                                 ([COMPOSE, nodes], 3)):
            args = [a for f in files for a in ("-f", str(f))]
            result = subprocess.run([*tool, *args, "config"], capture_output=True, text=True, env=env,
                                    cwd=REPO, timeout=120, check=False)
            assert result.returncode == 0, f"{' '.join(tool + args)} config:\n{result.stderr}"
            resolved = yaml.safe_load(result.stdout)["services"]
            assert len(supernodes(resolved)) == num_nodes
            assert str(tmp_path / "out") in " ".join(map(str, resolved["superexec-serverapp"]["volumes"]))


# ---------------------------------------------------------------- a real deployment


def run(cmd: list[str], env: dict | None = None, timeout: float = 600, check: bool = True,
        **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                            check=False, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def podman_env(tmp_path: Path) -> dict:
    """Environment for podman here: runc (crun fails on setrlimit in these machines' sandbox)
    and no default ulimits, through a containers.conf of our own."""
    conf = tmp_path / "containers.conf"
    runtime = '[engine]\nruntime = "runc"\n' if shutil.which("runc") else ""
    conf.write_text(f"[containers]\ndefault_ulimits = []\n\n{runtime}")
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def base_image_problem(env: dict) -> str | None:
    """Why the local base image cannot be used, or None."""
    result = run(["podman", "image", "inspect", BASE_IMAGE, "--format",
                  '{{index .Labels "fedlocal.deps"}}'], env=env, check=False)
    if result.returncode != 0:
        return f"no base image {BASE_IMAGE}; make it with `{MAKE_BASE}` (root, ~7 min, ~7 GB)"
    deps = "\n".join(dependencies(str(REPO / "pyproject.toml"))) + "\n"
    if result.stdout.strip() != hashlib.sha256(deps.encode()).hexdigest():
        return (f"{BASE_IMAGE} was made for other dependencies than pyproject.toml's; "
                f"remake it with `{MAKE_BASE}`")
    return None


@pytest.fixture
def podman(tmp_path):
    """podman's environment, or a skip saying what is missing."""
    for tool in ("podman", "podman-compose"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool} (apt-get install -y podman podman-compose)")
    env = podman_env(tmp_path)
    if run(["podman", "info"], env=env, check=False).returncode != 0:
        pytest.skip("podman is installed but does not work here (`podman info` fails)")
    if os.environ.get("FEDLOCAL_MAKE_BASE_IMAGE") == "1" and base_image_problem(env):
        run(["bash", str(REPO / "deploy" / "base-image.sh"), BASE_IMAGE], env=env, timeout=1800)
    if problem := base_image_problem(env):
        pytest.skip(f"{problem}, or set FEDLOCAL_MAKE_BASE_IMAGE=1 to let this test make it")
    return env


class Deployment:
    """docker-compose.yml under podman-compose, with its own project name, certificates,
    outputs folder, free host ports and flwr connection."""

    def __init__(self, tmp_path: Path, env: dict):
        tag = uuid.uuid4().hex[:8]
        self.project, self.image = f"fedlocal-test-{tag}", f"localhost/fedlocal-test:{tag}"
        self.outputs, self.certs = tmp_path / "outputs", tmp_path / "certs"
        self.control_port = free_port()
        self.env = {
            **env,
            "FEDLOCAL_IMAGE": self.image,
            "FEDLOCAL_CERTS": str(self.certs),
            "FEDLOCAL_OUTPUTS": str(self.outputs),
            "FEDLOCAL_CONTROL_PORT": str(self.control_port),
            "FEDLOCAL_FLEET_PORT": str(free_port()),
            "FLWR_HOME": str(tmp_path / "flwr"),
            "FLWR_TELEMETRY_ENABLED": "0",
        }
        self.compose = ["podman-compose", "-p", self.project, "-f", str(COMPOSE)]
        (tmp_path / "flwr").mkdir()
        (tmp_path / "flwr" / "config.toml").write_text(
            '[superlink]\ndefault = "compose"\n\n'
            f'[superlink.compose]\naddress = "127.0.0.1:{self.control_port}"\n'
            f'root-certificates = "{self.certs / "ca.crt"}"\n\n'
            f'[superlink.plaintext]\naddress = "127.0.0.1:{self.control_port}"\ninsecure = true\n'
        )

    def build(self) -> float:
        start = time.monotonic()
        # --layers=false: no intermediate images left behind (the build takes ~12 s anyway)
        run(["podman", "build", "--layers=false", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
             "--build-arg", "PIP_OPTIONS=--no-index --no-build-isolation",
             "-t", self.image, str(REPO)], env=self.env, timeout=900)
        return time.monotonic() - start

    def up(self) -> None:
        run(["bash", str(REPO / "deploy" / "certs.sh"), str(self.certs), "2"], env=self.env)
        run([*self.compose, "up", "-d"], env=self.env, cwd=REPO, timeout=300)

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return run(["flwr", *args], env=self.env, timeout=timeout, check=False, cwd=REPO)

    def wait_for_nodes(self, count: int, timeout: float = 240) -> list[dict]:
        deadline = time.monotonic() + timeout
        nodes: list[dict] = []
        while time.monotonic() < deadline:
            answer = self.flwr("supernode", "list", "compose", "--format", "json")
            try:
                nodes = json.loads(answer.stdout).get("nodes", [])
            except json.JSONDecodeError:
                nodes = []
            if sum(n["status"] == "online" for n in nodes) >= count:
                return nodes
            time.sleep(3)
        raise AssertionError(f"{count} SuperNodes not online after {timeout} s: {nodes}\n{self.logs()}")

    def run_app(self, run_config: str, timeout: float = 600) -> tuple[str, str]:
        """``flwr run`` the app; (final status, output)."""
        result = self.flwr("run", str(REPO), "compose", "--stream", "--run-config", run_config,
                           timeout=timeout)
        output = result.stdout + result.stderr
        match = re.search(r"started run (\d+)", output)
        if not match:
            return "not-started", output
        runs = json.loads(self.flwr("ls", "compose", "--format", "json").stdout)["runs"]
        return next(r["status"] for r in runs if r["run-id"] == match.group(1)), output

    def rogue_node(self, key: Path) -> subprocess.CompletedProcess:
        """A SuperNode with a key that was never registered, on the deployment's network."""
        run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key)])
        return run(["podman", "run", "--rm", "--name", f"{self.project}_rogue", "--label",
                    f"io.podman.compose.project={self.project}", "--net", f"{self.project}_default",
                    "-v", f"{self.certs / 'ca.crt'}:/certs/ca.crt:ro", "-v", f"{key}:/keys/supernode:ro",
                    self.image, "flower-supernode", "--superlink=superlink:9092",
                    "--root-certificates=/certs/ca.crt", "--auth-supernode-private-key=/keys/supernode",
                    "--max-retries=3", "--node-config=partition-id=0 num-partitions=2"],
                   env=self.env, timeout=180, check=False)

    def containers(self) -> list[str]:
        result = run(["podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}",
                      "--format", "{{.Names}}"], env=self.env, check=False)
        return result.stdout.split()

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n" + run(["podman", "logs", "--tail", "25", name], env=self.env,
                                               check=False).stderr[-2500:]
                         for name in self.containers())

    def down(self) -> None:
        """Remove everything this deployment made: containers, volume, network, image."""
        run([*self.compose, "down", "-v"], env=self.env, cwd=REPO, check=False, timeout=300)
        for name in self.containers():
            run(["podman", "rm", "-f", name], env=self.env, check=False)
        for kind in ("volume", "network"):  # podman-compose 1.0 leaves the network behind
            listed = run(["podman", kind, "ls", "--format", "{{.Name}}"], env=self.env, check=False)
            for name in listed.stdout.split():
                if name.startswith(self.project + "_"):
                    run(["podman", kind, "rm", "-f", name], env=self.env, check=False)
        run(["podman", "rmi", "-f", self.image], env=self.env, check=False)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compose_deployment_trains_fedavg_and_gossip_pga(podman, tmp_path):
    deployment = Deployment(tmp_path, podman)
    start = time.monotonic()
    try:
        build_seconds = deployment.build()
        deployment.up()
        nodes = deployment.wait_for_nodes(2)
        assert len(nodes) == 2 and all(n["status"] == "online" for n in nodes)
        # The Control API speaks TLS only: a plaintext client gets nowhere.
        assert "success\": true" not in deployment.flwr("ls", "plaintext", "--format", "json").stdout
        # SuperNode authentication: a node whose key was not registered is turned away.
        rogue = deployment.rogue_node(tmp_path / "rogue")
        assert rogue.returncode != 0 and "Failed to activate SuperNode" in rogue.stdout + rogue.stderr

        outs = {}
        for name, config in {
            "fedavg": "strategy.name='fedavg'",
            "gossip": "strategy.name='gossip_pga' strategy.period=2",
        }.items():
            outs[name] = deployment.run_app(
                f"{config} run.rounds=2 run.name='{name}' run.output_dir='/outputs' "
                "strategy.min_available_nodes=2"
            )
        link_log = run(["podman", "logs", f"{deployment.project}_superlink_1"], env=deployment.env,
                       check=False).stderr
        for name, (status, output) in outs.items():
            assert status == "finished:completed", f"{name}: {output[-3000:]}\n{deployment.logs()}"
    finally:
        deployment.down()
    assert deployment.containers() == []
    print(f"compose deployment: image build {build_seconds:.0f} s, all {time.monotonic() - start:.0f} s")

    assert link_log.count("[Fleet.ActivateNode] Activated node_id=") >= 2
    assert "SuperNode authentication is disabled" not in link_log
    for name in ("fedavg", "gossip"):
        run_dir = deployment.outputs / name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["rounds"] == 2
        rounds = records(run_dir)
        assert [r["round"] for r in rounds] == [1, 2]
        assert all(r["num_replies"] == 2 and r["num_failures"] == 0 for r in rounds)
    assert records(deployment.outputs / "fedavg")[-1]["test_accuracy"] > 0.5
    gossip = records(deployment.outputs / "gossip")
    assert [r["global_average"] for r in gossip] == [0, 1]  # period 2: round 2 averages globally
    assert gossip[-1]["consensus_distance"] == pytest.approx(0.0, abs=1e-10)
