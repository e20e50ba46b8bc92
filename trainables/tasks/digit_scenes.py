"""Digit scenes: a small captioning dataset made offline from real MNIST digits, written in
the Karpathy layout that ``trainables.tasks.captions`` reads (``dataset`` = ``digit_scenes``).

COCO and its ResNet features cannot be had offline. Digit scenes keep what makes captioning a
test of a decoder's recurrence: an image is a row of ``SLOTS`` places holding two to four
handwritten digits (real MNIST images; the train, val and test images use disjoint digit
images), and its five captions say which digits, in order, in varied wording ("three digits :
seven one four", "a seven , a one and a four", ...), so a caption has to count, keep the order
and end at the right word. The features are what a CNN would give, made by hand: per place,
the digit's 7x7 average-pooled pixels (``spatial``: ``(N, SLOTS, 49)``, for Soft Attention;
an empty place is zeros), and their concatenation in order (``pooled``: ``(N, SLOTS * 49)``,
for Show&Tell).

    python -m trainables.tasks.digit_scenes --mnist ../shared/data/mnist5k --out data/digits

then ``study/run.py --task captioning --data-dir data/digits --set corpus=digit_scenes``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .base import DataNotFoundError

DATASET = "digit_scenes"
SLOTS = 4
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COUNTS = {2: "two", 3: "three", 4: "four"}
#: Shares of each digit class's images for the train / val / test scenes (disjoint).
SHARES = (0.8, 0.1, 0.1)


def _captions(digits: list[int], rng: np.random.Generator) -> list[list[str]]:
    words = [WORDS[d] for d in digits]
    n = COUNTS[len(digits)]
    listed = [x for w in words for x in ("an" if w == "eight" else "a", w)]
    spoken = [*listed[:-2], "and", *listed[-2:]] if len(words) > 1 else listed
    options = [
        [n, "digits", ":", *words],
        ["the", "digits", *words, "from", "left", "to", "right"],
        spoken,
        ["a", "row", "of", n, "digits", ":", *words],
        [*words],
        ["handwritten", *words],
    ]
    order = rng.permutation(len(options))[:5]
    return [options[i] for i in order]


def _pooled_digit(image: np.ndarray) -> np.ndarray:
    """28 x 28 uint8 -> 49 floats in [0, 1]: 4 x 4 blocks averaged."""
    return (image.reshape(7, 4, 7, 4).mean(axis=(1, 3)) / 255.0).reshape(-1).astype(np.float32)


def write_digit_scenes(
    images: np.ndarray,
    labels: np.ndarray,
    out: str | Path,
    *,
    sizes: tuple[int, int, int] = (8000, 500, 500),
    seed: int = 0,
) -> Path:
    """Write ``dataset_coco.json`` and ``features/`` for scenes of ``images`` (N, 28, 28)."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    (out / "features").mkdir(parents=True, exist_ok=True)
    pools: list[list[np.ndarray]] = [[], [], []]  # per split: image indices per class
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(labels == d))
        cuts = np.cumsum([int(round(s * len(idx))) for s in SHARES])[:2]
        for split, part in enumerate(np.split(idx, cuts)):
            pools[split].append(part)
    entries, next_id = [], 0
    for split, (name, n) in enumerate(zip(("train", "val", "test"), sizes, strict=True)):
        ids, spatial = [], np.zeros((n, SLOTS, 49), np.float32)
        for i in range(n):
            count = int(rng.integers(2, SLOTS + 1))
            digits = [int(d) for d in rng.integers(0, 10, count)]
            places = sorted(rng.choice(SLOTS, count, replace=False).tolist())
            for place, d in zip(places, digits, strict=True):
                pick = pools[split][d][int(rng.integers(len(pools[split][d])))]
                spatial[i, place] = _pooled_digit(images[pick])
            sentences = [{"tokens": c, "raw": " ".join(c)} for c in _captions(digits, rng)]
            entries.append({"cocoid": next_id, "split": name, "sentences": sentences,
                            "filename": f"scene_{next_id:06d}"})  # fmt: skip
            ids.append(next_id)
            next_id += 1
        np.save(out / "features" / f"ids_{name}.npy", np.array(ids, np.int64))
        np.save(out / "features" / f"spatial_{name}.npy", spatial)
        np.save(out / "features" / f"pooled_{name}.npy", spatial.reshape(n, -1))
    doc = {"dataset": DATASET, "images": entries}
    tmp = out / "dataset_coco.json.tmp"
    tmp.write_text(json.dumps(doc))
    tmp.replace(out / "dataset_coco.json")  # last: a folder with the split file is complete
    return out


def main(argv: list[str] | None = None) -> int:
    from trainables.tasks.mnist import find_idx_pair, read_idx_pair

    p = argparse.ArgumentParser(prog="python -m trainables.tasks.digit_scenes",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--mnist", type=Path, required=True, help="an MNIST IDX-pair folder")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--sizes", default="8000,500,500", help="train,val,test scenes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        sizes = tuple(int(v) for v in args.sizes.split(","))
        if len(sizes) != 3 or min(sizes) < 1:
            raise ValueError
    except ValueError:
        p.exit(2, f"{p.prog}: error: --sizes must be three positive integers, got {args.sizes!r}\n")
    try:
        pair = find_idx_pair(args.mnist)
        if pair is None:
            raise DataNotFoundError(f"no MNIST IDX pair (images/labels-idx*-ubyte) in {args.mnist}")
        images, labels = read_idx_pair(*pair)
    except ValueError as err:
        p.exit(2, f"{p.prog}: error: {err}\n")
    out = write_digit_scenes(images.numpy(), labels.numpy(), args.out, sizes=sizes, seed=args.seed)
    print(f"wrote {sum(sizes):,} digit scenes to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
