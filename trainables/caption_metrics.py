"""Caption metrics with the standard COCO caption evaluation (``pycocoevalcap``): BLEU-1..4,
METEOR, ROUGE-L and CIDEr-D, on captions that are already tokenised (Karpathy's tokens, so
the Java PTB tokenizer is not needed).

METEOR runs a Java program: where ``java`` is not on the PATH it is skipped, and the first
time that happens a warning says so (never silently); every other metric is pure Python.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings

_warned: set[str] = set()


def _scorers():
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        raise ImportError(
            "captioning metrics need pycocoevalcap: pip install 'hdetach-study[captioning]'"
        ) from None
    return Bleu, Cider, Rouge


def java_available() -> bool:
    return shutil.which("java") is not None


def score(
    references: list[list[str]], hypotheses: list[str], *, meteor: bool = True
) -> dict[str, float]:
    """Corpus-level scores of ``hypotheses[i]`` against ``references[i]`` (all strings of
    space-separated tokens): ``bleu1``..``bleu4``, ``rouge_l``, ``cider`` (CIDEr-D, x1, as
    pycocoevalcap reports it; the paper's tables show x100) and ``meteor`` when Java runs."""
    if len(references) != len(hypotheses) or not hypotheses:
        raise ValueError(
            f"need one hypothesis per image, got {len(hypotheses)} for {len(references)}"
        )
    Bleu, Cider, Rouge = _scorers()
    gts = {i: list(refs) for i, refs in enumerate(references)}
    res = {i: [h if h.strip() else "<empty>"] for i, h in enumerate(hypotheses)}
    with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its n-gram counts
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu{n + 1}": float(v) for n, v in enumerate(bleu)}
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    if meteor:
        if java_available():
            from pycocoevalcap.meteor.meteor import Meteor

            scorer = Meteor()
            try:
                out["meteor"] = float(scorer.compute_score(gts, res)[0])
            finally:
                with contextlib.suppress(Exception):
                    scorer.close()
        elif "meteor" not in _warned:
            _warned.add("meteor")
            warnings.warn(
                "METEOR needs Java (java is not on the PATH): METEOR is skipped",
                RuntimeWarning,
                stacklevel=2,
            )
    return out
