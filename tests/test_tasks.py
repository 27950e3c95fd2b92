"""The plain ML side of fedlocal: task data, models, losses, one SGD step, evaluation,
the Fashion-MNIST IDX reader and device choice (``tasks``, ``tasks.vision``)."""

from __future__ import annotations

import gzip
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tasks
from conf import load_config
from tasks.base import CLASSIFICATION, LANGUAGE, REGRESSION
from tasks.vision import _idx_file, _read_idx, load_fmnist
from tests.helpers import train_steps

CORPUS = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"
SEQ_LEN, VOCAB = 80, 96

# case -> (config overrides, learning rate of the one-step test). The rates are small enough
# for one full-batch step to lower the loss by >= 0.2 % on the fixed batch (measured:
# digits 5 %, digits-mse 43 %, fmnist 25 %, fmnist-cnn 2 %, teacher 14 %, lstm 2 %, rnn 9 %).
CASES = {
    "digits": ({}, 0.05),
    "digits-mse": ({"task.loss": "mse"}, 0.01),
    "fmnist": ({"task.name": "fmnist"}, 0.01),
    "fmnist-cnn": ({"task.name": "fmnist", "model.name": "cnn"}, 0.05),
    "teacher": ({"task.name": "teacher"}, 0.05),
    "shakespeare-lstm": ({"task.name": "shakespeare", "model.name": "lstm"}, 1.0),
    "shakespeare-rnn": ({"task.name": "shakespeare", "model.name": "rnn"}, 0.1),
}


def cases(*names: str) -> list:
    """Test parameters for these cases (default: all), the Fashion-MNIST ones marked
    ``fmnist`` (skipped, saying why, where the data cannot be had: tests/conftest.py)."""
    return [pytest.param(name, marks=pytest.mark.fmnist, id=name)
            if CASES[name][0].get("task.name") == "fmnist" else name for name in names or CASES]


def config(case: str, **extra):
    overrides = dict(CASES[case][0])
    if overrides.get("task.name") == "shakespeare":
        if not CORPUS.is_file():
            pytest.skip(f"tiny Shakespeare corpus not found at {CORPUS}")
        overrides["data.path"] = str(CORPUS)
    return load_config({**overrides, **extra})


def fixed_batch(data):
    """The first 64 training examples (16 sequences for the language task)."""
    return data.train.subset(range(16 if data.kind == LANGUAGE else 64))


def output_shape(data, batch_size: int) -> tuple[int, ...]:
    if data.kind == LANGUAGE:
        return (batch_size, SEQ_LEN, VOCAB)
    return (batch_size, 1 if data.kind == REGRESSION else 10)


# ----------------------------------------------------------------------- models
@pytest.mark.parametrize("case", cases())
def test_model_output_shape(case):
    cfg = config(case)
    data = tasks.load_task(cfg)
    batch = fixed_batch(data)
    out = tasks.make_model(cfg, data)(batch.x)
    assert tuple(out.shape) == output_shape(data, len(batch))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("case", cases())
def test_one_sgd_step_lowers_the_loss_on_a_fixed_batch(case):
    cfg = config(case)
    data = tasks.load_task(cfg)
    batch = fixed_batch(data)
    model, loss_fn = tasks.make_model(cfg, data), tasks.make_loss(cfg, data)
    with torch.no_grad():
        before = float(loss_fn(model(batch.x), batch.y))
    result = train_steps(model, batch, loss_fn, steps=1, batch_size=len(batch), lr=CASES[case][1])
    with torch.no_grad():
        after = float(loss_fn(model(batch.x), batch.y))
    assert result.loss == pytest.approx(before, rel=1e-5)  # the loss before its update
    assert after < before * (1 - 2e-3)


@pytest.mark.parametrize("case", cases("digits", "fmnist-cnn", "teacher", "shakespeare-lstm",
                                       "shakespeare-rnn"))
def test_model_init_is_deterministic_given_run_seed(case):
    cfg = config(case)
    data = tasks.load_task(cfg)
    a = tasks.make_model(cfg, data).state_dict()
    b = tasks.make_model(cfg, data).state_dict()
    c = tasks.make_model(config(case, **{"run.seed": 1}), data).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_loss_functions_match_their_formulas():
    for case, kind in (("digits", "ce"), ("digits-mse", "mse"), ("teacher", "mse")):
        cfg = config(case)
        data = tasks.load_task(cfg)
        batch = fixed_batch(data)
        out = torch.randn(len(batch), data.num_outputs, generator=torch.Generator().manual_seed(0))
        got = float(tasks.make_loss(cfg, data)(out, batch.y))
        if kind == "ce":
            want = float(F.cross_entropy(out, batch.y))
        else:
            target = batch.y if data.kind == REGRESSION else F.one_hot(batch.y, 10).float()
            want = 0.5 * float(((out - target) ** 2).sum(1).mean())
        assert got == pytest.approx(want, rel=1e-6), case


