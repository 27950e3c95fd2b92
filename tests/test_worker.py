"""The warm worker (client.worker): a message handed to the node's long-lived worker gets
exactly the reply and the context.state that the ClientApp's own process gives it; one
worker serves a node's messages; errors of the training code come back as errors; a worker
that cannot start, or is killed, costs a fallback or a restart and never a message; the
worker leaves when idle, on SIGTERM or when its SuperExec is gone, and answers only peers
with its key (HMAC-SHA256); it unpickles nothing, answers a malformed request with an error,
drops a silent peer, and serves on. The deployment tests (test_deployment.py) run every
strategy through it."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

import tasks
from client import app as client_app
from client import protocol as P
from client import transport, worker
from conf import load_config
from tests.test_fedavg import ONE_NODE, setup_round

pytestmark = pytest.mark.skipif(not transport.supported(), reason="warm workers need Unix sockets")


@pytest.fixture
def workers(monkeypatch, tmp_path_factory):
    """A private temporary folder for this test's workers (short: Unix socket paths are
    limited); kills every worker its logs name at the end. Workers get this process's torch
    thread count (other tests change it), as a deployment's ClientApp processes and workers
    share OMP_NUM_THREADS: float sums in another order would differ in the last bits."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    tmp_path_factory.getbasetemp()  # pytest's own temporary root, before tempdir is redirected
    base = tempfile.mkdtemp(prefix="fl-", dir="/tmp")
    monkeypatch.setattr(tempfile, "tempdir", base)
    folder = Path(base) / f"fedlocal-workers-{os.getuid()}"
    yield folder
    for pid in started(folder):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(base, ignore_errors=True)


def started(folder: Path) -> list[int]:
    """PIDs of the workers that started in ``folder`` and have not exited cleanly (a clean
    exit removes the worker's log)."""
    return [int(pid) for log in folder.glob("*.log")
            for pid in re.findall(r"warm worker (\d+): listening", log.read_text())]


def momentum_round():
    cfg = load_config({"train.momentum": 0.9, "train.persist_optimizer_state": True,
                       "train.local_steps": 3, **ONE_NODE})
    start = tasks.make_model(cfg, tasks.load_task(cfg)).state_dict()
    return setup_round(cfg, start, [0])[1][0]


def context(warm: float | None, node_config: dict | None = None, node_id: int = 7) -> Context:
    node = {P.PARTITION_ID: 0, P.NUM_PARTITIONS: 2} if node_config is None else dict(node_config)
    if warm is not None:
        node[P.WARM_WORKER] = warm
    return Context(run_id=11, node_id=node_id, state=RecordDict(), run_config={}, node_config=node)


def arrays(reply):
    return reply.content[P.ARRAYS].to_numpy_ndarrays()


def momentum(ctx: Context):
    return ctx.state.array_records[P.STATE_MOMENTUM].to_numpy_ndarrays()


def assert_same_reply(a, b):
    assert all(np.array_equal(x, y) for x, y in zip(arrays(a), arrays(b), strict=True))
    seconds = {P.TRAIN_SECONDS, P.PROCESS_SECONDS}
    ma, mb = dict(a.content[P.METRICS]), dict(b.content[P.METRICS])
    for m in (ma, mb):
        for key in seconds:
            m.pop(key)
    assert ma == mb
    assert b.metadata.reply_to_message_id == a.metadata.reply_to_message_id


def test_the_warm_worker_replies_exactly_as_the_clientapp_process_and_serves_every_message(
        flower_identity, workers):
    message = momentum_round()
    local, warm = context(None), context(120)
    for _ in range(3):  # momentum goes out and comes back in context.state every time
        a = client_app.train(message, local)
        b = client_app.train(message, warm)
        assert_same_reply(a, b)
        assert all(np.array_equal(x, y) for x, y in zip(momentum(local), momentum(warm), strict=True))
        # process-seconds: this (ClientApp) process's age, not the younger worker's
        assert b.content[P.METRICS][P.PROCESS_SECONDS] >= a.content[P.METRICS][P.PROCESS_SECONDS] - 0.05
    assert len(started(workers)) == 1  # one worker for the node's three messages
    evaluated = [client_app.evaluate(message, c).content[P.METRICS] for c in (local, warm)]
    assert dict(evaluated[0]) == dict(evaluated[1])
    assert len(started(workers)) == 1


