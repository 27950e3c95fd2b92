"""CIFAR-10 (Krizhevsky 2009): 32x32 colour images in 10 classes, 50,000 for training (over
the clients) and 10,000 for the server's test set; the image benchmark of CELGC (Liu et al.,
NeurIPS 2022) and Gossip-PGA (Chen et al., ICML 2021). Registered here as task ``cifar10``;
``model.name = 'auto'`` builds the small ReLU CNN (``tasks.models.CNN``). No flwr imports.

Files: torchvision's folder ``cifar-10-batches-py/`` (the "CIFAR-10 python version" archive
unpacked): ``data_batch_1`` .. ``data_batch_5`` (training), ``test_batch``, ``batches.meta``.
``data.path`` names that folder or the folder holding it; ``auto`` looks in
``~/.cache/fedlocal`` and, with ``data.download``, downloads the archive there with
torchvision (its address and MD5 checksum).

Each batch is a Python pickle of a dict: ``data``, an (n, 3072) uint8 array whose rows are
images stored as their red, green and blue 32x32 planes, row by row; ``labels``, n class
indices in 0..9; ``batches.meta`` holds the 10 ``label_names``. A pickle can run any code
while it loads, so these are read only with ``_BatchUnpickler``, which lets a file build the
plain data above and one numpy array and refuses anything else with a ValueError naming the
file.

Inputs: the uint8 images scaled to [0, 1], then standardised per channel c,
``x_c = (x_c - mean_c) / std_c``, with the mean and standard deviation over every pixel of
the 50,000 training images: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616)
(red, green, blue). A device's own uint8 file (``tasks.local_data``) goes through the same
function.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

try:  # numpy 2
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct as _numpy_reconstruct

from tasks.base import CLASSIFICATION, Split, TaskData
from tasks.registry import Task, register
from tasks.vision import NUM_CLASSES, scaled

CIFAR10_SHAPE = (3, 32, 32)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per channel (R, G, B), training images in [0, 1]
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

FOLDER = "cifar-10-batches-py"  # torchvision's name for the unpacked archive
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE, META_FILE = "test_batch", "batches.meta"
FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
DOWNLOAD_ROOT = Path("~/.cache/fedlocal")  # torchvision's download: <root>/cifar-10-batches-py
CIFAR10_HELP = (
    "CIFAR-10 was not found. Point data.path at torchvision's folder cifar-10-batches-py "
    "(data_batch_1..5, test_batch, batches.meta: the 'CIFAR-10 python version' from "
    "https://www.cs.toronto.edu/~kriz/cifar.html, unpacked) or at the folder holding it, or "
    "let torchvision download it (170 MB) into ~/.cache/fedlocal with data.path=auto "
    "data.download=true (needs internet)."
)


# ----------------------------------------------------------------------------- reading
class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch and nothing else. Dicts, lists, strings and numbers need
    no global; the one numpy array needs numpy's array rebuilder, ``ndarray`` and
    ``dtype`` (under numpy 1's module name, as the published files were written, or numpy
    2's). Any other global (a function to call, a class to build) is refused before it is
    looked up, so nothing in the file runs."""

    def __init__(self, handle, file: Path):
        super().__init__(handle, encoding="latin1")  # Python 2 strings, as torchvision reads
        self.file = file

    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise _refused(self.file, f"{module}.{name}")
        return found


def _reconstruct(cls, shape, dtype):
    """numpy's ``_reconstruct`` for what an array pickle asks of it (an empty ndarray that
    its state then fills), and nothing else."""
    if cls is not np.ndarray or tuple(shape) != (0,):
        raise pickle.UnpicklingError(f"an array rebuilt as {cls!r} of shape {shape!r}")
    return _numpy_reconstruct(cls, shape, dtype)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1 (the published files)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class CifarFileError(ValueError):
    """A CIFAR-10 file that cannot be used; the message names the file and the problem."""


def _refused(file: Path, what: str) -> CifarFileError:
    return CifarFileError(
        f"{file}: refused to load; the pickle asks for {what}, which a CIFAR-10 batch does not "
        "need (it holds only a dict of lists, strings, numbers and a numpy array), and a "
        "pickle's globals can run code. Use the original files of the CIFAR-10 python "
        "version (cifar-10-python.tar.gz).")


def _unpickle(file: Path):
    try:
        with open(file, "rb") as handle:
            return _BatchUnpickler(handle, file).load()
    except CifarFileError:
        raise
    except OSError as err:
        raise CifarFileError(f"{file}: cannot read it ({err}).") from None
    except Exception as err:  # truncated, not a pickle, a refused array: unusable alike
        raise CifarFileError(f"{file} is not a readable CIFAR-10 batch (a Python pickle of a "
                             f"dict): {type(err).__name__}: {err}.") from None


def _entries(file: Path) -> dict:
    """The file's dict, with ``bytes`` keys (``pickle.load(..., encoding='bytes')`` style
    files) read as text."""
    content = _unpickle(file)
    if not isinstance(content, dict):
        raise CifarFileError(f"{file} holds a {type(content).__name__}, not the dict of a "
                             "CIFAR-10 batch.")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value
            for key, value in content.items()}


