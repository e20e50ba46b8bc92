"""The study's calibration in quick mode (``benchmarks/calibration_study.py``): every study
rule keeps its stated error on every shape, but for the limits ``docs/study-statistics.md``
names (strongly skewed and ceiling-bound differences in the tails), which must not spread."""

from __future__ import annotations

import math

import pytest

from benchmarks import calibration_study

#: (rule prefix, shape) pairs over alpha in the full run, documented as open (issue 20)
KNOWN = {
    ("sequential sign-flip", "skewed"),
    ("sequential equivalence", "skewed"),
    ("sequential equivalence", "ceiling"),
    ("sequential equivalence", "zero-inflated"),
    ("12 null configurations, fixed 8 seeds, bh", "skewed"),
    ("12 null configurations, sequential", "ceiling"),
}
KEYS = {"rule", "shape", "n", "alpha", "truth", "studies", "rate", "se", "mean_seeds"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return calibration_study.rows(quick=True, seed=3)


def _over(r: dict) -> bool:
    se = math.sqrt(r["alpha"] * (1 - r["alpha"]) / r["studies"])
    return r["truth"] == "null" and r["rate"] > r["alpha"] + 3 * se


def _known(r: dict) -> bool:
    return any(r["rule"].startswith(rule) and r["shape"] == shape for rule, shape in KNOWN)


def test_no_study_rule_is_over_alpha_beyond_the_documented_limits(rows):
    over = [(r["rule"], r["shape"], r["rate"]) for r in rows if _over(r) and not _known(r)]
    assert not over, over


def test_rows_have_the_merged_table_s_keys_and_every_kind_of_rule(rows):
    assert all(KEYS <= set(r) for r in rows)
    rules = " ".join(r["rule"] for r in rows)
    for kind in ("sequential sign-flip", "equivalence", "holm", "bh", "confirmed", "power"):
        assert kind in rules, kind


def test_confirmation_keeps_alpha_where_the_search_stage_does_not(rows):
    confirmed = [r for r in rows if "confirmed on" in r["rule"] and r["shape"] == "normal"]
    search = [r for r in rows if "search stage" in r["rule"] and r["shape"] == "normal"]
    assert confirmed[0]["rate"] < search[0]["rate"]
    assert search[0]["bias_sd"] > 0.1  # the winner's curse, in SD of the differences


def test_the_sequential_test_finds_a_large_effect_early(rows):
    power = [r for r in rows if "(power)" in r["rule"] and r["truth"] == "effect=1"]
    normal = next(r for r in power if r["shape"] == "normal")
    assert normal["rate"] > 0.9 and normal["mean_seeds"] < 20