def test_errors_of_the_training_code_come_back_and_the_worker_stays(flower_identity, workers):
    message = momentum_round()
    fix = r"--node-config 'partition-id=0 num-partitions=2'"
    with pytest.raises(worker.WorkerError, match=rf"ValueError: .*{fix}"):
        client_app.train(message, context(120, node_config={}))
    reply = client_app.train(message, context(120))
    assert reply.content[P.METRICS][P.NUM_STEPS] == 3
    assert len(started(workers)) == 1


def test_a_worker_that_cannot_start_leaves_the_message_to_the_clientapp(
        flower_identity, workers, monkeypatch, caplog):
    message = momentum_round()
    expected = client_app.train(message, context(None))
    monkeypatch.setattr(worker, "_spawn", lambda paths, idle: subprocess.Popen(
        [sys.executable, "-c", "raise SystemExit(3)"]))
    with caplog.at_level(logging.WARNING, logger="fedlocal.client"):
        reply = client_app.train(message, context(120))
    assert_same_reply(expected, reply)
    assert "the warm worker exited with code 3 before it listened" in caplog.text
    assert "running this message in the ClientApp's own process" in caplog.text


DIES_SERVING = """
import os, socket, sys
from client import transport
path, key = sys.argv[1:]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen()
peer, _ = listener.accept()
transport.handshake(peer, open(key, "rb").read(), server=True)
transport.Channel(peer).recv_parts()
os._exit(9)  # as if killed, or out of memory, while training
"""


def test_a_worker_that_dies_while_serving_is_retried_then_left_to_the_clientapp(
        flower_identity, workers, monkeypatch, caplog):
    message = momentum_round()
    expected = client_app.train(message, context(None))
    spawned = []

    def spawn(paths, idle):
        paths.socket.unlink(missing_ok=True)
        paths.key.write_bytes(os.urandom(32))
        spawned.append(subprocess.Popen([sys.executable, "-c", DIES_SERVING, str(paths.socket),
                                         str(paths.key)], cwd=worker.APP_ROOT))
        return spawned[-1]

    monkeypatch.setattr(worker, "_spawn", spawn)
    with caplog.at_level(logging.WARNING, logger="fedlocal.client"):
        reply = client_app.train(message, context(120))
    assert_same_reply(expected, reply)
    assert [p.wait(timeout=30) for p in spawned] == [9, 9]  # the first try and one retry
    assert "the warm worker broke off" in caplog.text


@pytest.mark.slow
def test_a_killed_worker_is_replaced_on_the_next_message(flower_identity, workers):
    message = momentum_round()
    first = client_app.train(message, context(120))
    [pid] = started(workers)
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text():
        time.sleep(0.05)
    again = client_app.train(message, context(120))
    assert_same_reply(first, again)
    assert len(started(workers)) == 2 and started(workers)[0] == pid


def start_worker(folder: Path, idle: float, parent: int, ident: str = "direct",
                 peer_timeout: float = worker.PEER_TIMEOUT) -> tuple[subprocess.Popen, transport.Paths]:
    folder.mkdir(mode=0o700, exist_ok=True)
    paths = transport.Paths(folder, ident)
    paths.key.write_bytes(os.urandom(32))
    process = subprocess.Popen(
        [sys.executable, "-m", "client.worker", "--socket", str(paths.socket), "--key-file",
         str(paths.key), "--idle", str(idle), "--parent", str(parent),
         "--peer-timeout", str(peer_timeout)], cwd=worker.APP_ROOT)
    deadline = time.monotonic() + 120
    while not paths.socket.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return process, paths


def exits_and_cleans_up(process: subprocess.Popen, paths: transport.Paths, within: float) -> bool:
    try:
        process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        return False
    return not any(p.exists() for p in (paths.socket, paths.key, paths.lock, paths.log, paths.pid))


@pytest.mark.slow
def test_a_worker_leaves_when_idle(workers):
    process, paths = start_worker(workers, idle=1.0, parent=os.getpid())
    assert exits_and_cleans_up(process, paths, within=5)
    assert process.returncode == 0


