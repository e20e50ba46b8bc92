"""Digit scenes: captions that say exactly the digits the features hold, in order, with the
splits drawing on disjoint digit images; the loader's dataset check; the CLI's bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.trainables.idx_files import write_idx
from trainables.tasks.base import DataNotFoundError
from trainables.tasks.captions import load_captions
from trainables.tasks.digit_scenes import SLOTS, WORDS, write_digit_scenes

ROOT = Path(__file__).resolve().parents[2]


def _images(per_class: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Constant images: class d, image j has every pixel 20 (d + 1) + j (so its pooled
    feature names both)."""
    labels = np.repeat(np.arange(10), per_class)
    j = np.tile(np.arange(per_class), 10)
    images = np.broadcast_to((20 * (labels + 1) + j)[:, None, None], (len(labels), 28, 28))
    return images.astype(np.uint8), labels


def _said(tokens: list[str]) -> list[str]:
    """The digits a caption names, whatever its wording."""
    if tokens[0] == "the":
        tokens = tokens[2:-4]
    elif tokens[:2] == ["a", "row"]:
        tokens = tokens[6:]
    elif len(tokens) > 2 and tokens[1:3] == ["digits", ":"]:
        tokens = tokens[3:]
    elif tokens[0] == "handwritten":
        tokens = tokens[1:]
    return [t for t in tokens if t in WORDS]


def test_captions_name_the_digits_the_features_show(tmp_path):
    images, labels = _images()
    write_digit_scenes(images, labels, tmp_path, sizes=(60, 20, 20), seed=3)
    data = load_captions(tmp_path, feature_kind="spatial", min_count=1, dataset="digit_scenes")
    assert data.meta["dataset"] == "digit_scenes" and data.feature_shape == (SLOTS, 49)
    codes = {}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        feats = split.image_features(np.arange(len(split))).numpy()
        seen = set()
        for i in range(len(split)):
            values = np.round(feats[i, :, 0] * 255).astype(int)  # per place; 0 = empty
            assert np.allclose(feats[i], feats[i, :, :1])  # constant images pool to constants
            present = values[values > 0]
            digits = [WORDS[v // 20 - 1] for v in present]
            assert 2 <= len(digits) <= SLOTS
            for ref in split.references[i]:
                assert _said(ref.split()) == digits, (ref, digits)
            seen |= set(present.tolist())
        codes[name] = seen
    assert not codes["train"] & codes["test"] and not codes["train"] & codes["val"]
    pooled = load_captions(tmp_path, feature_kind="pooled", min_count=1)
    assert pooled.feature_shape == (SLOTS * 49,)


def test_a_run_cannot_mislabel_the_dataset(tmp_path):
    images, labels = _images()
    write_digit_scenes(images, labels, tmp_path, sizes=(20, 5, 5))
    with pytest.raises(
        DataNotFoundError, match="holds dataset 'digit_scenes'.*set corpus=digit_scenes"
    ):
        load_captions(tmp_path, dataset="coco", min_count=1)


def test_cli_writes_from_an_idx_pair_and_rejects_bad_input(tmp_path):
    images, labels = _images()
    write_idx(tmp_path / "mnist" / "images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "mnist" / "labels-idx1-ubyte.gz", labels)
    run = [sys.executable, "-m", "trainables.tasks.digit_scenes", "--mnist"]
    args = [str(tmp_path / "mnist"), "--out", str(tmp_path / "out"), "--sizes", "30,5,5"]
    ok = subprocess.run([*run, *args], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert len(load_captions(tmp_path / "out", min_count=1).train) == 30
    for args, message in (
        ([str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")], "no MNIST IDX pair"),
        ([str(tmp_path / "mnist"), "--out", str(tmp_path / "o3"), "--sizes", "5,5"], "--sizes"),
    ):
        bad = subprocess.run([*run, *args], cwd=ROOT, capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr.strip().splitlines()[-1]
        assert not (tmp_path / args[2] / "dataset_coco.json").exists()
