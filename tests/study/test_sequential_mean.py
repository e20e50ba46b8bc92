"""The sequential design's statistic and p-value (issue 20): under accuracies piled at a
ceiling with equal means (differences not symmetric) it keeps its level; studentizing orders
the sign patterns as the raw mean does (the docstring's claim, held here); its stage-wise
p-value agrees with its decisions; one vectorised run equals the per-study analysis."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.shapes import SHAPES
from study import sequential as seq

STUDIES = 600


def _ceiling(alpha: float, n: int) -> float:
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / n)


@pytest.mark.parametrize("spending", seq.SPENDING)
def test_equal_means_at_a_ceiling_are_not_called_worse(spending):
    design = seq.SequentialDesign(8, 4, 32, spending=spending, patterns=1024)
    treatment, baseline = SHAPES["ceiling"](np.random.default_rng(5), STUDIES, 32, 0.0)
    run = seq.run_design(treatment - baseline, design, design.signs("ceiling"))
    wrong = float(np.mean(run.code != 0))
    assert wrong <= _ceiling(design.alpha, STUDIES), (spending, wrong)


def test_the_p_value_is_below_alpha_when_better_or_worse_was_decided():
    """The converse holds only up to the patterns' granularity (tied patterns at a cut are
    not spent), so the study's correction keeps a decision only when the design made it."""
    design = seq.SequentialDesign(8, 4, 20, patterns=1024)
    rng = np.random.default_rng(7)
    d = rng.normal(0.0, 1.0, (400, 20)) + rng.choice([0.0, 0.8], (400, 1))
    run = seq.run_design(d, design, design.signs("p"))
    decided = (run.code == 1) | (run.code == -1)
    assert decided.any() and (~decided).any()
    assert np.all(run.p_value[decided] <= design.alpha + 1e-12)
    assert np.all((run.p_value > 0) & (run.p_value <= 1))


def test_one_vectorised_run_equals_the_analysis_of_each_study():
    design = seq.SequentialDesign(4, 2, 12, margin=0.5)
    rng = np.random.default_rng(3)
    d = rng.normal(0.3, 1.0, (30, 12))
    run = seq.run_design(d, design, design.signs("same"))
    for i in range(d.shape[0]):
        one = seq.analyse(d[i], design, "same")
        assert one.decision == seq.CODES[int(run.code[i])]
        assert one.p_value == run.p_value[i]
        assert one.seeds == run.seeds[i]


def test_differences_without_spread_are_never_called_equivalent():
    design = seq.SequentialDesign(8, 4, 16, margin=0.05)
    assert seq.analyse(np.zeros(16), design, "flat").decision == seq.UNDECIDED
    wiggle = np.tile([0.001, -0.001], 8)
    assert seq.analyse(wiggle, design, "wiggle").decision == seq.EQUIVALENT


def test_studentizing_orders_the_sign_patterns_as_the_raw_mean_does():
    """Why the design's decisions are those of the raw-mean sign-flip test: per study the
    sum of squares is the same under every pattern, so |t| increases with |mean|."""
    rng = np.random.default_rng(9)
    x = rng.lognormal(0.0, 1.0, (20, 10)) - np.exp(0.5)
    signs = seq.SequentialDesign(10, 1, 10).signs("order")
    t = np.abs(seq.studentized(x, signs))
    mean = np.abs(x @ signs.T) / 10
    for row_t, row_m in zip(t, mean, strict=True):
        order = np.argsort(row_m, kind="stable")
        assert np.all(np.diff(row_t[order]) >= -1e-9)
