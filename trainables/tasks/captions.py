"""Image-captioning data in the layout people already have: Karpathy's split file and
precomputed image features, read memory-mapped.

    <data_dir>/dataset_coco.json              Karpathy's split: {"images": [{"cocoid" (or
                                              "imgid"), "split": train|restval|val|test,
                                              "sentences": [{"tokens": [...]}, ...]}, ...]}
    <data_dir>/features/pooled_<split>.npy    (N, 2048) float32: pooled ResNet-152 features
                                              (Show&Tell)
    <data_dir>/features/spatial_<split>.npy   (N, R, 2048) float32: spatial features, R = 7x7
                                              or 14x14 regions (Soft Attention)
    <data_dir>/features/ids_<split>.npy       (N,) int64: the image id of each row

``<split>`` is train, val or test (restval images are not used: the paper trains on the
80,000 images of Karpathy's train split). The images of a split are taken in the JSON's order,
the first ``train_size`` / ``val_size`` / ``test_size`` of them; their feature rows are found
by id. The vocabulary comes from the training captions: tokens seen ``min_count`` times or
more, plus ``<pad>`` (0), ``<start>`` (1), ``<end>`` (2) and ``<unk>`` (3). Training
captions are cut to ``max_len`` tokens. A missing or inconsistent file is a
``DataNotFoundError`` that says what is missing and where it goes; nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import DataNotFoundError

PAD, START, END, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CaptionSplit:
    """One split: the features of its images (memory-mapped numpy, rows in ``rows``), the
    encoded training captions ``(C, max_len + 2)`` with the image index of each, and every
    image's reference captions as strings (for CIDEr, BLEU...)."""

    ids: np.ndarray  # (N,) image ids
    features: np.ndarray  # (F, D) or (F, R, D), memory-mapped
    rows: np.ndarray  # (N,) row of each image in ``features``
    captions: Tensor  # (C, L) int64: <start> w1 .. wn <end> <pad>...
    caption_image: Tensor  # (C,) int64: index (0..N-1) of each caption's image
    references: list[list[str]]  # per image, its captions as space-joined tokens

    def __len__(self) -> int:
        return len(self.ids)

    def image_features(self, index) -> Tensor:
        """Float32 features of images ``index`` (a numpy/torch index), read from disk."""
        idx = np.asarray(index)
        return torch.from_numpy(np.ascontiguousarray(self.features[self.rows[idx]], np.float32))


@dataclass(frozen=True)
class CaptionData:
    name: str
    vocab: tuple[str, ...]
    train: CaptionSplit
    val: CaptionSplit
    test: CaptionSplit
    feature_kind: str  # "pooled" or "spatial"
    meta: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.train.features.shape[1:])

    def to(self, device) -> CaptionData:  # features stay memory-mapped on the host
        return self

    def decode(self, ids) -> str:
        words = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i not in (PAD, START):
                words.append(self.vocab[i])
        return " ".join(words)


