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
  random key written next to the socket (``client.transport``: each side answers the
  other's random challenge with its HMAC-SHA256 under the key). A peer that stays silent
  for ``PEER_TIMEOUT`` seconds is dropped; a malformed request is answered with an error,
  and the worker serves on.
  Its output goes to ``<id>.log`` in that folder (after every message: whether it uses
  CUDA, when it initialised it, and torch's GPU memory; ``CudaLog``); a worker that exits
  normally, idle or on SIGTERM, removes its files, so a log that stays behind belongs to a
  worker that crashed. ``<id>.pid`` names the worker's process: a worker that starts
  removes the socket, key and pid files of workers whose process is gone (SIGKILL).
- Nothing received is unpickled: a request and a reply are a few byte strings in a fixed
  binary frame (``client.transport.Channel``): the handler's name, then the message, the
  context and the reply as Flower's own protobufs (``flwr.common.serde``, whose arrays are
  ``.npy`` bytes read with ``allow_pickle=False``); ``context.state`` (momentum) comes back
  with the reply.
- If the worker cannot be started or dies while serving (killed, out of memory), the
  ClientApp logs why and runs the message in its own process; an exception raised by the
  training code itself is re-raised, so the message fails exactly as it would without a
  worker. Where there are no Unix sockets (Windows), messages run in the ClientApp's
  process.

The socket, its key and files, the handshake and the frames are ``client.transport``'s;
this module is what travels over them and the process that answers.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
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

from client import transport
from client.transport import Channel, Paths, ProtocolError, handshake, open_channel

APP_ROOT = Path(__file__).resolve().parents[1]  # the folder holding client/, tasks/, conf/
START_TIMEOUT = 120.0  # seconds for a new worker to import torch and listen
PEER_TIMEOUT = 10.0  # seconds the worker waits on a connected peer's next bytes
KINDS = ("train", "evaluate")  # the handlers a request may name (client.handlers)


class WorkerUnavailable(RuntimeError):
    """The worker could not be started or reached, or died while serving a message."""


class WorkerError(RuntimeError):
    """The training code raised in the worker, or it refused the request; the message names
    the original exception."""


# A request: (handler name, message, context); a reply: (OK, content, context.state) or
# (ERROR, what went wrong, traceback); each part bytes, one frame each way (client.transport).
OK, ERROR = b"ok", b"error"


def worker_dir() -> Path:
    """``$TMPDIR/fedlocal-workers-<uid>``, mode 0700, owned by this user (checked: a folder
    someone else made or opened up is refused rather than used)."""
    try:
        return transport.private_dir(f"fedlocal-workers-{os.getuid()}")
    except transport.UnsafeFolderError as e:
        raise WorkerUnavailable(f"{e}; remove it or run the node as its owner.") from None


def worker_id(context: Context) -> str:
    ident = f"{context.run_id}/{context.node_id}/{APP_ROOT}/{sys.executable}"
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def _connect(paths: Paths) -> Channel | None:
    """A connection to the worker at ``paths``; None if there is none, it is dead, or its
    key is gone."""
    try:
        return open_channel(paths.socket, paths.key.read_bytes())
    except (OSError, EOFError):  # AuthenticationError is a ConnectionError
        return None


def _spawn(paths: Paths, idle: float) -> subprocess.Popen:
    paths.socket.unlink(missing_ok=True)
    paths.pid.unlink(missing_ok=True)
    transport.write_key(paths.key)
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


def connect(context: Context, idle: float) -> Channel:
    """A connection to this node's worker for this run, starting the worker if there is
    none (one start at a time per worker: a file lock)."""
    import fcntl  # POSIX only, like the transport (see transport.supported())

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
    request = request_parts(kind, msg, context)
    for attempt in (1, 2):
        try:
            with connect(context, idle) as channel:
                channel.send_parts(request)
                answer = channel.recv_parts()
            break
        except (OSError, EOFError, ProtocolError) as e:
            if attempt == 2:
                raise WorkerUnavailable(f"the warm worker broke off ({type(e).__name__}: {e})") from e
    return reply_message(answer, msg, context)


def request_parts(kind: str, msg: Message, context: Context) -> list[bytes]:
    return [kind.encode(), message_to_proto(msg).SerializeToString(),
            context_to_proto(context).SerializeToString()]


def reply_message(answer: list[bytes], msg: Message, context: Context) -> Message:
    """The reply to ``msg`` from the worker's answer; ``context.state`` becomes the
    worker's. WorkerError if the worker answered with an error."""
    if len(answer) == 3 and answer[0] == ERROR:
        error, trace = (part.decode(errors="replace") for part in answer[1:])
        raise WorkerError(f"{error}\n(in the warm worker; traceback:)\n{trace}")
    if len(answer) != 3 or answer[0] != OK:
        raise WorkerUnavailable(f"the warm worker answered {len(answer)} parts, not a reply")
    context.state = recorddict_from_proto(ProtoRecordDict.FromString(answer[2]))
    content = recorddict_from_proto(ProtoRecordDict.FromString(answer[1]))
    return Message(content=content, reply_to=msg)


# ---------------------------------------------------------------- the worker process


def _failure(what: str, e: Exception) -> list[bytes]:
    return [ERROR, f"{what}{type(e).__name__}: {e}".encode(), traceback.format_exc().encode()]


def handle(parts: list[bytes]) -> list[bytes]:
    """The reply parts to a request's parts: (OK, content, state), or (ERROR, what went
    wrong, traceback) for a malformed request or an exception of the training code."""
    from client import handlers

    try:
        if len(parts) != 3:
            raise ProtocolError(f"a request has 3 parts, not {len(parts)}")
        kind = parts[0].decode("ascii", errors="replace")
        if kind not in KINDS:
            raise ProtocolError(f"unknown handler {kind[:40]!r}; one of {', '.join(KINDS)}")
        msg = message_from_proto(ProtoMessage.FromString(parts[1]))
        context = context_from_proto(ProtoContext.FromString(parts[2]))
    except Exception as e:  # protobuf's DecodeError, serde's checks, the above
        return _failure("malformed request: ", e)
    try:
        reply = getattr(handlers, kind)(msg, context)
    except Exception as e:  # the ClientApp re-raises it
        return _failure("", e)
    return [OK, recorddict_to_proto(reply.content).SerializeToString(),
            recorddict_to_proto(context.state).SerializeToString()]


def serve_one(sock: socket.socket, key: bytes, peer_timeout: float) -> bool:
    """Authenticate the peer on ``sock``, read its request, answer it; True if a request
    was handled. A peer without the key, a silent one (``peer_timeout`` seconds per read)
    and one that sends no frame are logged and dropped."""
    sock.settimeout(peer_timeout)
    try:
        handshake(sock, key, server=True)
    except (OSError, EOFError) as e:  # a peer without the key, a silent one, one that hung up
        print(f"warm worker: refused a connection ({type(e).__name__}: {e})", flush=True)
        return False
    channel = Channel(sock)
    try:
        parts = channel.recv_parts()
    except ProtocolError as e:
        print(f"warm worker: a malformed request ({e})", flush=True)
        parts = None
        reply = _failure("malformed request: ", e)
    except (OSError, EOFError) as e:
        print(f"warm worker: dropped a peer that sent no request ({type(e).__name__}: {e})",
              flush=True)
        return False
    if parts is not None:
        sock.settimeout(None)  # training takes what it takes
        reply = handle(parts)
        sock.settimeout(peer_timeout)
    try:
        channel.send_parts(reply)
    except (OSError, EOFError) as e:
        print(f"warm worker: the ClientApp hung up ({type(e).__name__}: {e})", flush=True)
    return parts is not None


def serve(socket_path: str, key: bytes, idle: float, parent: int, cwd: str | None = None,
          peer_timeout: float = PEER_TIMEOUT) -> None:
    """Answer requests one at a time until ``idle`` seconds pass without one or process
    ``parent`` is gone; on SIGTERM remove the worker's files and die of it. ``cwd``: the
    ClientApp's working directory, which relative paths in the node config
    (``data-path``) are relative to."""
    paths = Paths(Path(socket_path).parent, Path(socket_path).stem)
    transport.write_pid(paths)
    transport.remove_stale(paths)

    def terminate(signum, frame):
        transport.remove_files(paths, own_only_if_locked=True)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, terminate)

    from client import handlers  # noqa: F401  (torch and the rest, before listening)

    if cwd:
        os.chdir(cwd)

    listener = transport.listen(socket_path)
    busy = threading.Lock()
    last = [time.monotonic()]

    def watchdog():
        while True:
            time.sleep(0.5)
            with busy:
                gone = not transport.alive(parent)
                if (gone or time.monotonic() - last[0] > idle) and transport.remove_files(paths):
                    os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    print(f"warm worker {os.getpid()}: listening on {socket_path}", flush=True)
    cuda = CudaLog()
    while True:
        try:
            sock, _ = listener.accept()
        except OSError as e:  # out of file descriptors, a peer gone before it was accepted
            print(f"warm worker: accept failed ({type(e).__name__}: {e})", flush=True)
            time.sleep(0.1)
            continue
        with busy, sock:
            if serve_one(sock, key, peer_timeout):
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="fedlocal's warm worker (started by client.app)")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--key-file", required=True)
    parser.add_argument("--idle", type=float, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--cwd", default=None)
    parser.add_argument("--peer-timeout", type=float, default=PEER_TIMEOUT)
    args = parser.parse_args(argv)
    serve(args.socket, Path(args.key_file).read_bytes(), args.idle, args.parent, args.cwd,
          args.peer_timeout)


if __name__ == "__main__":
    main()