def read_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: its images as uint8 (n, 3, 32, 32) and labels as int64 (n,)."""
    batch = _entries(file)
    if "data" not in batch or "labels" not in batch:
        found = ", ".join(map(str, batch)) or "none"
        raise CifarFileError(f"{file} has no 'data' and 'labels' (keys: {found}); is it a "
                             "CIFAR-10 batch? (CIFAR-100's files have 'fine_labels'.)")
    data, labels = batch["data"], np.asarray(batch["labels"])
    pixels = int(np.prod(CIFAR10_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != pixels:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CifarFileError(f"{file}: 'data' must be a uint8 array of shape (n, {pixels}), one "
                             f"3x32x32 image per row; got {got}.")
    if labels.ndim != 1 or len(labels) != len(data) or labels.dtype.kind not in "iu":
        raise CifarFileError(f"{file}: 'labels' must be {len(data)} integer class labels, one "
                             f"per image; got {labels.dtype} {labels.shape}.")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise CifarFileError(f"{file}: labels range from {labels.min()} to {labels.max()}; "
                             f"CIFAR-10 has {NUM_CLASSES} classes, 0..{NUM_CLASSES - 1}.")
    return data.reshape(len(data), *CIFAR10_SHAPE), labels.astype(np.int64)


def _check_meta(file: Path) -> None:
    names = _entries(file).get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        count = len(names) if isinstance(names, list) else "no"
        raise CifarFileError(f"{file}: holds {count} label_names; CIFAR-10 has {NUM_CLASSES} "
                             "classes (is the folder CIFAR-100's?).")


# ----------------------------------------------------------------------------- locating
def _missing(folder: Path) -> list[str]:
    return [name for name in FILES if not (folder / name).is_file()]


def locate_cifar10(path: str, download: bool) -> Path:
    """The folder holding the seven files: ``data.path`` or its ``cifar-10-batches-py``;
    for ``auto`` the same under ``DOWNLOAD_ROOT``, downloaded there when missing and
    ``download``. ``FileNotFoundError`` saying how to get the files otherwise."""
    root = DOWNLOAD_ROOT.expanduser() if path == "auto" else Path(path).expanduser()
    candidates = (root, root / FOLDER)
    for folder in candidates:
        if not _missing(folder):
            return folder
    if path != "auto":
        partial = [f"{folder} lacks {', '.join(_missing(folder))}" for folder in candidates
                   if folder.is_dir() and len(_missing(folder)) < len(FILES)]
        where = f" ({'; '.join(partial)})" if partial else ""
        raise FileNotFoundError(f"data.path = {path!r} holds no CIFAR-10 python batches{where}. "
                                f"{CIFAR10_HELP}")
    if not download:
        raise FileNotFoundError(f"{CIFAR10_HELP} (looked in {root / FOLDER}; data.download is "
                                "false)")
    return _torchvision_download(root)


def _torchvision_download(root: Path) -> Path:
    """torchvision's download of the archive (its address, its MD5 check), unpacked into
    ``root``, without torchvision's own loader (which unpickles without restriction)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename,
                                     md5=CIFAR10.tgz_md5)
    except Exception as err:  # no internet, mirror down, bad checksum, ...
        raise FileNotFoundError(f"{CIFAR10_HELP} (torchvision's download failed: {err})") from err
    if _missing(root / FOLDER):
        raise FileNotFoundError(f"{CIFAR10_HELP} (the download left {root / FOLDER} without "
                                f"{', '.join(_missing(root / FOLDER))})")
    return root / FOLDER


# ----------------------------------------------------------------------------- the task
def standardised(raw: np.ndarray) -> torch.Tensor:
    """CIFAR-10's input: uint8 (N, 3, 32, 32) scaled to [0, 1], then each channel's
    training-set mean removed and divided by its standard deviation."""
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return scaled(raw).sub_(mean).div_(std)


def load_cifar10(path: str, download: bool) -> TaskData:
    """CIFAR-10 from its python batches (see the module's docstring), checked as read."""
    folder = locate_cifar10(path, download)
    _check_meta(folder / META_FILE)
    batches = [read_batch(folder / name) for name in TRAIN_FILES]
    train_x = np.concatenate([x for x, _ in batches])
    train_y = np.concatenate([y for _, y in batches])
    test_x, test_y = read_batch(folder / TEST_FILE)
    return TaskData(
        train=Split(standardised(train_x), torch.from_numpy(train_y)),
        test=Split(standardised(test_x), torch.from_numpy(test_y)),
        kind=CLASSIFICATION,
        num_outputs=NUM_CLASSES,
        input_shape=CIFAR10_SHAPE,
        labels=train_y,
    )


register(Task(
    name="cifar10", kind=CLASSIFICATION, num_outputs=NUM_CLASSES,
    input_shape=lambda data: CIFAR10_SHAPE,
    load=lambda key: load_cifar10(key.path, key.download),
    default_model="cnn", models=("cnn", "mlp"), images_from_uint8=standardised,
))
