"""A fresh machine: no Debian dataset-fashion-mnist, no earlier download, no network. The
Fashion-MNIST tests are skipped saying why (tests/conftest.py), and loading says how to get
the files; an earlier download is found without the network."""

from __future__ import annotations

import functools
import gzip
from types import SimpleNamespace

import numpy as np
import pytest
import torchvision.datasets

import tasks.vision as vision
from tests import conftest


class NoNetwork:
    """torchvision's FashionMNIST as it fails without a network."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: "
                           "<urlopen error [Errno -2] Name or service not known>")


@pytest.fixture
def fresh_machine(tmp_path, monkeypatch):
    """Debian's folder and the download folder empty, and the download failing."""
    monkeypatch.setattr(vision, "DEBIAN_FMNIST", tmp_path / "usr-share-datasets")
    monkeypatch.setattr(vision, "DOWNLOAD_ROOT", tmp_path / "cache")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", NoNetwork)
    monkeypatch.setattr(conftest, "_fmnist_verdict", functools.cache(conftest.fmnist_missing_reason))
    return tmp_path


def marked(name: str | None):
    return SimpleNamespace(get_closest_marker=lambda wanted: object() if wanted == name else None)


def test_loading_fmnist_says_how_to_get_it(fresh_machine):
    with pytest.raises(FileNotFoundError) as info:
        vision.load_fmnist("auto", download=True)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "data.path" in message
    assert "download failed" in message and "Name or service not known" in message
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        vision.load_fmnist("auto", download=False)


def test_fmnist_tests_are_skipped_saying_why(fresh_machine):
    reason = conftest.fmnist_missing_reason()
    assert reason.startswith("Fashion-MNIST is not available")
    assert "dataset-fashion-mnist" in reason and "download failed" in reason
    with pytest.raises(pytest.skip.Exception, match="dataset-fashion-mnist"):
        conftest.pytest_runtest_setup(marked("fmnist"))
    conftest.pytest_runtest_setup(marked(None))  # unmarked tests run


def test_an_earlier_download_is_found_without_the_network(fresh_machine):
    raw = vision.DOWNLOAD_ROOT / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images, labels = np.zeros((3, 28, 28), np.uint8), np.arange(3, dtype=np.uint8)
    for split in ("train", "t10k"):
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in array.shape)
            (raw / f"{split}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))
    assert vision.locate_fmnist("auto", download=False) == raw
    assert conftest.fmnist_missing_reason() is None
    conftest.pytest_runtest_setup(marked("fmnist"))  # not skipped
    assert len(vision.load_fmnist("auto", download=True).train) == 3