# ----------------------------------------------------------------------- data
def test_digits_sizes_and_stratified_split():
    from sklearn.datasets import load_digits

    data = tasks.load_task(config("digits"))
    per_class = np.bincount(load_digits().target)
    assert len(data.train) + len(data.test) == 1797
    test_counts = np.bincount(data.test.y.numpy(), minlength=10)
    assert (test_counts > 0).all()
    assert test_counts.tolist() == [round(0.2 * n) for n in per_class]
    assert len(data.test) == 359
    train_counts = np.bincount(data.train.y.numpy(), minlength=10)
    assert (train_counts + test_counts).tolist() == per_class.tolist()
    assert np.array_equal(data.labels, data.train.y.numpy())
    assert data.input_shape == (1, 8, 8) and data.kind == CLASSIFICATION
    assert data.train.x.min() >= 0 and data.train.x.max() == 1


@pytest.mark.fmnist
def test_fmnist_sizes_and_normalisation():
    data = tasks.load_task(config("fmnist"))
    assert (len(data.train), len(data.test)) == (60000, 10000)
    assert tuple(data.train.x.shape) == (60000, 1, 28, 28)
    assert data.input_shape == (1, 28, 28)
    assert np.bincount(data.labels).tolist() == [6000] * 10
    assert np.bincount(data.test.y.numpy()).tolist() == [1000] * 10
    assert np.array_equal(data.labels, data.train.y.numpy())
    assert abs(float(data.train.x.mean())) < 0.01
    assert abs(float(data.train.x.std()) - 1) < 0.01


def test_teacher_sizes_and_scaling():
    cfg = config("teacher")
    data = tasks.load_task(cfg)
    n = cfg.data.num_samples
    assert len(data.train) + len(data.test) == n == 512
    assert len(data.test) == round(0.2 * n)
    x = torch.cat([data.train.x, data.test.x])
    y = torch.cat([data.train.y, data.test.y])
    assert tuple(x.shape) == (n, cfg.data.input_dim) and tuple(y.shape) == (n, 1)
    assert torch.allclose(x.norm(dim=1), torch.ones(n), atol=1e-5)
    assert abs(float(y.mean())) < 1e-5
    assert float(y.std()) == pytest.approx(1.0, abs=1e-5)
    # partition labels: target deciles of the training pool
    assert np.bincount(data.labels).tolist() == [41] * 10  # 410 training targets
    order = np.argsort(data.train.y[:, 0].numpy())
    assert (np.diff(data.labels[order]) >= 0).all()


def test_max_train_subsamples_the_pool():
    data = tasks.load_task(config("digits", **{"data.max_train": 100}))
    assert len(data.train) == len(data.labels) == 100
    assert len(data.test) == 359
    assert np.array_equal(data.labels, data.train.y.numpy())


# ----------------------------------------------------------------------- task_spec
@pytest.mark.parametrize(
    "case, extra",
    [("digits", {}), pytest.param("fmnist", {}, marks=pytest.mark.fmnist),
     pytest.param("fmnist-cnn", {}, marks=pytest.mark.fmnist), ("teacher", {}),
     ("teacher", {"data.input_dim": 5}), ("shakespeare-lstm", {}),
     ("shakespeare-lstm", {"data.seq_len": 33})],
    ids=["digits", "fmnist", "fmnist-cnn", "teacher", "teacher-dim5", "shakespeare",
         "shakespeare-seq33"],
)
def test_task_spec_equals_what_load_task_reports(case, extra):
    cfg = config(case, **extra)
    spec = tasks.task_spec(cfg)
    data = tasks.load_task(cfg)
    assert spec.name == cfg.task.name
    assert (spec.kind, spec.num_outputs, spec.input_shape) == (
        data.kind, data.num_outputs, data.input_shape)
    assert tuple(data.train.x.shape[1:]) == spec.input_shape
    from_spec, from_data = tasks.make_model(cfg, spec), tasks.make_model(cfg, data)
    assert all(torch.equal(a, b) for a, b in zip(from_spec.state_dict().values(),
                                                  from_data.state_dict().values(), strict=True))


def test_task_spec_loads_no_data(monkeypatch, tmp_path):
    """fmnist with its data absent: the spec still comes from the config alone."""
    def no_data(*args):
        raise AssertionError("task_spec loaded data")

    monkeypatch.setattr(tasks, "_load", no_data)
    cfg = config("fmnist", **{"data.path": str(tmp_path / "absent"), "data.download": False})
    assert tasks.task_spec(cfg) == tasks.TaskSpec("fmnist", CLASSIFICATION, 10, (1, 28, 28))


