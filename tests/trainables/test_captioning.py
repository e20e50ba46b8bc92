"""Captioning (``task="captioning"``): Karpathy-layout data read memory-mapped, both
decoders learn, beam search finds the best sequence, COCO metrics, resume, bad data."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pycocoevalcap", reason="captioning metrics need pycocoevalcap")

from tests.trainables.caption_files import SCENES, write_captions  # noqa: E402
from tests.trainables.test_train import assert_resumes_bitwise  # noqa: E402
from trainables import caption_metrics  # noqa: E402
from trainables.captioning import CaptioningTrainer, beam_search  # noqa: E402
from trainables.config import RunConfig  # noqa: E402
from trainables.tasks.base import DataNotFoundError  # noqa: E402
from trainables.tasks.captions import END, PAD, SPECIALS, START, UNK, load_captions  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return write_captions(tmp_path_factory.mktemp("coco"), sizes=(48, 12, 12))


def _cfg(data_dir: Path, **kw) -> RunConfig:
    base = dict(
        data_dir=str(data_dir), hidden_size=24, embedding_size=16, batch_size=16, epochs=2,
        batches_per_epoch=None, lr=1e-2, train_size=1000, val_size=1000, test_size=1000,
        max_caption_len=10, backend="torch",
    )  # fmt: skip
    return RunConfig.from_preset("captioning", "smoke", **(base | kw))


# -- data -----------------------------------------------------------------------------------


def test_vocabulary_captions_and_memory_mapped_features(coco):
    data = load_captions(coco, feature_kind="pooled", min_count=1, max_len=5)
    assert data.vocab[:4] == SPECIALS and (PAD, START, END, UNK) == (0, 1, 2, 3)
    words = {w for scene in SCENES for w in scene} | {"today", "in", "the", "sun", "again", "here"}
    assert set(data.vocab[4:]) == words
    train = data.train
    assert len(train) == 48 and train.captions.shape == (48 * 5, 5 + 2)
    assert isinstance(train.features, np.memmap)  # read from disk, not loaded
    assert (train.captions[:, 0] == START).all()
    for caption, image in zip(train.captions.tolist(), train.caption_image.tolist(), strict=True):
        n = caption.index(END)
        assert n <= 6 and all(t == PAD for t in caption[n + 1 :])  # cut to 5 words, padded
        words_of = [data.vocab[t] for t in caption[1:n]]
        assert any(" ".join(words_of) in ref for ref in train.references[image])
    assert data.decode(train.captions[0].tolist()) in train.references[0][0]
    # min_count: a word seen fewer times in training is <unk>
    rare = load_captions(coco, feature_kind="pooled", min_count=1_000)
    assert rare.vocab == SPECIALS and set(rare.train.captions.unique().tolist()) <= {0, 1, 2, 3}


def test_feature_rows_are_found_by_image_id(coco, tmp_path):
    import shutil

    root = tmp_path / "shuffled"
    shutil.copytree(coco, root)
    ids = np.load(root / "features" / "ids_val.npy")
    feats = np.load(root / "features" / "pooled_val.npy")
    order = np.random.default_rng(1).permutation(len(ids))
    np.save(root / "features" / "ids_val.npy", ids[order])
    np.save(root / "features" / "pooled_val.npy", feats[order])
    data = load_captions(root, feature_kind="pooled", min_count=1)
    assert torch.equal(data.val.image_features(np.arange(len(ids))), torch.from_numpy(feats))


def test_restval_and_sizes(coco, tmp_path):
    doc = json.loads((coco / "dataset_coco.json").read_text())
    doc["images"][0]["split"] = "restval"
    root = tmp_path / "r"
    (root / "features").mkdir(parents=True)
    for f in (coco / "features").iterdir():
        (root / "features" / f.name).write_bytes(f.read_bytes())
    (root / "dataset_coco.json").write_text(json.dumps(doc))
    data = load_captions(root, feature_kind="spatial", train_size=20, val_size=5, min_count=1)
    assert (len(data.train), len(data.val), len(data.test)) == (20, 5, 12)
    assert doc["images"][0]["cocoid"] not in data.train.ids.tolist()
    assert data.feature_shape == (4, 8)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "dataset_coco.json").unlink(), "dataset_coco.json"),
        (lambda r: (r / "dataset_coco.json").write_text("{"), "not a Karpathy split file"),
        (lambda r: (r / "features" / "pooled_test.npy").unlink(), "missing .*pooled_test.npy"),
        (
            lambda r: np.save(r / "features" / "ids_val.npy", np.arange(3)),
            "pooled_val.npy has shape",
        ),
        (
            lambda r: np.save(r / "features" / "ids_train.npy", np.arange(10_000, 10_048)),
            "48 train images have no row",
        ),
    ],
)
def test_missing_or_inconsistent_files_say_what_and_where(coco, tmp_path, damage, message):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(coco, root)
    damage(root)
    with pytest.raises(DataNotFoundError, match=message):
        load_captions(root, feature_kind="pooled", min_count=1)


def test_bad_data_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainables.train", "--task", "captioning", "--preset", "smoke",
         "--data-dir", str(tmp_path), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "dataset_coco.json" in proc.stderr.strip().splitlines()[-1]


# -- decoding ---------------------------------------------------------------------------------


def _second_order_model(seed: int, V: int = 5):
    """log p(next | token before last, last): PAD and START are never emitted."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(V, V, V, generator=g) * 2
    logits[..., PAD] = -math.inf
    logits[..., START] = -math.inf
    return torch.log_softmax(logits, -1)


