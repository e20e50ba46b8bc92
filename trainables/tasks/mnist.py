"""Sequential MNIST and permuted MNIST: pixels one per step, the label at the last step.

Two sources, picked by what ``data_dir`` holds:

* torchvision's layout (``<data_dir>/MNIST/raw/train-images-idx3-ubyte`` ...), read through
  ``torchvision.datasets.MNIST``. Splits as the paper and the reference code: the first 50,000
  training images train, the last 10,000 validate, the 10,000 test images test.
  ``train_size``/``val_size`` shrink this for smoke runs: train is a prefix of the training
  file and validation its last ``val_size`` images.
* a plain IDX pair directly in ``data_dir`` (``images-idx3-ubyte[.gz]`` +
  ``labels-idx1-ubyte[.gz]``, e.g. the 5,000-digit ``mnist5k``): shuffled with
  ``shuffle_seed`` (such files may be sorted by label) and split ``train_size``/``val_size``,
  no test split.

Pixels are ``uint8 / 255`` (what ``ToTensor`` gives), shape ``(N, 784, 1)``. pMNIST reorders the
784 steps with one permutation: by default fixed by ``permutation_seed`` for every training
seed (a multi-seed study must compare like with like); ``permutation="per_seed"`` draws it from
the run seed as the reference code does. Permutations are ``numpy.random.RandomState(seed)
.permutation(784)``, the reference's first numpy draw after ``np.random.seed(seed)``, so
``per_seed`` gives exactly the reference's pixel order for a run seed. A run that trains
several seed members at once (``run_seeds``) gets one order per member: the splits stay in
pixel order and ``TaskData.member_orders`` holds the orders, which the trainer applies per
member, so each member sees what it would see trained alone.

The network is touched only with ``download=True``.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trainables.contract import PIXEL_POOLS as POOLS

from .base import DataNotFoundError, Split, TaskData, check_positive, check_seed

__all__ = ["DataNotFoundError", "load_mnist", "pixel_permutation", "read_idx"]

MNIST_NAMES = ("seq_mnist", "pmnist")
PERMUTATION_MODES = ("fixed", "per_seed")
DEFAULT_PERMUTATION_SEED = 0
N_PIXELS = 28 * 28
N_CLASSES = 10

# What torchvision.datasets.MNIST checks for under <root>/MNIST/raw (uncompressed).
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
PAIR_IMAGES = "images-idx3-ubyte"
PAIR_LABELS = "labels-idx1-ubyte"
_IDX_MAGIC = {3: 2051, 1: 2049}  # ubyte IDX: 0x0800 | number of dimensions


def load_mnist(
    name: str,
    data_dir: str | Path,
    download: bool = False,
    permutation_seed: int = DEFAULT_PERMUTATION_SEED,
    permutation: str = "fixed",
    run_seed: int | None = None,
    train_size: int = 50_000,
    val_size: int = 10_000,
    shuffle_seed: int | None = None,
    test_size: int | None = None,
    pool: int = 1,
    run_seeds: tuple[int, ...] | None = None,
) -> TaskData:
    """Load ``"seq_mnist"`` or ``"pmnist"`` from ``data_dir`` (see the module docstring).

    ``run_seed`` (one seed) or ``run_seeds`` (the run's seed members, one pixel order each)
    is needed only for ``permutation="per_seed"``. ``shuffle_seed`` is required
    for an IDX-pair directory and rejected for the torchvision layout, whose split is fixed.
    ``test_size`` keeps a prefix of the test file for smoke runs (``None``: all of it); an
    IDX pair has no test split, so there it has no effect.
    ``pool`` > 1 averages ``pool x pool`` pixel blocks first (smoke runs only: 4 gives 49
    steps instead of the paper's 784); still one pixel per step, in [0, 1].
    """
    if name not in MNIST_NAMES:
        raise ValueError(f"name must be one of {', '.join(MNIST_NAMES)}, got {name!r}")
    if permutation not in PERMUTATION_MODES:
        raise ValueError(
            f"permutation must be one of {', '.join(PERMUTATION_MODES)}, got {permutation!r}"
        )
    train_size = check_positive("train_size", train_size)
    val_size = check_positive("val_size", val_size)
    if test_size is not None:
        test_size = check_positive("test_size", test_size)
    if pool not in POOLS:
        raise ValueError(f"pool must divide 28 (one of {', '.join(map(str, POOLS))}), got {pool!r}")
    data_dir = Path(data_dir)
    n_pixels = (28 // pool) ** 2

    if run_seed is not None and run_seeds is not None:
        raise ValueError(f"give run_seed or run_seeds, not both, got {run_seed} and {run_seeds}")
    seeds = (run_seed,) if run_seed is not None else run_seeds
    orders, perm_meta = _pixel_orders(name, permutation, permutation_seed, seeds, n_pixels)
    # One order for every member is applied to the data once; several stay per member.
    order = orders[0] if orders is not None and len(orders) == 1 else None
    member_orders = torch.stack(orders) if orders is not None and len(orders) > 1 else None

    pair = find_idx_pair(data_dir)
    if pair is not None:
        if shuffle_seed is None:
            raise ValueError(
                f"shuffle_seed is required for the IDX pair in {data_dir} (its images may be "
                "sorted by label), got None"
            )
        shuffle_seed = check_seed("shuffle_seed", shuffle_seed)
        images, labels = read_idx_pair(*pair)
        _check_sizes(train_size, val_size, len(images), str(pair[0]))
        shuffled = torch.randperm(
            len(images), generator=torch.Generator().manual_seed(shuffle_seed)
        )
        train_idx = shuffled[:train_size]
        val_idx = shuffled[train_size : train_size + val_size]
        train = _split(images[train_idx], labels[train_idx], order, pool)
        val = _split(images[val_idx], labels[val_idx], order, pool)
        test = None
        source_meta = {"source": "idx_pair", "shuffle_seed": shuffle_seed}
    else:
        # Missing data is the first thing to say (it also tells where files must go).
        train_images, train_labels = _torchvision_mnist(data_dir, train=True, download=download)
        test_images, test_labels = _torchvision_mnist(data_dir, train=False, download=download)
        if shuffle_seed is not None:
            raise ValueError(
                f"shuffle_seed applies only to an IDX-pair directory; the MNIST split under "
                f"{data_dir} is fixed (first images train, last validate), got {shuffle_seed}"
            )
        _check_sizes(train_size, val_size, len(train_images), "the MNIST training file")
        if test_size is not None and test_size > len(test_images):
            raise ValueError(
                f"test_size must be <= {len(test_images)} (the MNIST test file), got {test_size}"
            )
        n_test = len(test_images) if test_size is None else test_size
        train = _split(train_images[:train_size], train_labels[:train_size], order, pool)
        # Validation is the END of the training file, as the reference's
        # SubsetRandomSampler(range(50000, 60000)); smaller sizes keep that property.
        val = _split(train_images[-val_size:], train_labels[-val_size:], order, pool)
        test = _split(test_images[:n_test], test_labels[:n_test], order, pool)
        source_meta = {"source": "torchvision", "test_size": n_test}

    return TaskData(
        name=name,
        train=train,
        val=val,
        test=test,
        input_size=1,
        num_classes=N_CLASSES,
        seq_len=n_pixels,
        loss_every_step=False,
        acc_steps=1,
        sampling="shuffle",
        member_orders=member_orders,
        meta={
            "data_dir": str(data_dir),
            "train_size": train_size,
            "val_size": val_size,
            "pool": pool,
            **source_meta,
            **perm_meta,
        },
    )


def pixel_permutation(seed: int, n_pixels: int = N_PIXELS) -> Tensor:
    """The pMNIST pixel order for ``seed`` (int64, a permutation of ``range(n_pixels)``)."""
    seed = check_seed("permutation seed", seed)
    return torch.from_numpy(np.random.RandomState(seed).permutation(n_pixels)).to(torch.int64)


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """A ubyte IDX file (``.gz`` optional) as a uint8 array with ``ndim`` dimensions."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    header = 4 + 4 * ndim
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise ValueError(
            f"{path} has IDX magic {magic}, expected {_IDX_MAGIC[ndim]} (ubyte, {ndim}-d)"
        )
    if len(raw) < header:
        raise ValueError(f"{path} is not an IDX file: {len(raw)} bytes is shorter than a header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise ValueError(
            f"{path} holds {len(raw) - header} data bytes, its header {dims} says {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _pixel_orders(
    name: str,
    permutation: str,
    permutation_seed: int,
    run_seeds: tuple[int, ...] | None,
    n_pixels: int,
) -> tuple[list[Tensor] | None, dict]:
    """The pixel orders (one, or one per run seed with ``per_seed``) and what to log."""
    if name == "seq_mnist":
        return None, {"permutation": "none"}
    if permutation == "per_seed":
        if not run_seeds:
            raise ValueError(f"run_seed is required with permutation='per_seed', got {run_seeds}")
        seeds = [check_seed("run_seed", s) for s in run_seeds]
    else:
        seeds = [check_seed("permutation_seed", permutation_seed)]
    orders = [pixel_permutation(seed, n_pixels) for seed in seeds]
    # A short fingerprint lets a reader confirm from the logs alone that runs shared a pixel
    # order.
    digests = [hashlib.sha1(o.numpy().tobytes()).hexdigest()[:12] for o in orders]
    one = len(seeds) == 1
    return orders, {
        "permutation": permutation,
        "permutation_seed": seeds[0] if one else seeds,
        "permutation_sha1": digests[0] if one else digests,
    }


def _split(images: Tensor, labels: Tensor, order: Tensor | None, pool: int = 1) -> Split:
    x = images.reshape(len(images), N_PIXELS).to(torch.float32).div_(255.0)
    if pool > 1:
        x = torch.nn.functional.avg_pool2d(x.view(-1, 1, 28, 28), pool).flatten(1)
    if order is not None:
        x = x[:, order]
    return Split(x=x.unsqueeze(-1).contiguous(), y=labels.to(torch.int64))


def _check_sizes(train_size: int, val_size: int, n: int, where: str) -> None:
    if train_size + val_size > n:
        raise ValueError(
            f"train_size + val_size must be <= {n} (images in {where}), got "
            f"{train_size} + {val_size} = {train_size + val_size}"
        )


def find_idx_pair(data_dir: Path) -> tuple[Path, Path] | None:
    """The IDX pair in ``data_dir`` (plain name preferred over ``.gz``), or None if absent."""

    def find(stem: str) -> Path | None:
        for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
        return None

    images, labels = find(PAIR_IMAGES), find(PAIR_LABELS)
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        missing = PAIR_IMAGES if images is None else PAIR_LABELS
        raise DataNotFoundError(
            f"incomplete IDX pair in {data_dir}: {missing}[.gz] is missing next to "
            f"{(labels or images).name}"
        )
    return images, labels


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path} holds {images.shape[1:]} images, expected (28, 28)")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels"
        )
    # np.frombuffer views are read-only; copy so torch owns writable memory.
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _torchvision_mnist(root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    # Imported here, not at the top: torchvision costs seconds to import and only this path
    # needs it.
    from torchvision.datasets import MNIST

    raw_dir = root / "MNIST" / "raw"
    try:
        dataset = MNIST(root=str(root), train=train, download=download)
    except (RuntimeError, OSError) as error:
        missing = [f for f in RAW_FILES if not (raw_dir / f).is_file()]
        if not missing:
            raise  # the files are there: a real read error, not missing data
        if download:
            # torchvision raises RuntimeError once every mirror failed (its message has one
            # line per mirror, the last being the cause); socket errors can escape as OSError.
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = lines[-1] if lines else type(error).__name__
            raise DataNotFoundError(
                f"MNIST download failed (offline?) into {raw_dir}: {reason}; copy "
                f"{', '.join(RAW_FILES)} there instead"
            ) from error
        raise DataNotFoundError(
            f"MNIST not found under {raw_dir} (expected {', '.join(RAW_FILES)}; missing "
            f"{', '.join(missing)}); pass --download (download=True) to fetch it, or copy "
            f"the files there (or put an IDX pair {PAIR_IMAGES}[.gz] + {PAIR_LABELS}[.gz] "
            f"in {root})"
        ) from error
    return dataset.data, dataset.targets
