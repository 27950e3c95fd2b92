"""Facts about the process a message runs in, for the handlers' metrics. Imports nothing
of fedlocal's, so ``client.handlers`` and ``client.worker`` can both use it."""

from __future__ import annotations

import os
from pathlib import Path


def process_age() -> float:
    """Seconds since this process started: in a deployment, where Flower starts a fresh
    ClientApp process per message, the message's whole cost on the node (interpreter,
    imports, setup, training). From Linux's /proc; 0.0 where there is none."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0