def _best_by_enumeration(table, max_len: int, V: int):
    best, best_seq = -math.inf, None
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(2, V), repeat=n):
            if END in seq[:-1] or (n < max_len and seq[-1] != END):
                continue
            prev, last, total = START, START, 0.0
            for tok in seq:
                total += float(table[prev, last, tok])
                prev, last = last, tok
            if total > best:
                best, best_seq = total, seq
    return best_seq


@pytest.mark.parametrize("seed", range(6))
def test_wide_beam_search_returns_the_best_scoring_sequence(seed):
    V, L = 5, 4
    table = _second_order_model(seed, V)
    step, reorder = _toy(table)
    beam = (V - 2) ** (L - 1)  # every prefix kept: the search is exhaustive
    out = beam_search(step, torch.full((beam,), START), reorder, 1, beam, L, "cpu")[0].tolist()
    want = _best_by_enumeration(table, L, V)
    assert out[: len(want)] == list(want) and all(t == PAD for t in out[len(want) :])


def _toy(table):
    def step(state, tokens):  # state: the token before ``tokens``
        return table[state, tokens], tokens.clone()

    def reorder(state, index):
        return state[index]

    return step, reorder


def test_beam_search_beats_greedy_on_a_hand_checked_model():
    """START -> a (0.6) | b (0.4); a -> a (0.4) | b, END (0.3 each); b -> END (0.9) | a.
    Greedy takes a then a ...; the best caption is "b" (0.4 x 0.9 = 0.36 > 0.6 x 0.3)."""
    a, b, V = 3, 4, 5
    first = torch.full((V,), 1e-9)
    first[[a, b]] = torch.tensor([0.6, 0.4])
    after_a = torch.full((V,), 1e-9)
    after_a[[a, b, END]] = torch.tensor([0.4, 0.3, 0.3])
    after_b = torch.full((V,), 1e-9)
    after_b[[END, a]] = torch.tensor([0.9, 0.1])
    rows = {START: first, a: after_a, b: after_b, END: after_b, PAD: after_b}
    table = torch.stack([torch.stack([rows[t] for t in range(V)])] * V).log()
    step, reorder = _toy(table)
    greedy = beam_search(step, torch.full((1,), START), reorder, 1, 1, 4, "cpu")[0].tolist()
    assert greedy == [a, a, a, a]
    best = beam_search(step, torch.full((3,), START), reorder, 1, 3, 4, "cpu")[0].tolist()
    assert best == [b, END, PAD, PAD]


