"""Fashion-MNIST for the quickstart-style baseline, as the Hugging Face cache would hold it.

Flower's quickstart gets its data from ``FederatedDataset`` (a Hugging Face download,
cached on disk as Arrow files with PNG-encoded images). There is no download here, so
this reads Debian's IDX files with a small reader of its own and saves the same kind of
dataset (``image``: PNG-encoded ``datasets.Image``, ``label``: ``ClassLabel``) with
``save_to_disk``. The benchmark does this once, before any clock starts, the way a
quickstart user has the data cached after the first download.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]


def read_idx_gz(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (gzipped) as a uint8 array of the shape in its header."""
    raw = gzip.open(path, "rb").read()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte IDX file.")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def prepare(root: str | Path, source: Path = FMNIST_DIR) -> Path:
    """Write ``<root>/train`` and ``<root>/test`` (``datasets.load_from_disk`` folders)."""
    from datasets import ClassLabel, Dataset, Features, Image
    from datasets.utils.logging import disable_progress_bar
    from PIL import Image as PILImage

    disable_progress_bar()
    root = Path(root)
    features = Features({"image": Image(), "label": ClassLabel(names=CLASSES)})
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx_gz(source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx_gz(source / f"{prefix}-labels-idx1-ubyte.gz")
        dataset = Dataset.from_dict(
            {"image": [PILImage.fromarray(a) for a in images], "label": labels.tolist()},
            features=features,
        )
        dataset.save_to_disk(str(root / split))
    return root
