"""CIFAR-10 (``tasks.cifar10``): its python batches read from a tiny file set written here
(nothing is downloaded), the restricted unpickler, normalisation, partitioning, training
a few steps, a device's own file, bad files and flwr-free import."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tasks
import tasks.cifar10 as cifar10
from conf import load_config
from conf.load import ConfigError
from tasks.local_data import LocalDataError, load_local, main
from tasks.models import parameter_count

MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)  # the numbers the module states
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
PER_BATCH, TEST_SIZE = 20, 30
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ----------------------------------------------------------------------- writing the files
class _Py2Pickler(pickle.Pickler):
    """Writes an array as numpy 1 did under Python 2 (the published files): rebuilt by
    ``_reconstruct``, its bytes a placeholder string swapped for a Python 2 str below."""

    def __init__(self, handle):
        super().__init__(handle, protocol=2)
        self.raw: dict[str, bytes] = {}

    def reducer_override(self, obj):
        if not isinstance(obj, np.ndarray):
            return NotImplemented
        token = f"@@array{len(self.raw)}@@"
        self.raw[token] = obj.tobytes()
        return cifar10._numpy_reconstruct, (np.ndarray, (0,), "b"), (
            1, obj.shape, obj.dtype, False, token)


def py2_pickle(obj) -> bytes:
    """``obj`` pickled as the CIFAR-10 python batches are: protocol 2, numpy 1's module
    name, array data as a Python 2 byte string (BINSTRING), read back with latin-1."""
    buffer = io.BytesIO()
    pickler = _Py2Pickler(buffer)
    pickler.dump(obj)
    data = buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    for token, raw in pickler.raw.items():
        text = token.encode()
        unicode_op = b"X" + len(text).to_bytes(4, "little") + text
        assert data.count(unicode_op) == 1
        data = data.replace(unicode_op, b"T" + len(raw).to_bytes(4, "little") + raw)
    return data


def make_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"batch_label": f"batch {seed}", "labels": [int(v) for v in rng.permutation(n) % 10],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{seed}_{i}.png" for i in range(n)]}


def write_cifar(root: Path, dump=py2_pickle) -> Path:
    """A tiny cifar-10-batches-py under ``root``: five training batches of PER_BATCH images,
    a test batch of TEST_SIZE, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(dump(make_batch(PER_BATCH, i)))
    (folder / "test_batch").write_bytes(dump(make_batch(TEST_SIZE, 0)))
    meta = {"num_cases_per_batch": PER_BATCH, "label_names": NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(dump(meta))
    return folder


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_cifar(tmp_path / "data")


def config(folder: Path, **extra):
    return load_config({"task.name": "cifar10", "data.path": str(folder),
                        "data.min_partition_size": 2, **extra})


def expected_images(data: np.ndarray) -> torch.Tensor:
    """The definition: row = R, G, B planes of 32x32, scaled to [0, 1], standardised."""
    images = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return torch.from_numpy((images - MEAN[:, None, None]) / STD[:, None, None])


# ----------------------------------------------------------------------- loading
@pytest.mark.parametrize("where", ["folder", "parent"])
def test_loads_the_batches_in_order_standardised_per_channel(folder, where):
    data = tasks.load_task(config(folder if where == "folder" else folder.parent))
    batches = [make_batch(PER_BATCH, i) for i in range(1, 6)]
    test = make_batch(TEST_SIZE, 0)
    assert (len(data.train), len(data.test)) == (5 * PER_BATCH, TEST_SIZE)
    assert data.input_shape == (3, 32, 32) and data.num_outputs == 10
    assert data.kind == "classification" and data.train.x.dtype == torch.float32
    want_x = expected_images(np.concatenate([b["data"] for b in batches]))
    assert torch.allclose(data.train.x, want_x, atol=1e-6)
    assert torch.allclose(data.test.x, expected_images(test["data"]), atol=1e-6)
    assert data.train.y.tolist() == sum((b["labels"] for b in batches), [])
    assert data.test.y.tolist() == test["labels"] and data.test.y.dtype == torch.int64
    assert np.array_equal(data.labels, data.train.y.numpy())


def test_pixel_layout_is_red_green_blue_planes_row_by_row(folder):
    data = tasks.load_task(config(folder))
    raw = make_batch(PER_BATCH, 1)["data"][3]  # image 3 of data_batch_1
    for channel, row, col in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        value = raw[channel * 1024 + row * 32 + col] / 255.0
        want = (value - MEAN[channel]) / STD[channel]
        assert float(data.train.x[3, channel, row, col]) == pytest.approx(want, abs=1e-6)


def test_standardisation_constants_centre_a_uniform_image():
    mean_image = np.broadcast_to((MEAN * 255).round().astype(np.uint8)[None, :, None, None],
                                 (1, 3, 32, 32))
    x = cifar10.standardised(mean_image)
    assert tuple(x.shape) == (1, 3, 32, 32)
    assert float(x.abs().max()) < 0.01  # the mean colour maps to about 0 in every channel
    assert np.allclose(cifar10.CIFAR10_MEAN, MEAN) and np.allclose(cifar10.CIFAR10_STD, STD)


def test_python3_pickles_with_bytes_keys_load_too(tmp_path):
    """Files re-pickled under Python 3 with numpy 2 (protocol 4, bytes keys, as
    ``pickle.load(f, encoding='bytes')`` returns them) give the same data."""
    def dump(obj):
        return pickle.dumps({k.encode(): v for k, v in obj.items()}, protocol=4)

    folder = write_cifar(tmp_path / "py3", dump)
    reference = write_cifar(tmp_path / "py2")
    a, b = tasks.load_task(config(folder)), tasks.load_task(config(reference))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


def test_task_spec_and_auto_model_are_the_cnn(folder):
    cfg = config(folder)
    spec = tasks.task_spec(cfg)
    assert spec == tasks.TaskSpec("cifar10", "classification", 10, (3, 32, 32))
    assert tasks.model_name(cfg) == "cnn" and "cifar10" in tasks.names()
    model = tasks.make_model(cfg, spec)
    assert isinstance(model, tasks.models.CNN)
    count = sum(p.numel() for p in model.parameters())
    assert count == parameter_count("cnn", (3, 32, 32), 10, cfg.model.width, 0, 0) == 579_402
    out = model(tasks.load_task(cfg).train.x[:5])
    assert tuple(out.shape) == (5, 10) and torch.isfinite(out).all()
    assert tasks.model_name(config(folder, **{"model.name": "mlp"})) == "mlp"


# ----------------------------------------------------------------------- the unpickler
class _Payload:
    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("dump", [py2_pickle, lambda obj: pickle.dumps(obj, protocol=4)],
                         ids=["protocol2", "protocol4"])
def test_a_pickle_that_would_run_a_command_is_refused_and_nothing_runs(folder, tmp_path, dump):
    marker = tmp_path / "ran"
    batch = make_batch(PER_BATCH, 3)
    batch["labels"] = _Payload(os.system, f"touch {marker}")
    (folder / "data_batch_3").write_bytes(dump(batch))
    with pytest.raises(ValueError, match=r"data_batch_3: refused to load.*system") as info:
        tasks.load_task(config(folder))
    assert "pickle's globals can run code" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("call, args", [(eval, ("1 + 1",)), (__import__, ("os",))],
                         ids=["builtins.eval", "builtins.__import__"])
def test_every_other_global_is_refused(folder, call, args):
    (folder / "test_batch").write_bytes(pickle.dumps(_Payload(call, *args), protocol=4))
    with pytest.raises(ValueError, match=rf"test_batch: refused to load.*builtins\.{call.__name__}"):
        tasks.load_task(config(folder))


def test_numpy_rebuilder_is_limited_to_what_an_array_pickle_asks(folder):
    """The allowed rebuilder cannot be used to allocate an arbitrary array."""
    payload = _Payload(cifar10._numpy_reconstruct, np.ndarray, (10**6,), "b")
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": payload, "labels": []}, protocol=4))
    with pytest.raises(ValueError, match="data_batch_1 is not a readable CIFAR-10 batch"):
        tasks.load_task(config(folder))


# ----------------------------------------------------------------------- bad files
def replace(folder: Path, name: str, content) -> None:
    (folder / name).write_bytes(content if isinstance(content, bytes) else py2_pickle(content))


def batch_with(**changes) -> dict:
    return {**make_batch(PER_BATCH, 2), **changes}


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("data_batch_2", py2_pickle(make_batch(PER_BATCH, 2))[:500], "not a readable"),
        ("data_batch_2", b"definitely not a pickle", "not a readable"),
        ("data_batch_2", [1, 2, 3], "holds a list, not the dict"),
        ("data_batch_2", {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]},
         "no 'data' and 'labels'.*fine_labels"),
        ("data_batch_2", batch_with(data=np.zeros((PER_BATCH, 1024), np.uint8)),
         r"'data' must be a uint8 array of shape \(n, 3072\)"),
        ("data_batch_2", batch_with(data=np.zeros((PER_BATCH, 3072), np.float32)),
         "got float32"),
        ("data_batch_2", batch_with(labels=[0] * (PER_BATCH - 1)), "'labels' must be 20 integer"),
        ("data_batch_2", batch_with(labels=[10] + [0] * (PER_BATCH - 1)),
         "labels range from 0 to 10; CIFAR-10 has 10 classes"),
        ("test_batch", batch_with(labels=[-1] + [0] * (PER_BATCH - 1)), "labels range from -1"),
        ("batches.meta", {"label_names": NAMES * 10}, "holds 100 label_names"),
    ],
    ids=["truncated", "not-pickle", "list", "cifar100-keys", "gray-shape", "float", "short-labels",
         "label-10", "label-negative", "meta-100"],
)
def test_bad_files_are_refused_naming_the_file(folder, name, content, match):
    replace(folder, name, content)
    with pytest.raises(ValueError, match=match) as info:
        tasks.load_task(config(folder))
    assert name in str(info.value)


