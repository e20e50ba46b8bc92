"""Small, deterministic MNIST files in the real IDX format, for tests that must not download.

``write_mnist_raw`` lays files out as torchvision reads them (``<root>/MNIST/raw/...``);
``write_idx_pair`` writes the ``images-idx3-ubyte`` + ``labels-idx1-ubyte`` pair of
reduced-scale sources such as ``mnist5k``. Every image is unique and carries its index in its
first two pixels, so a test can tell exactly which images landed in which split.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_MAGIC = {3: 2051, 1: 2049}


def make_images(n: int, offset: int = 0) -> np.ndarray:
    """``n`` uint8 28x28 images; image ``i`` has pixel 0 = ``(i + offset) % 256`` and pixel 1 =
    ``(i + offset) // 256``, the rest a pattern that differs between images and pixels."""
    ids = np.arange(offset, offset + n, dtype=np.int64)
    pixels = np.arange(28 * 28, dtype=np.int64)
    images = (
        ids[:, None] * 7 + pixels[None, :] * 13 + (pixels[None, :] // 28) * ids[:, None]
    ) % 256
    images[:, 0] = ids % 256
    images[:, 1] = ids // 256
    return images.astype(np.uint8).reshape(n, 28, 28)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzip-compressed if ``path`` ends in ``.gz``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = _MAGIC[array.ndim].to_bytes(4, "big") + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_mnist_raw(
    root: Path, n_train: int = 64, n_test: int = 20
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """torchvision's uncompressed MNIST layout under ``root/MNIST/raw``.

    Returns ``{"train": (images, labels), "test": (images, labels)}`` as written. Test images
    continue the training ids, so no test image equals a training image.
    """
    raw = root / "MNIST" / "raw"
    written = {}
    for prefix, split, n, offset in (
        ("train", "train", n_train, 0),
        ("t10k", "test", n_test, n_train),
    ):
        images = make_images(n, offset)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        written[split] = (images, labels)
    return written


def write_idx_pair(directory: Path, n: int = 50, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """An ``images``/``labels`` IDX pair in ``directory``, sorted by label like ``mnist5k``."""
    labels = np.sort(np.arange(n) % 10).astype(np.uint8)
    images = make_images(n)
    suffix = ".gz" if gz else ""
    write_idx(directory / f"images-idx3-ubyte{suffix}", images)
    write_idx(directory / f"labels-idx1-ubyte{suffix}", labels)
    return images, labels