# -- metrics ----------------------------------------------------------------------------------

REFS = [
    ["a dog runs on the grass", "a dog runs on the grass today", "the dog runs on grass"],
    ["a cat sleeps on a sofa", "a cat sleeps on a sofa here", "the cat sleeps"],
    ["a man rides a red bike", "a man rides a bike", "a man on a red bike"],
]


def test_metrics_of_identical_and_unrelated_captions():
    same = caption_metrics.score(REFS, [r[0] for r in REFS], meteor=False)
    for n in range(1, 5):
        assert same[f"bleu{n}"] == pytest.approx(1.0, abs=1e-6)
    assert same["rouge_l"] > 0.9 and same["cider"] > 2.0  # CIDEr-D x1; the paper's x100: 200+
    other = caption_metrics.score(REFS, ["two birds sit", "green apples fall", "blue sky"],
                                  meteor=False)  # fmt: skip
    assert other["bleu4"] < 1e-3 and other["cider"] < 0.05 and other["rouge_l"] < 0.2
    swapped = caption_metrics.score(REFS, [REFS[1][0], REFS[2][0], REFS[0][0]], meteor=False)
    assert swapped["cider"] < 0.5 * same["cider"]  # right words, wrong images
    with pytest.raises(ValueError, match="one hypothesis per image"):
        caption_metrics.score(REFS, ["a"], meteor=False)


def test_meteor_without_java_is_skipped_with_one_warning(monkeypatch):
    monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
    monkeypatch.setattr(caption_metrics, "_warned", set())
    with pytest.warns(RuntimeWarning, match="METEOR needs Java"):
        out = caption_metrics.score(REFS, [r[0] for r in REFS])
    assert "meteor" not in out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not on every evaluation
        caption_metrics.score(REFS, [r[0] for r in REFS])


@pytest.mark.skipif(not caption_metrics.java_available(), reason="METEOR needs java")
def test_meteor_with_java():
    same = caption_metrics.score(REFS, [r[0] for r in REFS])
    other = caption_metrics.score(REFS, ["two birds sit", "green apples fall", "blue sky"])
    assert same["meteor"] > 0.9 > 0.2 > other["meteor"]


# -- training ---------------------------------------------------------------------------------


def test_padding_does_not_count_in_the_loss(coco):
    trainer = CaptioningTrainer(_cfg(coco, epochs=1))
    caps = trainer.data.train.captions[:4].unsqueeze(0)  # (1, 4, L)
    logits = torch.randn(caps.shape[-1] - 1, 1, 4, trainer.data.vocab_size)
    loss, acc = trainer._caption_losses(logits, caps)
    pad = (caps[..., 1:] == PAD).permute(2, 0, 1)
    assert pad.any()
    changed = logits.clone()
    changed[pad] = torch.randn(int(pad.sum()), logits.shape[-1]) * 10
    loss2, acc2 = trainer._caption_losses(changed, caps)
    assert torch.equal(loss, loss2) and torch.equal(acc, acc2)


@pytest.mark.parametrize("decoder", ["show_and_tell", "soft_attention"])
def test_both_decoders_learn_to_caption(coco, decoder):
    trainer = CaptioningTrainer(_cfg(coco, decoder=decoder, epochs=8, p_detach=0.25, seeds=(0, 1)))
    trainer.run()
    for k in range(2):
        h = trainer.history[k]
        assert h[-1]["train_loss"] < 0.5 * h[0]["train_loss"]
        assert max(r["val_cider"] for r in h) > 100  # x100: the scenes are told apart
        assert all(0.1 < r["detached_fraction"] < 0.4 for r in h)
    finals = trainer.finish()
    for k, f in enumerate(finals):
        assert f["best_val_cider"] == max(r["val_cider"] for r in trainer.history[k])
        assert f["best_val_score"] == f["best_val_cider"]
        assert f["test_cider"] > 100 and 0 <= f["test_bleu4"] <= 100
        assert {f"test_bleu{n}" for n in range(1, 5)} | {"test_rouge_l"} <= set(f)