# ----------------------------------------------------------------------- evaluate
def test_evaluate_classification_matches_a_direct_computation():
    cfg = config("digits")
    data = tasks.load_task(cfg)
    model, loss_fn = tasks.make_model(cfg, data), tasks.make_loss(cfg, data)
    metrics = tasks.evaluate(model, data.test, loss_fn, data.kind, batch_size=100)  # 359: uneven
    with torch.no_grad():
        out = model(data.test.x)
    assert set(metrics) == {"loss", "accuracy"}
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["accuracy"] == pytest.approx(float((out.argmax(1) == data.test.y).float().mean()))
    assert metrics["loss"] == pytest.approx(float(loss_fn(out, data.test.y)), rel=1e-5)


def test_evaluate_regression_reports_only_the_loss():
    cfg = config("teacher")
    data = tasks.load_task(cfg)
    model, loss_fn = tasks.make_model(cfg, data), tasks.make_loss(cfg, data)
    metrics = tasks.evaluate(model, data.test, loss_fn, data.kind, batch_size=30)
    with torch.no_grad():
        want = 0.5 * float((model(data.test.x) - data.test.y).pow(2).sum(1).mean())
    assert set(metrics) == {"loss"}
    assert metrics["loss"] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("case", ["shakespeare-lstm", "shakespeare-rnn"])
def test_evaluate_language_perplexity_is_exp_loss(case):
    cfg = config(case)
    data = tasks.load_task(cfg)
    model, loss_fn = tasks.make_model(cfg, data), tasks.make_loss(cfg, data)
    test = data.test.subset(range(64))
    metrics = tasks.evaluate(model, test, loss_fn, data.kind, batch_size=24)
    with torch.no_grad():
        out = model(test.x)
    assert set(metrics) == {"loss", "accuracy", "perplexity"}
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-6)
    assert metrics["loss"] == pytest.approx(float(loss_fn(out, test.y)), rel=1e-5)
    per_char = float((out.argmax(-1) == test.y).float().mean())  # over all 64 * 80 characters
    assert metrics["accuracy"] == pytest.approx(per_char)
    assert 1.0 < metrics["perplexity"] < 3 * VOCAB  # an untrained model: near uniform


# ----------------------------------------------------------------------- Fashion-MNIST files
def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def test_fmnist_missing_files_error_says_how_to_get_them(tmp_path):
    cfg = config("fmnist", **{"data.path": str(tmp_path)})
    with pytest.raises(FileNotFoundError) as info:
        tasks.load_task(cfg)
    message = str(info.value)
    assert "dataset-fashion-mnist" in message and "data.path" in message
    assert str(tmp_path) in message


