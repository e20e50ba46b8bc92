"""Corrections for families of tests: the checks of one claim, the configurations of one study.

Holm (family-wise error <= alpha under any dependence) is the default; Benjamini-Hochberg
(false discovery rate <= alpha for independent or positively dependent tests) on request.
statsmodels' ``multipletests`` does the arithmetic; this module only names the methods the
project offers and keeps missing p-values out of the family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from statsmodels.stats.multitest import multipletests

#: method name as users type it -> statsmodels' name
METHODS = {"holm": "holm", "bh": "fdr_bh", "none": None}
#: what each method controls, in a reader's words
CONTROLS = {
    "holm": "family-wise error (Holm): P(any false verdict in the family) <= alpha",
    "bh": "false discovery rate (Benjamini-Hochberg): expected share of false verdicts among "
    "the decided ones <= alpha",
    "none": "each test alone (no correction for the family)",
}


def adjust(pvalues: Sequence[float], method: str = "holm") -> np.ndarray:
    """Adjusted p-values, same order as ``pvalues``; NaN entries (tests that were not run)
    stay NaN and are not counted in the family. Compare the result with alpha."""
    if method not in METHODS:
        raise ValueError(f"correction must be one of {', '.join(METHODS)}, got {method!r}")
    p = np.asarray(pvalues, dtype=float).reshape(-1)
    out = np.full(p.shape, math.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out
    if METHODS[method] is None:
        out[ok] = p[ok]
        return out
    out[ok] = multipletests(np.clip(p[ok], 0.0, 1.0), method=METHODS[method])[1]
    return out