def load_captions(
    data_dir: str | Path,
    *,
    feature_kind: str = "pooled",
    train_size: int | None = None,
    val_size: int | None = None,
    test_size: int | None = None,
    min_count: int = 5,
    max_len: int = 16,
    dataset: str | None = None,
) -> CaptionData:
    """The three splits (see the module docstring). ``dataset``: the name the split file must
    carry in its ``dataset`` field where it has one (Karpathy's files say ``coco``,
    ``flickr8k``, ...), so that a run never labels one dataset's results with another's name.
    """
    root = Path(data_dir).expanduser()
    split_file = root / "dataset_coco.json"
    if not split_file.is_file():
        raise DataNotFoundError(
            f"captioning needs Karpathy's split file at {split_file} (dataset_coco.json) and "
            f"features in {root / 'features'}; no download: put them there"
        )
    try:
        doc = json.loads(split_file.read_text())
        images = doc["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataNotFoundError(f"{split_file} is not a Karpathy split file ({err})") from None
    named = doc.get("dataset")
    if dataset is not None and named is not None and named != dataset:
        raise DataNotFoundError(
            f"{split_file} holds dataset {named!r}, the run asks for corpus={dataset!r} "
            f"(set corpus={named})"
        )
    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for image in images:
        if image.get("split") in by_split:
            by_split[image["split"]].append(image)
    sizes = {"train": train_size, "val": val_size, "test": test_size}
    for name in SPLITS:
        if not by_split[name]:
            raise DataNotFoundError(f"{split_file} has no images in split {name!r}")
        if sizes[name] is not None:
            by_split[name] = by_split[name][: sizes[name]]

    counts: dict[str, int] = {}
    for image in by_split["train"]:
        for sentence in image.get("sentences", []):
            for token in sentence["tokens"]:
                counts[token] = counts.get(token, 0) + 1
    words = sorted(w for w, n in counts.items() if n >= min_count and w not in SPECIALS)
    vocab = (*SPECIALS, *words)
    index = {w: i for i, w in enumerate(vocab)}
    splits = {
        name: _split(root, name, by_split[name], feature_kind, index, max_len) for name in SPLITS
    }
    shapes = {s.features.shape[1:] for s in splits.values()}
    if len(shapes) != 1:
        raise DataNotFoundError(f"feature shapes differ between splits: {sorted(shapes)}")
    meta = {
        "dataset": named or dataset,
        "images": {k: len(v) for k, v in splits.items()},
        "vocab": len(vocab),
    }
    return CaptionData("captioning", vocab, splits["train"], splits["val"], splits["test"],
                       feature_kind, meta)  # fmt: skip


def _image_id(image: dict) -> int:
    for key in ("cocoid", "imgid", "id"):
        if key in image:
            return int(image[key])
    raise DataNotFoundError(f"an image of the split file has no cocoid/imgid: {sorted(image)}")


def _split(root, name, images, kind, index, max_len) -> CaptionSplit:
    folder = root / "features"
    feat_path, ids_path = folder / f"{kind}_{name}.npy", folder / f"ids_{name}.npy"
    for path in (feat_path, ids_path):
        if not path.is_file():
            raise DataNotFoundError(
                f"missing {path} ({'(N, D)' if kind == 'pooled' else '(N, R, D)'} float32 "
                f"{kind} features of the {name} images, rows matching ids_{name}.npy)"
            )
    features = np.load(feat_path, mmap_mode="r")
    ids = np.load(ids_path)
    want = 2 if kind == "pooled" else 3
    if features.ndim != want or len(ids) != features.shape[0]:
        raise DataNotFoundError(
            f"{feat_path} has shape {features.shape} for {len(ids)} ids in {ids_path}; "
            f"expected {want} dimensions and one row per id"
        )
    row_of = {int(i): r for r, i in enumerate(ids)}
    image_ids = np.array([_image_id(im) for im in images], dtype=np.int64)
    missing = [i for i in image_ids if int(i) not in row_of]
    if missing:
        raise DataNotFoundError(
            f"{len(missing)} {name} images have no row in {ids_path} (first: {missing[0]})"
        )
    rows = np.array([row_of[int(i)] for i in image_ids], dtype=np.int64)
    encoded, owner, references = [], [], []
    for n, image in enumerate(images):
        refs = []
        for sentence in image.get("sentences", []):
            tokens = [t for t in sentence["tokens"] if t]
            refs.append(" ".join(tokens))
            ids_ = [index.get(t, UNK) for t in tokens[:max_len]]
            encoded.append([START, *ids_, END] + [PAD] * (max_len - len(ids_)))
            owner.append(n)
        if not refs:
            raise DataNotFoundError(f"{name} image {image_ids[n]} has no captions")
        references.append(refs)
    return CaptionSplit(
        ids=image_ids,
        features=features,
        rows=rows,
        captions=torch.tensor(encoded, dtype=torch.int64),
        caption_image=torch.tensor(owner, dtype=torch.int64),
        references=references,
    )
