"""A private, authenticated Unix-socket transport: byte strings in frames, between processes
of one user that hold the same random key.

Knows nothing of Flower messages or of what a server does with a request (that is
``client.worker``'s). What it provides:

- ``private_dir(name)``: ``$TMPDIR/<name>``, mode 0700, owned by this user (checked: a
  folder someone else made or opened up is refused rather than used).
- ``Paths``: one server's files in that folder: socket, key (32 random bytes, mode 0600,
  ``write_key``), lock, log and pid. ``write_pid`` names the server's process;
  ``remove_files`` removes a server's files under its lock, ``remove_stale`` those of
  servers whose process is gone (SIGKILL, the OOM killer), keeping their logs.
- ``handshake``: on connect, each side answers the other's random challenge with its
  HMAC-SHA256 under the key, checked with ``hmac.compare_digest``.
- ``Channel``: frames of byte strings both ways; nothing received is unpickled.
  ``open_channel`` connects and authenticates; ``listen`` binds a server's socket.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import stat
import struct
import sys
import tempfile
from pathlib import Path


class AuthenticationError(ConnectionError):
    """The peer did not prove that it holds the key."""


class ProtocolError(ValueError):
    """Bytes that are not a frame of this protocol."""


class UnsafeFolderError(PermissionError):
    """The private folder exists but others may enter it, or it is not this user's."""


def supported() -> bool:
    """Whether this platform has Unix sockets and user ids (not Windows)."""
    return hasattr(os, "getuid") and sys.platform != "win32"


# ---------------------------------------------------------------- the wire
# Handshake, on connect: server -> peer HELLO + 32 random bytes (its challenge);
# peer -> server HMAC-SHA256(key, HELLO + b"client" + that challenge) + 32 random bytes
# (the peer's challenge); server -> peer HMAC-SHA256(key, HELLO + b"server" + the peer's
# challenge). The roles in the MAC keep one side's answer from being replayed as the
# other's; a failed check closes the connection. Then frames: FRAME, the number of parts
# (uint32), each part's length (uint64), the parts; big-endian.
HELLO = b"fedlocal-worker/2"
FRAME = b"FLW2"
CHALLENGE = 32
MAX_PARTS = 8
MAX_FRAME_BYTES = 2**36  # a sanity bound on what a frame may announce


def _prove(key: bytes, role: bytes, challenge: bytes) -> bytes:
    return hmac.new(key, HELLO + role + challenge, hashlib.sha256).digest()


def recv_exact(sock: socket.socket, n: int) -> bytearray:
    """``n`` bytes; EOFError if the peer hangs up first."""
    data = bytearray(n)
    view, got = memoryview(data), 0
    while got < n:
        chunk = sock.recv_into(view[got:], min(n - got, 2**20))
        if chunk == 0:
            raise EOFError(f"the peer hung up after {got} of {n} bytes")
        got += chunk
    return data


def handshake(sock: socket.socket, key: bytes, *, server: bool) -> None:
    """Prove to the peer that this side holds ``key``, and check that the peer does
    (see above); raises AuthenticationError, or OSError/EOFError if the peer goes away."""
    mine = os.urandom(CHALLENGE)
    if server:
        sock.sendall(HELLO + mine)
        answer = recv_exact(sock, 2 * CHALLENGE)
        if not hmac.compare_digest(bytes(answer[:CHALLENGE]), _prove(key, b"client", mine)):
            raise AuthenticationError("the peer does not hold the worker's key")
        sock.sendall(_prove(key, b"server", bytes(answer[CHALLENGE:])))
        return
    hello = recv_exact(sock, len(HELLO) + CHALLENGE)
    if hello[: len(HELLO)] != HELLO:
        raise AuthenticationError("the socket's owner is not a warm worker of this version")
    sock.sendall(_prove(key, b"client", bytes(hello[len(HELLO):])) + mine)
    try:
        proof = recv_exact(sock, CHALLENGE)
    except EOFError:
        raise AuthenticationError("the worker refused this key") from None
    if not hmac.compare_digest(bytes(proof), _prove(key, b"server", mine)):
        raise AuthenticationError("the worker did not prove that it holds the key")