def test_a_missing_file_names_it_and_the_fix(folder):
    (folder / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError) as info:
        tasks.load_task(config(folder))
    message = str(info.value)
    assert "lacks data_batch_4" in message and "cifar-10-batches-py" in message
    assert "data.download=true" in message and "cs.toronto.edu" in message


def test_auto_without_data_or_download_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar10, "DOWNLOAD_ROOT", tmp_path / "cache")
    cfg = load_config({"task.name": "cifar10", "data.download": False})
    with pytest.raises(FileNotFoundError, match="data.download is false"):
        tasks.load_task(cfg)


def test_auto_downloads_with_torchvision_into_the_cache(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, root, filename, md5):
        calls.append((url, filename, md5))
        write_cifar(Path(root))

    monkeypatch.setattr(cifar10, "DOWNLOAD_ROOT", tmp_path / "cache")
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    cfg = load_config({"task.name": "cifar10", "data.download": True, "run.seed": 7})
    assert len(tasks.load_task(cfg).train) == 5 * PER_BATCH
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]
    assert cifar10.locate_cifar10("auto", download=False) == tmp_path / "cache" / "cifar-10-batches-py"


def test_a_failed_download_says_how_to_get_the_data(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(cifar10, "DOWNLOAD_ROOT", tmp_path / "cache")
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError, match="download failed: no route to host") as info:
        cifar10.load_cifar10("auto", download=True)
    assert "data.path" in str(info.value)


