"""A warm worker: one long-lived training process per SuperNode and run.

Flower 1.39 runs every ClientApp message in a fresh Python process, so a deployed node
would import torch, parse the config, build the model and read its data again for every
message (2.2-2.5 s per message on 2 cores, against 0.9 s for a ClientApp that does
nothing; README, Performance). With ``warm-worker=<seconds>`` in a SuperNode's node config,
the ClientApp (``client.app``, which imports only flwr) hands each message to a worker
process that it starts on the node's first message and that keeps torch, the parsed
config, the model and the node's data resident; the worker runs exactly the functions the
ClientApp would run itself (``client.handlers``) and exits after ``<seconds>`` without a
message, or as soon as the node's SuperExec (the ClientApp processes' parent) is gone.

- One worker per (run, node, app folder, interpreter): a new run gets a new worker, so it
  never runs an older FAB's code. Messages to one node are served one at a time.
- It listens on a Unix socket in a folder only this user may enter
  (``$TMPDIR/fedlocal-workers-<uid>``) and answers only a peer that proves it holds the
  random key written next to the socket (``multiprocessing.connection``'s HMAC challenge).
  Its output goes to ``<id>.log`` in that folder (after every message: whether it uses
  CUDA, when it initialised it, and torch's GPU memory; ``CudaLog``); a worker that exits
  normally removes its files, so a log that stays behind belongs to a worker that crashed.
- The message, the context and the reply travel as Flower's own protobufs
  (``flwr.common.serde``); ``context.state`` (momentum) comes back with the reply.
- If the worker cannot be started or dies while serving (killed, out of memory), the
  ClientApp logs why and runs the message in its own process; an exception raised by the
  training code itself is re-raised, so the message fails exactly as it would without a
  worker. Where there are no Unix sockets (Windows), messages run in the ClientApp's
  process.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path

from flwr.app import Context, Message
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

APP_ROOT = Path(__file__).resolve().parents[1]  # the folder holding client/, tasks/, conf/
START_TIMEOUT = 120.0  # seconds for a new worker to import torch and listen


class WorkerUnavailable(RuntimeError):
    """The worker could not be started or reached, or died while serving a message."""


class WorkerError(RuntimeError):
    """The training code raised in the worker; the message names the original exception."""


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


def supported() -> bool:
    return hasattr(os, "getuid") and sys.platform != "win32"


def worker_dir() -> Path:
    """``$TMPDIR/fedlocal-workers-<uid>``, mode 0700, owned by this user (checked: a folder
    someone else made or opened up is refused rather than used)."""
    base = Path(tempfile.gettempdir())
    if len(str(base)) > 60:  # Unix socket paths are limited to ~104 bytes
        base = Path("/tmp")
    path = base / f"fedlocal-workers-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise WorkerUnavailable(
            f"{path} is not a folder that only this user may enter (mode {oct(info.st_mode)}, "
            f"owner uid {info.st_uid}); remove it or run the node as its owner."
        )
    return path


def worker_id(context: Context) -> str:
    ident = f"{context.run_id}/{context.node_id}/{APP_ROOT}/{sys.executable}"
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


class Paths:
    """Socket, key, lock and log file of one worker."""

    def __init__(self, folder: Path, ident: str):
        self.socket = folder / f"{ident}.sock"
        self.key = folder / f"{ident}.key"
        self.lock = folder / f"{ident}.lock"
        self.log = folder / f"{ident}.log"


def _connect(paths: Paths) -> Connection | None:
    """A connection to the worker at ``paths``; None if there is none, it is dead, or its
    key is gone."""
    try:
        return Client(str(paths.socket), family="AF_UNIX", authkey=paths.key.read_bytes())
    except (OSError, EOFError, AuthenticationError):
        return None


def _spawn(paths: Paths, idle: float) -> subprocess.Popen:
    paths.socket.unlink(missing_ok=True)
    fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(APP_ROOT), env.get("PYTHONPATH")) if p)
    with open(paths.log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "client.worker", "--socket", str(paths.socket),
             "--key-file", str(paths.key), "--idle", str(idle), "--parent", str(os.getppid()),
             "--cwd", os.getcwd()],
            # python -m imports from its working directory first: this app's code
            cwd=APP_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this ClientApp process
        )


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def connect(context: Context, idle: float) -> Connection:
    """A connection to this node's worker for this run, starting the worker if there is
    none (one start at a time per worker: a file lock)."""
    import fcntl  # POSIX only, like the worker (see supported())

    paths = Paths(worker_dir(), worker_id(context))
    with open(paths.lock, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(paths)
        if conn is not None:
            return conn
        process = _spawn(paths, idle)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise WorkerUnavailable(
                    f"the warm worker exited with code {process.returncode} before it listened; "
                    f"its log {paths.log} ends:\n{log_tail(paths.log)}"
                )
            conn = _connect(paths) if paths.socket.exists() else None
            if conn is not None:
                return conn
            time.sleep(0.02)
        process.kill()
        raise WorkerUnavailable(f"the warm worker did not listen within {START_TIMEOUT:.0f} s "
                                f"(log: {paths.log})")


def call(kind: str, msg: Message, context: Context, idle: float) -> Message:
    """Run handler ``kind`` ("train" or "evaluate") on ``msg`` in the node's warm worker;
    ``context.state`` is updated from the worker's. One retry on a fresh worker if the
    connection breaks (the worker idled out just then, or was killed)."""
    request = pickle.dumps({
        "kind": kind,
        "message": message_to_proto(msg).SerializeToString(),
        "context": context_to_proto(context).SerializeToString(),
    })
    for attempt in (1, 2):
        try:
            with connect(context, idle) as conn:
                conn.send_bytes(request)
                answer = pickle.loads(conn.recv_bytes())
            break
        except (OSError, EOFError) as e:
            if attempt == 2:
                raise WorkerUnavailable(f"the warm worker broke off ({type(e).__name__}: {e})") from e
    if "error" in answer:
        raise WorkerError(f"{answer['error']}\n(in the warm worker; traceback:)\n{answer['traceback']}")
    context.state = recorddict_from_proto(ProtoRecordDict.FromString(answer["state"]))
    content = recorddict_from_proto(ProtoRecordDict.FromString(answer["content"]))
    return Message(content=content, reply_to=msg)


# ---------------------------------------------------------------- the worker process


def handle(request: dict) -> dict:
    from client import handlers

    msg = message_from_proto(ProtoMessage.FromString(request["message"]))
    context = context_from_proto(ProtoContext.FromString(request["context"]))
    try:
        reply = getattr(handlers, request["kind"])(msg, context)
    except Exception as e:  # the ClientApp re-raises it
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    return {"content": recorddict_to_proto(reply.content).SerializeToString(),
            "state": recorddict_to_proto(context.state).SerializeToString()}


def serve(socket_path: str, key: bytes, idle: float, parent: int, cwd: str | None = None) -> None:
    """Answer requests one at a time until ``idle`` seconds pass without one or process
    ``parent`` is gone. ``cwd``: the ClientApp's working directory, which relative paths
    in the node config (``data-path``) are relative to."""
    from client import handlers  # noqa: F401  (torch and the rest, before listening)

    if cwd:
        os.chdir(cwd)

    paths = Paths(Path(socket_path).parent, Path(socket_path).stem)
    listener = Listener(socket_path, family="AF_UNIX", authkey=key)
    busy = threading.Lock()
    last = [time.monotonic()]

    def watchdog():
        while True:
            time.sleep(0.5)
            with busy:
                gone = not _alive(parent)
                if (gone or time.monotonic() - last[0] > idle) and _remove_files(paths):
                    os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    print(f"warm worker {os.getpid()}: listening on {socket_path}", flush=True)
    cuda = CudaLog()
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError, AuthenticationError) as e:  # a peer without the key, or one that hung up
            print(f"warm worker: refused a connection ({type(e).__name__}: {e})", flush=True)
            continue
        with busy, conn:
            try:
                request = pickle.loads(conn.recv_bytes())
                conn.send_bytes(pickle.dumps(handle(request)))
            except (OSError, EOFError) as e:
                print(f"warm worker: the ClientApp hung up ({type(e).__name__}: {e})", flush=True)
            last[0] = time.monotonic()
            for line in cuda.after_message():
                print(line, flush=True)


class CudaLog:
    """What a worker's log says about the GPU, after every message it served: once, when
    torch has initialised CUDA in this process (the worker keeps its CUDA context for the
    run: one initialisation, however many messages), then the GPU memory torch holds
    (peak allocated, reserved), or that CUDA is not used. Cheap: counters of torch's
    allocator, no synchronisation."""

    def __init__(self):
        self.messages = 0
        self.initialised = False

    def after_message(self) -> list[str]:
        self.messages += 1
        head = f"warm worker {os.getpid()}: message {self.messages} served;"
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return [f"{head} cuda not used"]
        lines = []
        if not self.initialised:
            self.initialised = True
            lines.append(f"warm worker {os.getpid()}: CUDA initialised in pid {os.getpid()} "
                         f"(by message {self.messages}; {torch.cuda.get_device_name()})")
        mib = 2**20
        lines.append(f"{head} cuda max_memory_allocated {torch.cuda.max_memory_allocated() / mib:.1f} "
                     f"MiB, memory_reserved {torch.cuda.memory_reserved() / mib:.1f} MiB")
        return lines


def _remove_files(paths: Paths) -> bool:
    """Remove the worker's socket, key, lock and log, under its lock so that no ClientApp
    is starting a worker meanwhile; False (try again later) if one holds the lock, which
    may be waiting for this worker to answer."""
    import fcntl

    with open(paths.lock, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        for path in (paths.socket, paths.key, paths.log, paths.lock):
            path.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="fedlocal's warm worker (started by client.app)")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--key-file", required=True)
    parser.add_argument("--idle", type=float, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--cwd", default=None)
    args = parser.parse_args(argv)
    serve(args.socket, Path(args.key_file).read_bytes(), args.idle, args.parent, args.cwd)


if __name__ == "__main__":
    main()
