"""The language model (``task="language_model"``): corpora in their real layouts, truncated
BPTT with the state carried across windows, perplexity, resume, and bad data."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.trainables.caption_files import write_ptb
from tests.trainables.test_train import assert_resumes_bitwise
from trainables.config import ConfigError, RunConfig
from trainables.language_model import LanguageModelTrainer
from trainables.tasks.base import DataNotFoundError
from trainables.tasks.text import EOS, UNK, batchify, load_text
from trainables.train import trainer_for

ROOT = Path(__file__).resolve().parents[2]


def _cfg(data_dir: Path, **kw) -> RunConfig:
    base = dict(
        corpus="ptb", level="word", data_dir=str(data_dir), hidden_size=16, embedding_size=16,
        seq_len=12, batch_size=8, epochs=2, batches_per_epoch=None, lr=1e-2, backend="torch",
    )  # fmt: skip
    return RunConfig.from_preset("language_model", "smoke", **(base | kw))


def test_ptb_layout_vocabulary_and_unknown_words(tmp_path):
    write_ptb(tmp_path)
    data = load_text("ptb", data_dir=tmp_path, level="word")
    assert data.vocab[0] == UNK and data.vocab.count(UNK) == 1
    train_lines = [ln for ln in (tmp_path / "ptb.train.txt").read_text().splitlines() if ln.split()]
    eos = data.vocab.index(EOS)
    assert int((data.train == eos).sum()) == len(train_lines)  # one <eos> per line
    assert len(data.train) == sum(len(ln.split()) + 1 for ln in train_lines)
    assert int(data.train.max()) < data.vocab_size and int(data.train.min()) >= 0
    # a word of the test split unseen in training is <unk> (id 0)
    (tmp_path / "ptb.test.txt").write_text(" zebra sees the fish \n")
    data = load_text("ptb", data_dir=tmp_path, level="word")
    assert "zebra" not in data.vocab and data.test.tolist()[0] == 0
    # min_count sends rare training words to <unk> too
    rare = load_text("ptb", data_dir=tmp_path, level="word", min_count=10_000)
    assert rare.vocab == (UNK, EOS) or rare.vocab == (UNK,)


def test_wikitext2_layout(tmp_path):
    lines = [" = Valkyria Chronicles = ", "", " the game @-@ play is <unk> . "]
    for split in ("train", "valid", "test"):
        (tmp_path / f"wiki.{split}.tokens").write_text("\n".join(lines) + "\n")
    data = load_text("wikitext-2", data_dir=tmp_path, level="word")
    words = [data.vocab[i] for i in data.train.tolist()]
    assert words == ["=", "Valkyria", "Chronicles", "=", EOS, "the", "game", "@-@", "play", "is",
                     UNK, ".", EOS]  # fmt: skip
    assert data.vocab.count(UNK) == 1  # the corpus's own <unk> is the vocabulary's


def test_char_level_any_text_file_splits_losslessly(tmp_path):
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(200))
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    data = load_text(str(path), level="char")
    sizes = data.meta["tokens"]
    assert sum(sizes) == len(text)
    assert sizes[0] == pytest.approx(0.9 * len(text), rel=0.02)
    assert set(data.vocab) - {UNK} == set(text[: sizes[0]])
    decoded = "".join(data.vocab[i] for i in data.train.tolist())
    assert decoded == text[: sizes[0]]


def test_missing_corpus_names_the_files(tmp_path):
    (tmp_path / "ptb.train.txt").write_text("a b\n")
    with pytest.raises(DataNotFoundError, match=r"ptb\.valid\.txt, ptb\.test\.txt"):
        load_text("ptb", data_dir=tmp_path)
    with pytest.raises(DataNotFoundError, match="neither"):
        load_text(str(tmp_path / "nope.txt"))
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n" * 10)
    with pytest.raises(DataNotFoundError, match="not UTF-8"):
        load_text(str(tmp_path / "latin1.txt"))


def test_batchify_walks_contiguous_streams():
    s = torch.arange(23)
    b = batchify(s, 4)
    assert b.shape == (4, 5) and b[1].tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="too short"):
        batchify(torch.arange(5), 4)


def test_training_lowers_loss_and_perplexity(tmp_path):
    write_ptb(tmp_path)
    trainer = LanguageModelTrainer(_cfg(tmp_path, epochs=4, p_detach=0.25))
    trainer.run()
    h = trainer.history[0]
    assert h[-1]["train_loss"] < 0.8 * h[0]["train_loss"]
    assert h[-1]["val_ppl"] < h[0]["val_ppl"]
    assert all(0.1 < r["detached_fraction"] < 0.4 for r in h)  # h-detach inside each window
    finals = trainer.finish()[0]
    assert finals["test_perplexity"] == pytest.approx(math.exp(finals["test_loss"]))
    best = finals["best_epoch"]
    assert finals["best_val_perplexity"] == min(r["val_ppl"] for r in h)
    assert finals["best_val_score"] == pytest.approx(1 / h[best - 1]["val_ppl"])


def test_perplexity_is_exp_of_the_mean_nll_over_the_whole_split(tmp_path):
    """Windows with the state carried equal one pass over the whole stream."""
    write_ptb(tmp_path)
    trainer = LanguageModelTrainer(_cfg(tmp_path, epochs=1))
    trainer.run()
    stream = trainer.data.val
    loss, acc = trainer.nll(stream)
    streams = batchify(stream, min(10, stream.shape[0] // 4))
    with torch.no_grad():
        x, y = streams[:, :-1].t(), streams[:, 1:].t()
        logits, _ = trainer._forward(x, None)
        ce = F.cross_entropy(logits[:, 0].reshape(-1, logits.shape[-1]), y.reshape(-1))
        right = (logits[:, 0].argmax(-1) == y).double().mean()
    assert loss[0] == pytest.approx(float(ce), rel=1e-5)
    assert acc[0] == pytest.approx(float(right), abs=1e-9)
    assert trainer.history[0][0]["val_ppl"] == pytest.approx(math.exp(loss[0]), rel=1e-6)


def test_tied_weights_share_one_matrix(tmp_path):
    write_ptb(tmp_path)
    tied = LanguageModelTrainer(_cfg(tmp_path, tie_weights=True))
    untied = LanguageModelTrainer(_cfg(tmp_path))
    assert len({id(p) for p in tied.params}) == len(tied.params)  # no parameter twice
    V, E = tied.data.vocab_size, 16
    count = lambda t: sum(p.numel() for p in t.params)  # noqa: E731
    assert count(untied) - count(tied) == V * E  # the output matrix is the embedding's
    assert tied.head.embedding[0] is tied.embedding
    with pytest.raises(ConfigError, match="embedding_size == hidden_size"):
        LanguageModelTrainer(_cfg(tmp_path, tie_weights=True, embedding_size=8))


def test_members_train_like_single_runs(tmp_path):
    write_ptb(tmp_path)
    pair = LanguageModelTrainer(_cfg(tmp_path, seeds=(3, 4), p_detach=0.25, dropout=0.2))
    pair.run()
    for k, seed in enumerate((3, 4)):
        single = LanguageModelTrainer(_cfg(tmp_path, seeds=(seed,), p_detach=0.25, dropout=0.2))
        single.run()
        for a, b in zip(pair.history[k], single.history[0], strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_resume_is_bitwise(tmp_path):
    write_ptb(tmp_path / "data")
    cfg = _cfg(tmp_path / "data", epochs=3, p_detach=0.4, dropout=0.3)
    assert_resumes_bitwise(lambda: LanguageModelTrainer(cfg), tmp_path / "ck.pt", 1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--corpus", "ptb"], "ptb.train.txt"),
        (["--corpus", "/no/such/book.txt"], "neither one of"),
        (["--level", "byte"], "invalid choice: 'byte'"),
    ],
)
def test_bad_data_exits_2_with_one_line(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "trainables.train", "--task", "language_model", "--preset",
         "smoke", "--data-dir", str(tmp_path), "--quiet", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in proc.stderr


def test_smoke_preset_runs_offline_on_the_builtin_corpus():
    cfg = RunConfig.from_preset("language_model", "smoke", epochs=1, batches_per_epoch=20)
    trainer = trainer_for(cfg)
    assert trainer.data.meta["source"] == "pydoc_data.topics"
    trainer.run()
    assert trainer.history[0][0]["val_ppl"] < trainer.data.vocab_size  # better than uniform


@pytest.mark.parametrize(
    "optimizer, lr", [("sgd", 1.0), ("momentum", 0.3), ("rmsprop", 3e-3), ("adam", 1e-2)]
)
def test_every_optimizer_of_the_source_document_lowers_perplexity(tmp_path, optimizer, lr):
    write_ptb(tmp_path)
    trainer = LanguageModelTrainer(_cfg(tmp_path, optimizer=optimizer, lr=lr, epochs=8))
    trainer.run()
    ppl = [r["val_ppl"] for r in trainer.history[0]]
    assert ppl[-1] < 0.8 * ppl[0] and ppl[-1] < 0.5 * trainer.data.vocab_size, ppl
    kind = {"momentum": "sgd"}.get(optimizer, optimizer)
    assert type(trainer.optimizer).__name__.lower() == kind
    assert (trainer.optimizer.param_groups[0].get("momentum", 0) > 0) == (optimizer == "momentum")
