"""Small captioning datasets in the real layout (Karpathy's ``dataset_coco.json`` and
``features/{pooled,spatial,ids}_<split>.npy``), written by the tests.

Each image shows one of four scenes; its features are the scene's pattern plus noise (pooled:
``(D,)``; spatial: the pattern in one of ``R`` regions), and its five captions describe the
scene with some wording variety, so a decoder can learn to caption it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SCENES = [
    ("a", "dog", "runs", "on", "the", "grass"),
    ("a", "cat", "sleeps", "on", "a", "sofa"),
    ("a", "man", "rides", "a", "red", "bike"),
    ("two", "birds", "sit", "on", "a", "wire"),
]
VARIANTS = [(), ("today",), ("in", "the", "sun"), ("again",), ("here",)]


def write_captions(
    root: Path, sizes=(40, 10, 10), D: int = 8, R: int = 4, seed: int = 0, id_offset: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "features").mkdir(parents=True, exist_ok=True)
    patterns = rng.normal(0, 1, (len(SCENES), D)).astype(np.float32)
    images, next_id = [], id_offset
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        ids, pooled, spatial = [], [], []
        for _ in range(n):
            scene = int(rng.integers(len(SCENES)))
            image_id = next_id
            next_id += 1
            sentences = [{"tokens": list(SCENES[scene] + v)} for v in VARIANTS]
            images.append({"cocoid": image_id, "split": split, "sentences": sentences,
                           "filename": f"{image_id}.jpg"})  # fmt: skip
            ids.append(image_id)
            feat = patterns[scene] + 0.1 * rng.normal(0, 1, D).astype(np.float32)
            pooled.append(feat)
            grid = 0.1 * rng.normal(0, 1, (R, D)).astype(np.float32)
            grid[int(rng.integers(R))] += patterns[scene]
            spatial.append(grid)
        np.save(root / "features" / f"ids_{split}.npy", np.array(ids, dtype=np.int64))
        np.save(root / "features" / f"pooled_{split}.npy", np.stack(pooled).astype(np.float32))
        np.save(root / "features" / f"spatial_{split}.npy", np.stack(spatial).astype(np.float32))
    (root / "dataset_coco.json").write_text(json.dumps({"images": images}))
    return root


def write_ptb(root: Path, lines: int = 300, seed: int = 0) -> Path:
    """A PTB-style word-level corpus (``ptb.{train,valid,test}.txt``) from a small grammar."""
    rng = np.random.default_rng(seed)
    subjects, verbs = ["the cat", "a dog", "the man", "<unk>"], ["sees", "likes", "eats"]
    objects = ["the fish", "a ball", "the food", "N"]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", lines), ("valid", lines // 5), ("test", lines // 5)):
        text = [
            f" {rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} " for _ in range(n)
        ]
        (root / f"ptb.{name}.txt").write_text("\n".join(text) + "\n")
    return root
