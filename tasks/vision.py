"""Image classification tasks: scikit-learn's digits (embedded) and Fashion-MNIST, each
registered here (``tasks.registry``)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from tasks.base import CLASSIFICATION, Split, TaskData
from tasks.registry import Task, register

NUM_CLASSES = 10
DIGITS_SHAPE = (1, 8, 8)
FMNIST_SHAPE = (1, 28, 28)
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530  # of the training images scaled to [0, 1]

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_ROOT = Path("~/.cache/fedlocal")  # torchvision's download: <root>/FashionMNIST/raw
FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
FMNIST_HELP = (
    "Fashion-MNIST was not found. Either install Debian's copy "
    "(`apt-get install dataset-fashion-mnist`, files land in /usr/share/datasets/fashion-mnist), "
    "point data.path at a folder holding the four IDX files (train-images-idx3-ubyte[.gz], ...), "
    "or allow torchvision to download it (data.download=true, needs internet)."
)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    """Indices (train, test) with ``test_fraction`` of every class held out, shuffled."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = max(1, round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load_digits(test_fraction: float, seed: int) -> TaskData:
    """1797 8x8 digit images shipped inside scikit-learn (no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)  # N,1,8,8
    y = torch.tensor(bunch.target, dtype=torch.long)
    train, test = stratified_split(bunch.target, test_fraction, seed)
    return TaskData(
        train=Split(x[train], y[train]),
        test=Split(x[test], y[test]),
        kind=CLASSIFICATION,
        num_outputs=NUM_CLASSES,
        input_shape=DIGITS_SHAPE,
        labels=bunch.target[train],
    )


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (EOFError, OSError) as err:  # truncated or corrupt gzip, unreadable file
        raise ValueError(f"{path} is not a readable IDX file: {err}") from err
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} bytes.")
    return data.reshape(shape)


def _find_idx_folder(path: str) -> Path | None:
    candidates = [Path(path).expanduser()] if path != "auto" else [
        DEBIAN_FMNIST, DOWNLOAD_ROOT.expanduser()]
    for folder in candidates:
        for sub in (folder, folder / "FashionMNIST" / "raw"):
            if all(_idx_file(sub, name) for name in FMNIST_FILES.values()):
                return sub
    return None


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _torchvision_download(root: Path) -> Path:
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as err:  # no internet, mirror down, ...
        raise FileNotFoundError(f"{FMNIST_HELP} (torchvision's download failed: {err})") from err
    return root / "FashionMNIST" / "raw"


def locate_fmnist(path: str, download: bool) -> Path:
    """The folder holding Fashion-MNIST's four IDX files: ``data.path``, or for ``auto``
    Debian's package, then an earlier download, then (``download``) torchvision's download
    into ``DOWNLOAD_ROOT``. ``FileNotFoundError`` saying how to get the files otherwise."""
    folder = _find_idx_folder(path)
    if folder is None and path != "auto":
        raise FileNotFoundError(f"data.path = {path!r} holds no Fashion-MNIST IDX files. {FMNIST_HELP}")
    if folder is None:
        if not download:
            raise FileNotFoundError(FMNIST_HELP)
        folder = _torchvision_download(DOWNLOAD_ROOT.expanduser())
    return folder


def load_fmnist(path: str, download: bool) -> TaskData:
    """Fashion-MNIST from IDX files: data.path, then Debian's package, then torchvision."""
    folder = locate_fmnist(path, download)
    arrays = {key: _read_idx(_idx_file(folder, name)) for key, name in FMNIST_FILES.items()}
    return TaskData(
        train=Split(standardised(arrays["train_x"][:, None]),
                    torch.from_numpy(arrays["train_y"].astype(np.int64))),
        test=Split(standardised(arrays["test_x"][:, None]),
                   torch.from_numpy(arrays["test_y"].astype(np.int64))),
        kind=CLASSIFICATION,
        num_outputs=NUM_CLASSES,
        input_shape=FMNIST_SHAPE,
        labels=arrays["train_y"].astype(np.int64),
    )


# What each image task makes of 8-bit (N, 1, H, W) images: the server's Fashion-MNIST
# images and a device's uint8 file (tasks.local_data) go through the same function.
def scaled(raw: np.ndarray) -> torch.Tensor:
    """(N, 1, H, W) uint8 -> float32 in [0, 1] (digits' input)."""
    return torch.from_numpy(np.array(raw, dtype=np.uint8)).float().div_(255.0)


def standardised(raw: np.ndarray) -> torch.Tensor:
    """Fashion-MNIST's input: scaled to [0, 1], then the training set's mean/std removed."""
    return scaled(raw).sub_(FMNIST_MEAN).div_(FMNIST_STD)


register(Task(
    name="digits", kind=CLASSIFICATION, num_outputs=NUM_CLASSES,
    input_shape=lambda data: DIGITS_SHAPE,
    load=lambda key: load_digits(key.test_fraction, key.seed),
    default_model="mlp", models=("mlp", "cnn"), images_from_uint8=scaled,
))
register(Task(
    name="fmnist", kind=CLASSIFICATION, num_outputs=NUM_CLASSES,
    input_shape=lambda data: FMNIST_SHAPE,
    load=lambda key: load_fmnist(key.path, key.download),
    default_model="mlp", models=("mlp", "cnn"), images_from_uint8=standardised,
))
