"""What a results file records about how it was made: the commit, whether the code that
decides a number had uncommitted changes, and the exact command.

Call ``provenance(module, argv)`` **before** the runs start: other commits may land during
a long sweep, and the code that ran is the code on disk when it started.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The packages whose uncommitted state would change a number.
CODE = ("algorithms", "client", "conf", "engine", "experiments", "strategies", "tasks")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=REPO).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def commit() -> str:
    """The checkout's short commit hash ('unknown' outside a git checkout)."""
    return _git("rev-parse", "--short", "HEAD") or "unknown"


def uncommitted_code() -> list[str]:
    """``git status --porcelain`` lines of changed or new .py/.yaml files under ``CODE``."""
    lines = _git("status", "--porcelain", "--", *CODE).splitlines()
    return [line for line in lines if line.strip().endswith((".py", ".yaml"))]


def command(module: str, argv: list[str] | None) -> str:
    """The command line that reruns this: ``python -m <module> <args>``."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in args)])


def provenance(module: str, argv: list[str] | None) -> dict:
    """The fields every results JSON carries: commit, uncommitted_code, command."""
    return {"commit": commit(), "uncommitted_code": uncommitted_code(),
            "command": command(module, argv)}