@pytest.mark.parametrize(
    "name, count", [("train-labels-idx1-ubyte", 60000), ("t10k-labels-idx1-ubyte", 10000)]
)
def test_read_idx_gzip_and_plain_agree(tmp_path, fmnist_folder, name, count):
    """The real labels, gzipped and plain (Debian ships .gz, torchvision's download plain)."""
    source = _idx_file(fmnist_folder, name)
    packed, plain = tmp_path / f"{name}.gz", tmp_path / name
    if source.suffix == ".gz":
        shutil.copy(source, packed)
        with gzip.open(packed, "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        shutil.copy(source, plain)
        with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
            shutil.copyfileobj(src, dst)
    from_gzip, from_plain = _read_idx(packed), _read_idx(plain)
    assert from_gzip.dtype == from_plain.dtype == np.uint8
    assert from_gzip.shape == from_plain.shape == (count,)
    assert np.array_equal(from_gzip, from_plain)
    assert np.bincount(from_plain).tolist() == [count // 10] * 10


def test_load_fmnist_reads_a_mix_of_gzip_and_plain_files(tmp_path):
    """A torchvision-style folder (FashionMNIST/raw) with tiny synthetic IDX files."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(12) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(5)[::-1],
    }
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for i, (name, array) in enumerate(arrays.items()):
        if i % 2:
            (raw / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (raw / name).write_bytes(idx_bytes(array))
    data = load_fmnist(str(tmp_path), download=False)
    assert (len(data.train), len(data.test)) == (12, 5)
    assert data.labels.tolist() == data.train.y.tolist() == (np.arange(12) % 10).tolist()
    assert data.test.y.tolist() == [4, 3, 2, 1, 0]
    want = (torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(data.test.x[:, 0], want, atol=1e-6)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\x00\x00", "magic"),  # shorter than a header
        (b"hello, not an IDX file", "magic"),
        (bytes([0, 0, 0x0D, 1, 0, 0, 0, 2]) + b"\x00" * 8, "magic"),  # float IDX, not ubyte
        (gzip.compress(idx_bytes(np.arange(4))), "magic"),  # gzipped but named without .gz
        (idx_bytes(np.zeros((3, 4)))[:-2], "truncated"),  # header says 12 bytes, 10 follow
        (idx_bytes(np.zeros((3, 4))) + b"\x00", "truncated"),  # one byte too many
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path, content, match):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        _read_idx(path)


@pytest.mark.parametrize("damage", ["truncated", "bad-crc", "not-gzip"])
def test_read_idx_rejects_corrupt_gzip_with_value_error(tmp_path, damage):
    packed = gzip.compress(idx_bytes(np.arange(200) % 10))
    content = {
        "truncated": packed[: len(packed) // 2],
        "bad-crc": packed[:-8] + bytes(b ^ 0xFF for b in packed[-8:-4]) + packed[-4:],
        "not-gzip": idx_bytes(np.arange(200) % 10),
    }[damage]
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="labels-idx1-ubyte.gz"):
        _read_idx(path)


# ----------------------------------------------------------------------- device
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_pick_device_auto_is_cpu_without_cuda():
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("this machine has Apple MPS")
    assert tasks.pick_device("auto") == torch.device("cpu")


def test_pick_device_rules(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert tasks.pick_device("auto") == torch.device("cpu")
    assert tasks.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA"):
        tasks.pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tasks.pick_device("auto") == torch.device("cuda")


@pytest.mark.parametrize(
    "cuda, mps, want",
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_pick_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert tasks.pick_device("auto") == torch.device(want)


def test_load_test_set_is_the_test_split_and_is_not_cached():
    cfg = load_config({"task.name": "teacher", "data.num_samples": 200})
    test = tasks.load_test_set(cfg)
    full = tasks.load_task(cfg).test
    assert torch.equal(test.x, full.x) and torch.equal(test.y, full.y)
    assert tasks.load_test_set(cfg).x is not test.x  # loaded afresh, so the pool can be freed


# ----------------------------------------------------------------------- the registry
def test_names_are_every_task_module_and_sorted():
    assert tasks.names() == ["cifar10", "digits", "fmnist", "shakespeare", "teacher"]
    from conf.schema import TaskSection, registered

    choices = TaskSection.__dataclass_fields__["name"].metadata["choices"]
    assert isinstance(choices, registered) and list(choices) == tasks.names()


def test_get_task_names_the_choices():
    assert tasks.get_task("teacher").default_model == "mlp"
    with pytest.raises(ValueError, match="Unknown task.name 'mnist'; choose one of cifar10, digits"):
        tasks.get_task("mnist")


def test_a_second_record_under_a_taken_name_is_refused():
    digits = tasks.get_task("digits")
    with pytest.raises(ValueError, match="Two tasks are registered as 'digits'"):
        tasks.register(tasks.Task(**{**digits.__dict__, "default_model": "cnn"}))
    assert tasks.get_task("digits") is digits
    with pytest.raises(ValueError, match="default_model 'lstm' is not among its models"):
        tasks.register(tasks.Task(**{**digits.__dict__, "name": "x", "default_model": "lstm"}))


@pytest.mark.parametrize("name", ["digits", "fmnist", "teacher", "shakespeare", "cifar10"])
def test_every_record_is_consistent_with_the_config(name):
    """Its default config passes its own check, builds its default model, and names a
    partition, model and loss set the config accepts."""
    task = tasks.get_task(name)
    cfg = load_config({"task.name": name})
    task.check(cfg)
    assert tasks.model_name(cfg) == task.default_model and task.models[0] == task.default_model
    assert tasks.task_spec(cfg) == task.spec(cfg)
    assert tasks.make_model(cfg, task.spec(cfg)) is not None


def test_data_keys_are_named():
    cfg = config("digits", **{"data.path": "/x", "run.seed": 3})
    key = tasks.DataKey.from_config(cfg)
    assert (key.task, key.path, key.seed, key.test_fraction) == ("digits", "/x", 3, 0.2)
    assert repr(key).startswith("DataKey(task='digits', path='/x', download=True")
    split = tasks.SplitKey(key, tasks.PartitionKey.from_config(cfg), 4, 1)
    assert split.partition.scheme == "dirichlet" and split.data.path == "/x"
    assert hash(split) == hash(tasks.SplitKey(key, tasks.PartitionKey.from_config(cfg), 4, 1))