# ----------------------------------------------------------------------- partitions
@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "classes"])
def test_every_label_partition_splits_the_pool(folder, scheme):
    cfg = config(folder, **{"data.partition": scheme})
    data = tasks.load_task(cfg)
    splits = [tasks.client_split(cfg, i, 4) for i in range(4)]
    rows = torch.cat([s.x.flatten(1) for s in splits])
    assert len(torch.unique(rows, dim=0)) == len(rows)  # disjoint (the images are distinct)
    if scheme == "classes":  # data.classes_per_client = 2; classes no client drew are left out
        assert all(len(torch.unique(s.y)) == 2 for s in splits)
        used = torch.unique(torch.cat([s.y for s in splits]))
        assert len(rows) == int(torch.isin(data.train.y, used).sum())
    else:
        assert len(rows) == len(data.train)


def test_natural_partition_is_refused_saying_why(folder):
    with pytest.raises(ConfigError, match="needs task.name = 'shakespeare', not 'cifar10'; use "
                                          "iid, dirichlet or classes"):
        config(folder, **{"data.partition": "natural"})
    with pytest.raises(ConfigError, match="'lstm' is for task 'shakespeare' only; use cnn or mlp"):
        config(folder, **{"model.name": "lstm"})


# ----------------------------------------------------------------------- training
def test_a_few_sgd_steps_lower_the_loss(folder):
    cfg = config(folder)
    data = tasks.load_task(cfg)
    batch = data.train.subset(range(16))
    model, loss_fn = tasks.make_model(cfg, data), tasks.make_loss(cfg, data)
    before = tasks.evaluate(model, batch, loss_fn, data.kind)["loss"]
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
    for _ in range(5):  # measured: 2.28 -> 1.91, falling at every step
        optimizer.zero_grad()
        loss_fn(model(batch.x), batch.y).backward()
        optimizer.step()
    after = tasks.evaluate(model, batch, loss_fn, data.kind)["loss"]
    assert after < 0.9 * before