@pytest.mark.slow
def test_a_worker_leaves_when_its_superexec_is_gone_and_refuses_peers_without_its_key(workers):
    superexec = subprocess.Popen(["sleep", "600"])
    process, paths = start_worker(workers, idle=600, parent=superexec.pid)
    with pytest.raises(transport.AuthenticationError):
        transport.open_channel(paths.socket, b"not the key")
    with transport.open_channel(paths.socket, paths.key.read_bytes()):
        pass  # still serving, and the right key gets in
    assert process.poll() is None
    superexec.kill()
    superexec.wait()
    assert exits_and_cleans_up(process, paths, within=5)


def exchange(paths: transport.Paths, parts: list[bytes]) -> list[bytes]:
    with transport.open_channel(paths.socket, paths.key.read_bytes()) as channel:
        channel.send_parts(parts)
        return channel.recv_parts()


def raw_exchange(paths: transport.Paths, data: bytes) -> list[bytes]:
    """Authenticate, then send ``data`` as it is (no frame) and read the answer."""
    with transport.open_channel(paths.socket, paths.key.read_bytes()) as channel:
        channel.sock.sendall(data)
        return channel.recv_parts()


def node_paths(workers: Path, ctx: Context) -> transport.Paths:
    return transport.Paths(workers, worker.worker_id(ctx))


