"""A device's own data (``tasks.local_data``) and the ClientApp training on it
(node config ``data-path``) without the central data set."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

import tasks
from client import app as client_app
from client import handlers as client_handlers
from client import protocol as P
from conf import load_config, to_flat
from strategies import build_strategy
from tasks.local_data import MAX_BYTES_ENV, LocalDataError, load_local, main
from tasks.shakespeare import VOCAB, cut_windows, encode
from tasks.vision import DEBIAN_FMNIST, FMNIST_MEAN, FMNIST_STD

ONE_NODE = {"strategy.min_train_nodes": 1, "strategy.min_available_nodes": 1}
DIGITS = tasks.TaskSpec("digits", "classification", 10, (1, 8, 8))
TEACHER = tasks.TaskSpec("teacher", "regression", 1, (16,))
SHAKESPEARE = tasks.TaskSpec("shakespeare", "language", len(VOCAB), (80,))


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def digits_arrays(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, n)


# ----------------------------------------------------------------------- export round trip
def test_export_then_load_is_the_central_client_split_digits(tmp_path, capsys):
    out = tmp_path / "device.npz"
    assert main(["export", "--task", "digits", "--partition-id", "1", "--num-partitions", "3",
                 "--run-config", "run.seed=2 data.alpha=0.3", str(out)]) == 0
    cfg = load_config({"run.seed": 2, "data.alpha": 0.3})
    central = tasks.client_split(cfg, 1, 3)
    local = load_local(out, tasks.task_spec(cfg))
    assert torch.equal(local.x, central.x) and torch.equal(local.y, central.y)
    assert local.x.dtype == torch.float32 and local.y.dtype == torch.int64
    assert f"N = {len(central)} examples" in capsys.readouterr().out


def test_export_then_load_is_the_central_client_split_shakespeare(tmp_path, shakespeare_path):
    out = tmp_path / "device.txt"
    run_config = f"data.path='{shakespeare_path}' data.seq_len=40"
    assert main(["export", "--task", "shakespeare", "--run-config", run_config,
                 "--partition-id", "2", "--num-partitions", "5", str(out)]) == 0
    cfg = load_config({"task.name": "shakespeare", "data.path": shakespeare_path,
                       "data.seq_len": 40})
    central = tasks.client_split(cfg, 2, 5)
    local = load_local(out, tasks.task_spec(cfg))
    assert torch.equal(local.x, central.x) and torch.equal(local.y, central.y)
    assert len(out.read_text(encoding="utf-8")) == len(central) * 41  # whole windows, no more


def test_export_refuses_to_overwrite_and_a_mismatched_extension(tmp_path, capsys):
    out = tmp_path / "device.npz"
    out.write_bytes(b"keep me")
    args = ["export", "--task", "digits", "--partition-id", "0", "--num-partitions", "2"]
    assert main([*args, str(out)]) == 2
    assert out.read_bytes() == b"keep me" and "--force" in capsys.readouterr().err
    assert main([*args, "--force", str(out)]) == 0
    assert main([*args, str(tmp_path / "device.txt")]) == 2
    assert "is for the character task 'shakespeare'" in capsys.readouterr().err


def test_check_prints_n_shapes_and_label_histogram(tmp_path, capsys):
    x, y = digits_arrays(12)
    y = np.array([0] * 5 + [3] * 7)
    path = save_npz(tmp_path / "mine.npz", x=x, y=y)
    assert main(["check", str(path), "--task", "digits"]) == 0
    out = capsys.readouterr().out
    assert "N = 12 examples" in out and "(12, 1, 8, 8)" in out
    assert "labels: 0:5 1:0 2:0 3:7 4:0" in out


@pytest.mark.slow
def test_check_is_a_module_command_that_fails_with_the_reason(tmp_path):
    path = save_npz(tmp_path / "bad.npz", x=np.zeros((3, 8, 8), np.float32), y=np.arange(3) + 9)
    done = subprocess.run([sys.executable, "-m", "tasks.local_data", "check", str(path),
                           "--task", "digits"], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2, done.stderr
    assert f"error: {path}: y holds labels from 9 to 11" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_task_contradicting_run_config_is_an_error(tmp_path, capsys):
    path = save_npz(tmp_path / "mine.npz", x=np.zeros((2, 16), np.float32), y=np.zeros((2, 1)))
    assert main(["check", str(path), "--task", "teacher",
                 "--run-config", "task.name='digits'"]) == 2
    assert "contradicts task.name" in capsys.readouterr().err


# ----------------------------------------------------------------------- accepted variants
def test_uint8_digits_are_scaled_and_the_channel_axis_may_be_dropped(tmp_path):
    raw = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    y = np.arange(5, dtype=np.uint8)
    a = load_local(save_npz(tmp_path / "a.npz", x=raw, y=y), DIGITS)
    b = load_local(save_npz(tmp_path / "b.npz", x=raw[:, None], y=y), DIGITS)
    want = torch.from_numpy(raw).float().div(255).unsqueeze(1)
    assert torch.equal(a.x, want) and torch.equal(b.x, want)
    assert a.y.dtype == torch.int64 and a.y.tolist() == [0, 1, 2, 3, 4]


def test_uint8_fmnist_images_are_preprocessed_as_the_servers(tmp_path):
    spec = tasks.TaskSpec("fmnist", "classification", 10, (1, 28, 28))
    raw = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    local = load_local(save_npz(tmp_path / "f.npz", x=raw, y=np.array([1, 2, 3])), spec)
    want = (torch.from_numpy(raw).float() / 255 - FMNIST_MEAN) / FMNIST_STD
    torch.testing.assert_close(local.x[:, 0], want, rtol=0, atol=1e-6)
    if DEBIAN_FMNIST.is_dir():  # the real images: bit-identical to the central load
        from tasks.vision import FMNIST_FILES, _idx_file, _read_idx

        images = _read_idx(_idx_file(DEBIAN_FMNIST, FMNIST_FILES["test_x"]))[:50]
        labels = _read_idx(_idx_file(DEBIAN_FMNIST, FMNIST_FILES["test_y"]))[:50]
        local = load_local(save_npz(tmp_path / "real.npz", x=images, y=labels), spec)
        central = tasks.load_task(load_config({"task.name": "fmnist"})).test
        assert torch.equal(local.x, central.x[:50]) and torch.equal(local.y, central.y[:50])


def test_regression_targets_may_be_one_dimensional(tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 16))  # float64: cast to float32
    y = np.linspace(-1, 1, 6)
    local = load_local(save_npz(tmp_path / "t.npz", x=x, y=y), TEACHER)
    assert local.x.dtype == local.y.dtype == torch.float32
    assert tuple(local.y.shape) == (6, 1)
    torch.testing.assert_close(local.y[:, 0], torch.from_numpy(y).float())


def test_text_is_cut_like_load_shakespeare_with_newlines_and_unknown_characters(tmp_path):
    spec = tasks.TaskSpec("shakespeare", "language", len(VOCAB), (4,))
    path = tmp_path / "mine.txt"
    path.write_bytes("\ufeffab\r\ncd\u00e9fgh\rijklmno".encode())  # BOM, CRLF, CR, non-ASCII
    text = "ab\ncd fgh\nijklmno"  # 17 characters: three windows of 5, two left over
    local = load_local(path, spec)
    windows = torch.from_numpy(cut_windows(encode(text), 4))
    assert len(local) == 3
    assert torch.equal(local.x, windows[:, :-1]) and torch.equal(local.y, windows[:, 1:])


def test_cache_is_keyed_by_the_file_state(tmp_path):
    x, y = digits_arrays(12)
    path = save_npz(tmp_path / "mine.npz", x=x, y=y)
    first = load_local(path, DIGITS)
    assert load_local(str(path), DIGITS) is first  # same file, same spec: cached
    save_npz(path, x=x[:7], y=y[:7])  # the device's data changed
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert len(load_local(path, DIGITS)) == 7


# ----------------------------------------------------------------------- bad files
def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


X, Y = digits_arrays(4)
NAN_X = X.copy()
NAN_X[2, 0, 3, 3] = np.nan
BAD_FILES = {
    # name: (file name, content, spec, expected fragment of the message)
    "wrong-extension": ("mine.csv", b"1,2,3", DIGITS, "unsupported extension '.csv'"),
    "no-extension": ("mine", b"", DIGITS, "unsupported extension '(none)'"),
    "txt-for-vision": ("mine.txt", b"hello", DIGITS,
                       "a .txt file is for the character task 'shakespeare'"),
    "npz-for-text": ("mine.npz", npz_bytes(x=X, y=Y), SHAKESPEARE,
                     "a .npz file does not fit task 'shakespeare'"),
    "not-an-archive": ("mine.npz", b"surely not a zip file", DIGITS,
                       "is truncated or not a valid .npz archive"),
    "single-npy": ("mine.npz", npy_bytes(X), DIGITS, "holds a single .npy array"),
    "missing-y": ("mine.npz", npz_bytes(x=X, labels=Y), DIGITS,
                  "has no array 'y' (arrays found: x, labels)"),
    "missing-x-and-y": ("mine.npz", npz_bytes(a=X), DIGITS, "has no array 'x' or 'y'"),
    "object-array": ("mine.npz", npz_bytes(x=np.array([X[0], "a"], dtype=object), y=Y[:2]),
                     DIGITS, "cannot be read without pickles"),
    "scalar": ("mine.npz", npz_bytes(x=np.float32(1), y=Y), DIGITS, "one row per example"),
    "length-mismatch": ("mine.npz", npz_bytes(x=X, y=Y[:3]), DIGITS,
                        "x has 4 rows but y has 3"),
    "empty": ("mine.npz", npz_bytes(x=X[:0], y=Y[:0]), DIGITS, "holds no examples"),
    "wrong-input-shape": ("mine.npz", npz_bytes(x=np.zeros((4, 28, 28), np.float32), y=Y),
                          DIGITS, "x has shape (4, 28, 28); task 'digits' takes inputs of "
                          "shape (N, 1, 8, 8) or (N, 8, 8)"),
    "wrong-teacher-dim": ("mine.npz", npz_bytes(x=np.zeros((4, 15)), y=np.zeros((4, 1))),
                          TEACHER, "takes inputs of shape (N, 16)"),
    "integer-inputs": ("mine.npz", npz_bytes(x=X.astype(np.int64), y=Y), DIGITS,
                       "x has dtype int64"),
    "uint8-teacher": ("mine.npz", npz_bytes(x=np.zeros((4, 16), np.uint8), y=np.zeros(4)),
                      TEACHER, "x has dtype uint8"),
    "label-too-large": ("mine.npz", npz_bytes(x=X, y=np.array([0, 1, 10, 2])), DIGITS,
                        "y holds labels from 0 to 10 (1 outside 0..9); task 'digits' has 10"),
    "negative-label": ("mine.npz", npz_bytes(x=X, y=np.array([0, -1, 3, 2])), DIGITS,
                       "y holds labels from -1 to 3"),
    "float-labels": ("mine.npz", npz_bytes(x=X, y=Y.astype(np.float32)), DIGITS,
                     "needs integer class labels"),
    "one-hot-labels": ("mine.npz", npz_bytes(x=X, y=np.eye(10, dtype=np.int64)[Y]), DIGITS,
                       "(not one-hot)"),
    "nan-inputs": ("mine.npz", npz_bytes(x=NAN_X, y=Y), DIGITS,
                   "x holds 1 NaN or infinite value(s)"),
    "inf-targets": ("mine.npz", npz_bytes(x=np.zeros((2, 16)), y=np.array([[1.0], [np.inf]])),
                    TEACHER, "y holds 1 NaN or infinite value(s)"),
    "wrong-target-shape": ("mine.npz", npz_bytes(x=np.zeros((2, 16)), y=np.zeros((2, 2))),
                           TEACHER, "needs targets of shape (2, 1) (or (2,))"),
    "text-too-short": ("mine.txt", b"x" * 80, SHAKESPEARE,
                       "holds 80 characters, fewer than one sequence of data.seq_len + 1 = 81"),
    "text-not-utf8": ("mine.txt", "caf\u00e9 ".encode("latin-1") * 40, SHAKESPEARE,
                      "is not UTF-8 text (byte 0xe9 at offset 3)"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_are_refused_naming_the_file_and_the_problem(tmp_path, case):
    name, content, spec, fragment = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LocalDataError) as info:
        load_local(path, spec)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and fragment in message, message


def zip_members(path, **members: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(f"{name}.npy", content)
    return path


def npy_header(descr: str, shape: tuple) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue()


def damaged_files(tmp_path) -> dict[str, Path]:
    whole = npz_bytes(x=X, y=Y)
    crc = bytearray(whole)
    crc[300:340] = bytes(40)  # inside x's data: the archive's CRC no longer matches
    files = {"cut-archive": whole[: len(whole) // 2], "bad-crc": bytes(crc)}
    paths = {name: tmp_path / f"{name}.npz" for name in files}
    for name, content in files.items():
        paths[name].write_bytes(content)
    paths["cut-member"] = zip_members(tmp_path / "cut-member.npz", x=npy_bytes(X)[:-100],
                                      y=npy_bytes(Y))
    paths["cut-header"] = zip_members(tmp_path / "cut-header.npz", x=npy_bytes(X)[:50],
                                      y=npy_bytes(Y))
    paths["not-npy"] = zip_members(tmp_path / "not-npy.npz", x=b"surely not an array " * 8,
                                   y=npy_bytes(Y))
    return paths


def test_a_truncated_or_damaged_npz_is_reported_as_such_not_as_pickles(tmp_path):
    for name, path in damaged_files(tmp_path).items():
        with pytest.raises(LocalDataError) as info:
            load_local(path, DIGITS)
        message = str(info.value)
        assert message.startswith(f"{path}: is truncated or not a valid .npz archive"), (name, message)
        assert "pickle" not in message, (name, message)


def test_an_npz_expanding_past_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    # 2 GiB of uint8 declared by x's header, a few bytes stored: refused under the default
    bomb = zip_members(tmp_path / "bomb.npz", x=npy_header("|u1", (2**31,)) + bytes(64),
                       y=npy_bytes(Y))
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: pytest.fail("read"))
    with pytest.raises(LocalDataError, match=r"x and y take 2,147,483,\d+ bytes once read, more "
                       rf"than the limit of 1,073,741,824\. .*{MAX_BYTES_ENV}"):
        load_local(bomb, DIGITS)
    monkeypatch.undo()

    # a real compressed file: 5 MB of zeros in a few kB; refused under a 1 MB limit
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, x=np.zeros((20000, 8, 8), np.float32), y=np.zeros(20000, np.int64))
    assert path.stat().st_size < 50_000
    monkeypatch.setenv(MAX_BYTES_ENV, "1e6")
    with pytest.raises(LocalDataError, match="more than the limit of 1,000,000"):
        load_local(path, DIGITS)
    monkeypatch.setenv(MAX_BYTES_ENV, "6e6")  # raised: read
    assert len(load_local(path, DIGITS)) == 20000
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match=f"{MAX_BYTES_ENV}='lots': give a positive number"):
        load_local(path, DIGITS)


def test_a_text_mostly_outside_the_vocabulary_is_logged_naming_the_file(tmp_path, caplog):
    spec = tasks.TaskSpec("shakespeare", "language", len(VOCAB), (4,))
    nul, fine = tmp_path / "nul.txt", tmp_path / "fine.txt"
    nul.write_bytes(b"ab" + bytes(98))  # 98% NUL: would train as spaces
    fine.write_text("To be, or not to be: that is the question. \u00e9\u00e9")
    with caplog.at_level(logging.WARNING, logger="tasks.local_data"):
        assert len(load_local(nul, spec)) == 20
        assert len(load_local(fine, spec)) == 9
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert str(nul) in warnings[0].getMessage() and "98%" in warnings[0].getMessage()


def test_a_missing_file_or_a_folder_says_what_to_give(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        load_local("absent.npz", DIGITS)
    message = str(info.value)
    assert str(tmp_path / "absent.npz") in message and "does not exist" in message
    assert f"relative to the working directory {tmp_path}" in message and "data-path" in message
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(LocalDataError, match="is not a regular file"):
        load_local(tmp_path / "folder.npz", DIGITS)


# ----------------------------------------------------------------------- the ClientApp
class FakeGrid:
    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return self.node_ids


def messages_for(cfg, kind="train"):
    """One train (or evaluate) message from the real strategy, carrying the initial model."""
    strategy = build_strategy(cfg, ConfigRecord(to_flat(cfg)))
    start = tasks.make_model(cfg, tasks.task_spec(cfg)).state_dict()
    record = ArrayRecord({k: v.clone() for k, v in start.items()})
    configure = strategy.configure_train if kind == "train" else strategy.configure_evaluate
    return list(configure(1, record, ConfigRecord(), FakeGrid([5]))), start


def device(node_config, node_id=7):
    return Context(run_id=1, node_id=node_id, state=RecordDict(), run_config={},
                   node_config=node_config)


@pytest.fixture
def no_central_data(monkeypatch):
    """Any path to the central data set fails the test; the resident model is rebuilt."""
    def central(*args, **kwargs):
        raise AssertionError("the ClientApp touched the central data set")

    for name in ("load_task", "client_split", "_load", "federation"):
        monkeypatch.setattr(tasks, name, central)
    client_handlers._resident_model.cache_clear()
    yield
    client_handlers._resident_model.cache_clear()


def test_client_trains_and_evaluates_on_its_data_path(tmp_path, flower_identity, no_central_data):
    cfg = load_config({"train.local_steps": 3, "train.batch_size": 8,
                       "strategy.fraction_evaluate": 1.0, **ONE_NODE})
    x, y = digits_arrays(37)
    path = save_npz(tmp_path / "mine.npz", x=x, y=y)
    (message,), start = messages_for(cfg)
    reply = client_app.train(message, device({P.DATA_PATH: str(path)}))
    metrics = reply.content[P.METRICS]
    assert metrics[P.NUM_EXAMPLES] == 37 and metrics[P.NUM_STEPS] == 3
    assert np.isfinite(metrics[P.TRAIN_LOSS]) and P.INDEX not in metrics
    trained = reply.content[P.ARRAYS].to_torch_state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start)

    (message,), _ = messages_for(cfg, "evaluate")
    reply = client_app.evaluate(message, device({P.DATA_PATH: str(path)}))
    model = tasks.make_model(cfg, tasks.task_spec(cfg))
    local = load_local(path, tasks.task_spec(cfg))
    want = tasks.evaluate(model, local, tasks.make_loss(cfg, tasks.task_spec(cfg)), "classification")
    assert reply.content[P.METRICS][P.NUM_EXAMPLES] == 37
    assert reply.content[P.METRICS][P.EVAL_LOSS] == pytest.approx(want["loss"], rel=1e-6)
    assert reply.content[P.METRICS][P.EVAL_ACCURACY] == pytest.approx(want["accuracy"])


def test_a_device_needs_no_fashion_mnist(tmp_path, flower_identity, no_central_data):
    cfg = load_config({"task.name": "fmnist", "data.path": str(tmp_path / "no-fmnist-here"),
                       "data.download": False, "train.local_steps": 2, **ONE_NODE})
    raw = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    path = save_npz(tmp_path / "photos.npz", x=raw, y=np.arange(20) % 10)
    (message,), _ = messages_for(cfg)
    reply = client_app.train(message, device({P.DATA_PATH: str(path)}))
    assert reply.content[P.METRICS][P.NUM_EXAMPLES] == 20


def test_a_device_file_of_partition_k_trains_like_central_partition_k(tmp_path, flower_identity):
    """Same data, same partition-id (so the same batch seed): the same model, bit for bit."""
    cfg = load_config({"train.local_steps": 4, "train.batch_size": 16, **ONE_NODE})
    path = tmp_path / "p1.npz"
    assert main(["export", "--partition-id", "1", "--num-partitions", "3", str(path)]) == 0
    (message,), _ = messages_for(cfg)
    central = client_app.train(message, device({P.PARTITION_ID: 1, P.NUM_PARTITIONS: 3}))
    local = client_app.train(message, device({P.DATA_PATH: str(path), P.PARTITION_ID: 1}))
    a, b = (r.content[P.ARRAYS].to_torch_state_dict() for r in (central, local))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert central.content[P.METRICS][P.NUM_EXAMPLES] == local.content[P.METRICS][P.NUM_EXAMPLES]


def test_without_partition_id_the_batch_order_follows_the_node_id(tmp_path, flower_identity):
    cfg = load_config({"train.local_steps": 3, "train.batch_size": 4, **ONE_NODE})
    x, y = digits_arrays(40)
    node_config = {P.DATA_PATH: str(save_npz(tmp_path / "mine.npz", x=x, y=y))}
    (message,), _ = messages_for(cfg)
    a, b, c = (client_app.train(message, device(node_config, node_id)).content[P.ARRAYS]
               .to_torch_state_dict() for node_id in (11, 11, 12))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_gossip_needs_a_partition_id_next_to_the_data_path(tmp_path, flower_identity):
    cfg = load_config({"train.local_steps": 1, **ONE_NODE})
    x, y = digits_arrays(10)
    path = str(save_npz(tmp_path / "mine.npz", x=x, y=y))
    (message,), _ = messages_for(cfg)
    message.content[P.CONFIG][P.WANT_PARTITION_ID] = True  # what Gossip-PGA asks every round
    with pytest.raises(ValueError, match="distinct partition-id in 0..n-1 next to its data-path"):
        client_app.train(message, device({P.DATA_PATH: path}))
    reply = client_app.train(message, device({P.DATA_PATH: path, P.PARTITION_ID: 3}))
    assert reply.content[P.METRICS][P.INDEX] == 3
    with pytest.raises(ValueError, match="partition-id 3 is outside 0..1"):
        client_app.train(message, device({P.DATA_PATH: path, P.PARTITION_ID: 3,
                                          P.NUM_PARTITIONS: 2}))


def test_a_bad_data_path_fails_the_round_with_the_files_problem(tmp_path, flower_identity):
    cfg = load_config({"train.local_steps": 1, **ONE_NODE})
    path = save_npz(tmp_path / "mine.npz", x=np.zeros((3, 28, 28), np.float32), y=np.arange(3))
    (message,), _ = messages_for(cfg)
    with pytest.raises(LocalDataError, match=f"{path}: x has shape \\(3, 28, 28\\)"):
        client_app.train(message, device({P.DATA_PATH: str(path)}))
