"""Outcome shapes for calibration: paired (treatment, baseline) draws like real runs give.

Each shape draws ``studies`` simulated studies of ``n`` paired seeds at once and returns two
``(studies, n)`` arrays, ``treatment`` and ``baseline``, whose true mean difference
``E[treatment - baseline]`` is ``effect`` times the standard deviation of the differences
(``effect=0`` is the null: equal means, not equal distributions: several shapes give the
arms different spreads or skews with the same mean, the case that breaks tests of symmetry).

The shapes are the ones named in STATISTICS.md: normal; heavy tails; skewed; accuracies
bounded at a ceiling with equal means; many exact ties. Small n is the n grid of the caller.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Draw = Callable[[np.random.Generator, int, int, float], tuple[np.ndarray, np.ndarray]]


def normal(rng, studies, n, effect):
    """Correlated normal arms (rho 0.5): differences N(effect, 1)."""
    base = rng.normal(0.5, 0.1, (studies, n))
    d = rng.normal(effect, 1.0, (studies, n)) * 0.1
    return base + d, base


def heavy_tails(rng, studies, n, effect):
    """Differences from Student t with 3 degrees of freedom (scaled to SD 1), mean effect."""
    t = rng.standard_t(3, (studies, n)) / np.sqrt(3.0)
    base = rng.normal(0.5, 0.1, (studies, n))
    return base + 0.1 * (t + effect), base


def skewed(rng, studies, n, effect):
    """Lognormal-shaped differences (sigma 1), centred to mean ``effect`` (SD 1): mostly
    small negative, now and then large positive, as losses and times are."""
    sigma = 1.0
    mean = np.exp(sigma**2 / 2)
    sd = np.sqrt((np.exp(sigma**2) - 1) * np.exp(sigma**2))
    d = (rng.lognormal(0.0, sigma, (studies, n)) - mean) / sd
    base = rng.normal(0.5, 0.1, (studies, n))
    return base + 0.1 * (d + effect), base


def ceiling(rng, studies, n, effect):
    """Accuracies piled at 100% with equal means under the null: the baseline reaches 1.0 on
    60% of seeds and is uniform on [0.5, 1) otherwise (mean 0.9); the treatment reaches 1.0 on
    80% of seeds and is uniform on [0.25, 0.75) otherwise (mean 0.9). ``effect`` > 0 moves
    the treatment's non-ceiling seeds up (mean difference ``effect`` times the null SD of the
    differences, capped by the ceiling)."""
    u = rng.random((studies, n))
    base = np.where(u < 0.6, 1.0, rng.uniform(0.5, 1.0, (studies, n)))
    v = rng.random((studies, n))
    low = rng.uniform(0.25, 0.75, (studies, n))
    sd0 = _CEILING_SD
    low = np.minimum(low + effect * sd0 / 0.2, 1.0)
    treat = np.where(v < 0.8, 1.0, low)
    return treat, base


def ties(rng, studies, n, effect):
    """Accuracies on a small validation set: both arms take one of 5 values, so many pairs
    tie exactly (about 60% of differences are 0); the treatment's values are shifted by
    ``effect`` SDs of the differences."""
    grid = np.array([0.6, 0.7, 0.8, 0.9, 1.0])
    base = grid[rng.integers(1, 4, (studies, n))]
    same = rng.random((studies, n)) < 0.4
    other = grid[rng.integers(1, 4, (studies, n))]
    treat = np.where(same, base, other)
    return treat + effect * _TIES_SD, base


def _null_sd(draw) -> float:
    t, b = draw(np.random.default_rng(12345), 2000, 100, 0.0)
    return float((t - b).std())


_CEILING_SD = 1.0
_TIES_SD = 1.0
_CEILING_SD = _null_sd(ceiling)
_TIES_SD = _null_sd(ties)

SHAPES: dict[str, Draw] = {
    "normal": normal,
    "heavy-tailed": heavy_tails,
    "skewed": skewed,
    "ceiling": ceiling,
    "ties": ties,
}