class Channel:
    """One authenticated connection; frames of byte strings both ways."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def send_parts(self, parts: list[bytes]) -> None:
        head = struct.pack(f"!4sI{len(parts)}Q", FRAME, len(parts), *map(len, parts))
        self.sock.sendall(head)
        for part in parts:
            self.sock.sendall(part)

    def recv_parts(self) -> list[bytes]:
        """The next frame's parts; ProtocolError if the bytes are not a frame."""
        magic, count = struct.unpack("!4sI", recv_exact(self.sock, 8))
        if magic != FRAME or count > MAX_PARTS:
            raise ProtocolError(f"not a request frame (starts {magic!r}, {count} parts)")
        sizes = struct.unpack(f"!{count}Q", recv_exact(self.sock, 8 * count))
        if sum(sizes) > MAX_FRAME_BYTES:
            raise ProtocolError(f"a frame of {sum(sizes)} bytes is over the limit")
        return [bytes(recv_exact(self.sock, size)) for size in sizes]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_channel(socket_path: str | os.PathLike, key: bytes) -> Channel:
    """An authenticated connection to the server listening on ``socket_path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(socket_path))
        handshake(sock, key, server=False)
    except BaseException:
        sock.close()
        raise
    return Channel(sock)


def listen(socket_path: str | os.PathLike, backlog: int = 16) -> socket.socket:
    """A Unix socket bound at ``socket_path`` (replacing what was there), listening."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    Path(socket_path).unlink(missing_ok=True)
    listener.bind(str(socket_path))
    listener.listen(backlog)
    return listener


# ---------------------------------------------------------------- the files


def private_dir(name: str) -> Path:
    """``$TMPDIR/<name>`` (``/tmp/<name>`` if ``$TMPDIR`` is long: Unix socket paths are
    limited to ~104 bytes), mode 0700, owned by this user; UnsafeFolderError if it exists
    and is not that."""
    base = Path(tempfile.gettempdir())
    if len(str(base)) > 60:
        base = Path("/tmp")
    path = base / name
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UnsafeFolderError(
            f"{path} is not a folder that only this user may enter (mode {oct(info.st_mode)}, "
            f"owner uid {info.st_uid})"
        )
    return path


class Paths:
    """Socket, key, lock, log and pid file of one server."""

    def __init__(self, folder: Path, ident: str):
        self.socket = folder / f"{ident}.sock"
        self.key = folder / f"{ident}.key"
        self.lock = folder / f"{ident}.lock"
        self.log = folder / f"{ident}.log"
        self.pid = folder / f"{ident}.pid"


def write_key(path: Path) -> None:
    """32 random bytes, readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))


def write_pid(paths: Paths) -> None:
    """Name this process in ``paths.pid`` (atomically: a reader never sees half a pid)."""
    partial = paths.pid.with_name(f"{paths.pid.name}.{os.getpid()}")
    partial.write_text(f"{os.getpid()}\n")
    os.replace(partial, paths.pid)


def remove_files(paths: Paths, own_only_if_locked: bool = False, keep_log: bool = False) -> bool:
    """Remove the server's socket, key, pid, lock and log, under its lock so that no
    client is starting a server meanwhile; False (try again later) if one holds the
    lock, which may be waiting for this server to answer. ``own_only_if_locked``: then
    remove the socket, key and pid anyway (this server is going: the client will start
    another). ``keep_log``: leave the log (a crashed server's)."""
    import fcntl  # POSIX only (see supported())

    with open(paths.lock, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if own_only_if_locked:
                for path in (paths.socket, paths.key, paths.pid):
                    path.unlink(missing_ok=True)
            return False
        for path in (paths.socket, paths.key, paths.pid, paths.log, paths.lock):
            if not (keep_log and path == paths.log):
                path.unlink(missing_ok=True)
    return True


def remove_stale(own: Paths) -> None:
    """Remove the socket, key, pid and lock files of this user's servers in ``own``'s
    folder whose process is gone (killed with SIGKILL, or by the OOM killer); their logs
    stay, to say why. A server that is being started is skipped: its client holds its
    lock."""
    folder = own.pid.parent
    for pid_file in folder.glob("*.pid"):
        if pid_file == own.pid:
            continue
        try:
            if pid_file.lstat().st_uid != os.getuid():
                continue
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            continue
        if not alive(pid):
            remove_files(Paths(folder, pid_file.stem), keep_log=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
