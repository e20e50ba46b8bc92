"""Language-modelling corpora: word-level Penn Treebank and WikiText-2 in their standard file
layouts, character-level on any UTF-8 text, and one corpus every Python installation has.

    <data_dir>/ptb.train.txt  ptb.valid.txt  ptb.test.txt          corpus "ptb" (word level)
    <data_dir>/wiki.train.tokens  wiki.valid.tokens  wiki.test.tokens  corpus "wikitext-2"
    <path to any UTF-8 .txt file>                                   split 90/5/5, contiguous
    "pydoc"                                                         built in (see below)

Word level: whitespace tokens, ``<eos>`` at the end of each line (the standard PTB language
modelling setup; both corpora already contain ``<unk>``). Character level: every character,
newlines included. The vocabulary is the training split's (tokens seen ``min_count`` times or
more), plus ``<unk>``, to which unseen tokens map.

The ``pydoc`` corpus is the English text of the Python documentation's topics
(``pydoc_data.topics``, shipped with CPython: about 465,000 characters of prose and code
examples, PSF-licensed). It is on every machine that runs this project, so the reduced and
smoke presets need no download; it is real running text, which is what a character-level LSTM
language model is evaluated on, so the comparison of arms it gives is a legitimate small-scale
one (it is not PTB: perplexities are not comparable with published PTB numbers).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .base import DataNotFoundError

CORPORA = ("ptb", "wikitext-2", "pydoc")
LEVELS = ("word", "char")
UNK, EOS = "<unk>", "<eos>"
_FILES = {
    "ptb": ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
    "wikitext-2": ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"),
}


@dataclass(frozen=True)
class TextData:
    """A corpus as token ids: ``train``, ``val``, ``test`` are int64 ``(N,)`` streams."""

    name: str
    vocab: tuple[str, ...]
    train: Tensor
    val: Tensor
    test: Tensor
    level: str
    meta: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def to(self, device) -> TextData:
        return dataclasses.replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )


def _tokens(text: str, level: str) -> list[str]:
    if level == "char":
        return list(text)
    out: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words:
            out += [*words, EOS]
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataNotFoundError(f"corpus file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise DataNotFoundError(f"corpus file {path} is not UTF-8 text ({err.reason})") from None


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def _split(text: str) -> tuple[str, str, str]:
    """90/5/5, contiguous, cut at line breaks so no line straddles two splits."""
    n = len(text)
    cuts = []
    for share in (0.9, 0.95):
        at = int(n * share)
        nl = text.find("\n", at)
        cuts.append(nl + 1 if nl != -1 else at)
    return text[: cuts[0]], text[cuts[0] : cuts[1]], text[cuts[1] :]


def load_text(
    corpus: str = "pydoc",
    *,
    data_dir: str | Path = "data",
    level: str = "char",
    min_count: int = 1,
    max_tokens: int | None = None,
) -> TextData:
    """The corpus as token ids (see the module docstring for ``corpus``)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
    if corpus in _FILES:
        root = Path(data_dir).expanduser()
        missing = [name for name in _FILES[corpus] if not (root / name).is_file()]
        if missing:
            raise DataNotFoundError(
                f"{corpus} needs {', '.join(_FILES[corpus])} in {root} "
                f"(missing: {', '.join(missing)}); no download: put the files there"
            )
        texts = tuple(_read(root / name) for name in _FILES[corpus])
        source = str(root)
    elif corpus == "pydoc":
        texts, source = _split(pydoc_text()), "pydoc_data.topics"
    else:
        path = Path(corpus).expanduser()
        if not path.is_file():
            raise DataNotFoundError(
                f"corpus {corpus!r} is neither one of {', '.join(CORPORA)} nor a text file"
            )
        texts, source = _split(_read(path)), str(path)
    streams = [_tokens(t, level) for t in texts]
    if max_tokens is not None:
        streams = [s[:max_tokens] for s in streams]
    if not all(streams):
        raise DataNotFoundError(f"corpus {corpus!r} ({source}) has an empty split")
    counts = Counter(streams[0])
    words = sorted(w for w, n in counts.items() if n >= min_count and w != UNK)
    vocab = (UNK, *words)
    index = {w: i for i, w in enumerate(vocab)}
    ids = [torch.tensor([index.get(w, 0) for w in s], dtype=torch.int64) for s in streams]
    meta = {"corpus": corpus, "source": source, "level": level, "tokens": [len(s) for s in streams]}
    return TextData("language_model", vocab, *ids, level=level, meta=meta)


def batchify(stream: Tensor, streams: int) -> Tensor:
    """``(N,)`` -> ``(streams, N // streams)``: parallel contiguous streams (the remainder is
    dropped), as truncated backpropagation through time walks them."""
    n = stream.shape[0] // streams
    if n < 2:
        raise ValueError(f"a split of {stream.shape[0]} tokens is too short for {streams} streams")
    return stream[: n * streams].view(streams, n)