def test_task_config_file(folder):
    cfg = load_config({"task.name": "cifar10"})
    assert (cfg.model.name, cfg.train.lr, cfg.train.local_steps) == ("auto", 0.05, 50)


# ----------------------------------------------------------------------- a device's own file
def test_device_file_uint8_in_either_layout_equals_the_server_preprocessing(folder, tmp_path):
    spec = tasks.task_spec(config(folder))
    raw = make_batch(12, 5)
    images = raw["data"].reshape(12, 3, 32, 32)
    want = expected_images(raw["data"])
    for name, x in [("chw.npz", images), ("hwc.npz", images.transpose(0, 2, 3, 1).copy())]:
        np.savez(tmp_path / name, x=x, y=np.array(raw["labels"]))
        local = load_local(tmp_path / name, spec)
        assert torch.allclose(local.x, want, atol=1e-6), name
        assert local.y.tolist() == raw["labels"]


def test_device_file_float_must_be_in_the_model_layout(folder, tmp_path):
    spec = tasks.task_spec(config(folder))
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "float.npz", x=x, y=np.arange(4))
    assert torch.equal(load_local(tmp_path / "float.npz", spec).x, torch.from_numpy(x))
    np.savez(tmp_path / "hwc.npz", x=x.transpose(0, 2, 3, 1), y=np.arange(4))
    with pytest.raises(LocalDataError, match=r"takes inputs of shape \(N, 3, 32, 32\), or uint8 "
                                             r"images \(N, 32, 32, 3\)"):
        load_local(tmp_path / "hwc.npz", spec)


def test_export_then_load_is_the_central_client_split(folder, tmp_path, capsys):
    out = tmp_path / "device.npz"
    run_config = f"data.path='{folder}' data.min_partition_size=2"
    assert main(["export", "--task", "cifar10", "--partition-id", "1", "--num-partitions", "3",
                 "--run-config", run_config, str(out)]) == 0
    cfg = config(folder)
    central = tasks.client_split(cfg, 1, 3)
    local = load_local(out, tasks.task_spec(cfg))
    assert torch.equal(local.x, central.x) and torch.equal(local.y, central.y)
    assert "task 'cifar10'" in capsys.readouterr().out


# ----------------------------------------------------------------------- no flwr
@pytest.mark.slow  # a fresh interpreter importing torch: seconds
def test_loading_and_training_import_no_flwr(folder):
    code = (
        "import sys, torch, tasks\n"
        "from tasks.cifar10 import load_cifar10\n"
        "assert 'cifar10' in tasks.names()\n"
        f"data = load_cifar10({str(folder)!r}, False)\n"
        "spec = tasks.get_task('cifar10')\n"
        "model = tasks.build_model('cnn', data.input_shape, 10, 16, 1, 1)\n"
        "torch.nn.functional.cross_entropy(model(data.train.x[:4]), data.train.y[:4]).backward()\n"
        "print(sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')))\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