def test_members_decode_like_single_runs(coco):
    pair = CaptioningTrainer(_cfg(coco, seeds=(5, 6), p_detach=0.4))
    pair.run()
    single = CaptioningTrainer(_cfg(coco, seeds=(6,), p_detach=0.4))
    single.run()
    for a, b in zip(pair.history[1], single.history[0], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


@pytest.mark.parametrize("decoder", ["show_and_tell", "soft_attention"])
def test_resume_is_bitwise(coco, tmp_path, decoder):
    cfg = _cfg(coco, decoder=decoder, epochs=3, p_detach=0.25)
    # finals (beam search + METEOR) are the base trainer's, checked in test_train
    assert_resumes_bitwise(lambda: CaptioningTrainer(cfg), tmp_path / "ck.pt", 1, finals=False)


def test_soft_attention_step_is_an_lstm_cell_on_word_and_context(coco):
    trainer = CaptioningTrainer(_cfg(coco, decoder="soft_attention", seeds=(0, 1)))
    K, B, H = 2, 3, 24
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(K, B, 4, 8, generator=g)
    word, h, c = (torch.randn(K, B, n, generator=g) for n in (16, H, H))
    with torch.no_grad():
        _, _, keys = trainer._attention_start(feats)
        h1, c1 = trainer._attention_step(feats, keys, word, h, c, None, 0)
        w_ih, w_hh, b_ih, b_hh = trainer.lstm.layer_parameters(0)
        for k in range(K):
            energy = trainer.att_score.member(k)(
                torch.tanh(
                    trainer.att_feat.member(k)(feats[k])
                    + trainer.att_hidden.member(k)(h[k])[:, None]
                )
            ).squeeze(-1)  # (B, R)
            context = (torch.softmax(energy, dim=1)[..., None] * feats[k]).sum(1)
            cell = torch.nn.LSTMCell(16 + 8, H)
            for name, value in (("weight_ih", w_ih), ("weight_hh", w_hh), ("bias_ih", b_ih),
                                ("bias_hh", b_hh)):  # fmt: skip
                getattr(cell, name).copy_(value[k])
            want_h, want_c = cell(torch.cat([word[k], context], -1), (h[k], c[k]))
            assert torch.allclose(h1[k], want_h, atol=1e-6)
            assert torch.allclose(c1[k], want_c, atol=1e-6)


def test_soft_attention_detach_blocks_the_recurrent_gradient(coco):
    """With every h_{t-1} and c_{t-1} blocked, nothing before the last step gets gradient
    from the last step's loss: not the initial state's projections, not the first words."""
    cfg = _cfg(coco, decoder="soft_attention", p_detach=1.0, c_detach=1.0)
    trainer = CaptioningTrainer(cfg)
    train = trainer.data.train
    captions = train.captions[:4].unsqueeze(0)
    feats = trainer._features(train, train.caption_image[:4].unsqueeze(0))

    def grads(masks):
        for p in trainer.params:
            p.grad = None
        logits = trainer._logits(feats, captions, masks)
        logits[-1].logsumexp(-1).sum().backward()  # the last step only
        return {n: p.grad for n, p in (("init_h", trainer.init_h.weight),
                                       ("att_hidden", trainer.att_hidden.weight))}  # fmt: skip

    free = grads(None)
    blocked = grads(trainer.lstm.sample_masks(captions.shape[-1] - 1, 4, trainer.mask_gens))
    assert free["init_h"].abs().sum() > 0 and free["att_hidden"].abs().sum() > 0
    assert blocked["init_h"] is None or blocked["init_h"].abs().sum() == 0
    assert blocked["att_hidden"].abs().sum() > 0  # the last step's own attention still learns
