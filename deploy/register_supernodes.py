"""Register SuperNode public keys with a SuperLink that runs ``--enable-supernode-auth``.

Flower 1.39 accepts a SuperNode only if its public key was registered through the Control
API first (``flwr supernode register KEY.pub CONNECTION``); an unregistered SuperNode exits
at once ("Failed to activate SuperNode", exit code 305). This script waits for the
SuperLink to answer, registers every key, counts a key that is already registered as done
(the SuperLink's database keeps registrations across restarts), and exits non-zero if any
key could not be registered. docker-compose.yml runs it as the one-shot ``register``
service; from the host::

    python deploy/register_supernodes.py --superlink 127.0.0.1:8000 \\
        --root-certificates certs/ca.crt certs/supernode-0.pub certs/supernode-1.pub

A folder argument stands for every ``*.pub`` in it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONNECTION = "fedlocal-register"
ALREADY_REGISTERED = "Public key already in use"


def public_keys(paths: list[str]) -> list[Path]:
    keys: list[Path] = []
    for path in map(Path, paths):
        keys += sorted(path.glob("*.pub")) if path.is_dir() else [path]
    if not keys:
        raise SystemExit(f"register_supernodes: no public keys in {paths}")
    return keys


def flwr(args: list[str], env: dict) -> dict:
    """Run a ``flwr`` command with ``--format json``; its JSON answer (``success`` False and
    ``error-message`` when it failed: flwr exits 0 either way in JSON mode)."""
    result = subprocess.run(["flwr", *args, CONNECTION, "--format", "json"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return {"success": False, "error-message": (result.stdout + result.stderr).strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("keys", nargs="+", help="public key files (OpenSSH, NIST EC) or folders")
    parser.add_argument("--superlink", default="superlink:8000", help="the SuperLink's Control API")
    parser.add_argument("--root-certificates", default="/certs/ca.crt",
                        help="CA certificate that signed the SuperLink's TLS certificate")
    parser.add_argument("--wait", type=float, default=120.0,
                        help="seconds to wait for the SuperLink to answer")
    args = parser.parse_args(argv)
    keys = public_keys(args.keys)
    ca = Path(args.root_certificates).resolve()

    with tempfile.TemporaryDirectory(prefix="fedlocal-register-") as home:
        Path(home, "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{args.superlink}"\nroot-certificates = "{ca}"\n'
        )
        env = {**os.environ, "FLWR_HOME": home, "FLWR_TELEMETRY_ENABLED": "0"}
        deadline = time.monotonic() + args.wait
        while not (answer := flwr(["supernode", "list"], env)).get("success"):
            if time.monotonic() > deadline:
                print(f"register_supernodes: no answer from {args.superlink} after {args.wait:.0f} s: "
                      f"{answer.get('error-message')}", file=sys.stderr)
                return 1
            time.sleep(2)

        failed = 0
        for key in keys:
            answer = flwr(["supernode", "register", str(key)], env)
            message = answer.get("error-message", "")
            if answer.get("success"):
                print(f"register_supernodes: {key.name} registered as node {answer['node-id']}")
            elif ALREADY_REGISTERED in message:
                print(f"register_supernodes: {key.name} was already registered")
            else:
                print(f"register_supernodes: {key.name} NOT registered: {message}", file=sys.stderr)
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
