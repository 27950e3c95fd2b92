"""The warm worker (client.worker): a message handed to the node's long-lived worker gets
exactly the reply and the context.state that the ClientApp's own process gives it; one
worker serves a node's messages; errors of the training code come back as errors; a worker
that cannot start, or is killed, costs a fallback or a restart and never a message; the
worker leaves when idle or when its SuperExec is gone, and answers only peers with its key.
The deployment tests (test_deployment.py) run every strategy through it."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

import tasks
from client import app as client_app
from client import protocol as P
from client import worker
from conf import load_config
from tests.test_fedavg import ONE_NODE, setup_round

pytestmark = pytest.mark.skipif(not worker.supported(), reason="warm workers need Unix sockets")


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
import os, sys
from multiprocessing.connection import Listener
socket, key = sys.argv[1:]
with Listener(socket, family="AF_UNIX", authkey=open(key, "rb").read()) as listener:
    listener.accept().recv_bytes()
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
                                         str(paths.key)]))
        return spawned[-1]

    monkeypatch.setattr(worker, "_spawn", spawn)
    with caplog.at_level(logging.WARNING, logger="fedlocal.client"):
        reply = client_app.train(message, context(120))
    assert_same_reply(expected, reply)
    assert [p.wait(timeout=30) for p in spawned] == [9, 9]  # the first try and one retry
    assert "the warm worker broke off" in caplog.text


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


def start_worker(folder: Path, idle: float, parent: int) -> tuple[subprocess.Popen, worker.Paths]:
    folder.mkdir(mode=0o700, exist_ok=True)
    paths = worker.Paths(folder, "direct")
    paths.key.write_bytes(os.urandom(32))
    process = subprocess.Popen(
        [sys.executable, "-m", "client.worker", "--socket", str(paths.socket), "--key-file",
         str(paths.key), "--idle", str(idle), "--parent", str(parent)], cwd=worker.APP_ROOT)
    deadline = time.monotonic() + 120
    while not paths.socket.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return process, paths


def exits_and_cleans_up(process: subprocess.Popen, paths: worker.Paths, within: float) -> bool:
    try:
        process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        return False
    return not any(p.exists() for p in (paths.socket, paths.key, paths.lock, paths.log))


def test_a_worker_leaves_when_idle(workers):
    process, paths = start_worker(workers, idle=1.0, parent=os.getpid())
    assert exits_and_cleans_up(process, paths, within=5)
    assert process.returncode == 0


def test_a_worker_leaves_when_its_superexec_is_gone_and_refuses_peers_without_its_key(workers):
    superexec = subprocess.Popen(["sleep", "600"])
    process, paths = start_worker(workers, idle=600, parent=superexec.pid)
    with pytest.raises(AuthenticationError):
        Client(str(paths.socket), family="AF_UNIX", authkey=b"not the key")
    with Client(str(paths.socket), family="AF_UNIX", authkey=paths.key.read_bytes()):
        pass  # still serving, and the right key gets in
    assert process.poll() is None
    superexec.kill()
    superexec.wait()
    assert exits_and_cleans_up(process, paths, within=5)


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