class Plant:
    """Unpickling this writes a file: what a pickled envelope would let a key holder do."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "ran"))


def test_a_malformed_request_is_answered_with_an_error_and_the_worker_serves_on(
        flower_identity, workers, tmp_path):
    message = momentum_round()
    expected = client_app.train(message, context(None))
    assert_same_reply(expected, client_app.train(message, context(120)))  # the worker is up
    paths = node_paths(workers, context(120))
    planted = tmp_path / "planted"
    ctx = worker.context_to_proto(context(120)).SerializeToString()
    msg = worker.message_to_proto(message).SerializeToString()
    garbage = {
        "no frame": (b"\x00garbage, not a frame" * 4, "not a request frame"),
        "an old pickled envelope": (pickle.dumps({"kind": "train", "message": msg,
                                                  "context": Plant(planted)}), "not a request frame"),
    }
    for name, (data, says) in garbage.items():
        kind, error, _ = raw_exchange(paths, data)
        assert kind == worker.ERROR and says in error.decode(), (name, error)
    framed = {
        "two parts": ([b"train", msg], "a request has 3 parts, not 2"),
        "unknown handler": ([b"process_age", msg, ctx], "unknown handler 'process_age'"),
        "bad message": ([b"train", b"\xff" * 9, ctx], "malformed request: "),
        "a pickle for a context": ([b"train", msg, pickle.dumps(Plant(planted))],
                                   "malformed request: "),
    }
    for name, (parts, says) in framed.items():
        kind, error, _ = exchange(paths, parts)
        assert kind == worker.ERROR and says in error.decode(), (name, error)
    assert not planted.exists()  # nothing received was unpickled
    assert_same_reply(expected, client_app.train(message, context(120)))
    assert len(started(workers)) == 1  # the same worker throughout


def test_a_silent_peer_is_dropped_and_the_worker_serves_others(flower_identity, workers):
    process, paths = start_worker(workers, idle=600, parent=os.getpid(), peer_timeout=1.0)
    message, local, warm = momentum_round(), context(None), context(None)
    expected = client_app.train(message, local)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(paths.socket))  # connects, then says nothing
    quiet = transport.open_channel(paths.socket, paths.key.read_bytes())  # authenticates, no request
    try:
        started_at = time.monotonic()
        answer = exchange(paths, worker.request_parts("train", message, warm))
        assert time.monotonic() - started_at < 30
        assert_same_reply(expected, worker.reply_message(answer, message, warm))
        silent.settimeout(30)
        received = b""
        while chunk := silent.recv(4096):  # the worker's hello, then the end: dropped
            received += chunk
        assert received.startswith(transport.HELLO)
        quiet.sock.settimeout(30)
        assert quiet.sock.recv(1) == b""  # dropped too
        assert process.poll() is None
    finally:
        silent.close()
        quiet.close()
        process.terminate()
        process.wait(timeout=30)


def test_the_key_check_is_hmac_sha256_both_ways_with_compare_digest(workers, monkeypatch):
    process, paths = start_worker(workers, idle=600, parent=os.getpid())
    key = paths.key.read_bytes()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:  # the documented handshake
            peer.settimeout(30)
            peer.connect(str(paths.socket))
            hello = transport.recv_exact(peer, len(transport.HELLO) + 32)
            challenge, mine = bytes(hello[len(transport.HELLO):]), os.urandom(32)
            answer = hmac.new(key, transport.HELLO + b"client" + challenge, hashlib.sha256).digest()
            peer.sendall(answer + mine)
            proof = bytes(transport.recv_exact(peer, 32))
            assert proof == hmac.new(key, transport.HELLO + b"server" + mine, hashlib.sha256).digest()
        compared, original = [], hmac.compare_digest

        def compare_digest(a, b):
            compared.append((len(a), len(b)))
            return original(a, b)

        monkeypatch.setattr(transport.hmac, "compare_digest", compare_digest)
        with transport.open_channel(paths.socket, key):
            pass
        assert compared == [(32, 32)]  # the worker's proof, checked in constant time
        with pytest.raises(transport.AuthenticationError, match="refused this key"):
            transport.open_channel(paths.socket, key[::-1])
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_sigterm_removes_the_workers_files(workers):
    process, paths = start_worker(workers, idle=600, parent=os.getpid())
    assert paths.pid.read_text().strip() == str(process.pid)
    process.send_signal(signal.SIGTERM)
    assert exits_and_cleans_up(process, paths, within=30)
    assert process.returncode == -signal.SIGTERM


def test_a_new_worker_removes_the_files_of_killed_workers(workers):
    killed, old = start_worker(workers, idle=600, parent=os.getpid(), ident="killed")
    killed.kill()
    killed.wait()
    assert all(p.exists() for p in (old.socket, old.key, old.pid))  # SIGKILL leaves them
    alive = transport.Paths(workers, "alive")
    alive.pid.write_text(f"{os.getpid()}\n")  # a worker whose process is still there
    process, paths = start_worker(workers, idle=600, parent=os.getpid(), ident="new")
    try:
        assert not any(p.exists() for p in (old.socket, old.key, old.pid, old.lock))
        assert alive.pid.exists() and paths.pid.exists() and paths.socket.exists()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_worker_folder_others_may_enter_is_refused(workers):
    workers.mkdir(mode=0o755)
    os.chmod(workers, 0o755)
    with pytest.raises(worker.WorkerUnavailable, match="not a folder that only this user may enter"):
        worker.worker_dir()


def test_a_bad_warm_worker_value_says_what_to_give(flower_identity):
    for value in ("soon", -1):
        with pytest.raises(ValueError, match=r"warm-worker=.*give the seconds"):
            client_app.train(momentum_round(), context(value))


def test_a_relative_data_path_means_the_same_file_to_the_worker(flower_identity, workers, tmp_path,
                                                                 monkeypatch):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mine.npz", x=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
             y=rng.integers(0, 10, 40))
    monkeypatch.chdir(tmp_path)  # the ClientApp's working directory, not the worker's
    message = momentum_round()
    device = {P.DATA_PATH: "mine.npz"}
    a = client_app.train(message, context(None, node_config=device))
    b = client_app.train(message, context(120, node_config=device))
    assert_same_reply(a, b)
    assert b.content[P.METRICS][P.NUM_EXAMPLES] == 40


def test_the_benchmarks_count_a_warm_worker_under_its_superexec():
    from bench.procmem import descendants

    superexec = subprocess.Popen(["sleep", "60"])
    # a stand-in with a warm worker's command line, in a session of its own like one
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "client.worker",
                                 "--parent", str(superexec.pid)], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while stand_in.pid not in descendants([superexec.pid]) and time.monotonic() < deadline:
            time.sleep(0.05)  # until its interpreter has replaced the forked child's command line
        assert descendants([superexec.pid]) == [superexec.pid, stand_in.pid]
    finally:
        for p in (superexec, stand_in):
            p.kill()
            p.wait()
