"""The study's correction across its configurations (``study/summary.py``): raw p-values in,
adjusted p-values and surviving verdicts out, Holm by default (issue 20)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from study import sequential as seq
from study.summary import _fixed_test, family


def _rows(pvalues, decisions):
    return [
        {"config_id": f"hd_{i}", "p_value": p, "decision": d}
        for i, (p, d) in enumerate(zip(pvalues, decisions, strict=True))
    ]


def test_holm_keeps_only_what_survives_the_family():
    rows = _rows([0.001, 0.02, 0.03, math.nan], ["better", "worse", "better", None])
    family(rows, "holm", 0.05)
    assert [r.get("p_adjusted") for r in rows[:3]] == pytest.approx([0.003, 0.04, 0.04])
    assert [r.get("decision_adjusted") for r in rows] == ["better", "worse", "better", None]
    rows = _rows([0.001, 0.02, 0.03, 0.04], ["better", "worse", "better", "better"])
    family(rows, "holm", 0.05)  # four in the family now: 0.02 x 3 = 0.06
    assert [r["decision_adjusted"] for r in rows] == [
        "better",
        "undecided",
        "undecided",
        "undecided",
    ]


def test_bh_is_less_strict_than_holm_and_none_leaves_the_p_values():
    pvalues, decided = [0.01, 0.02, 0.03, 0.04], ["better"] * 4
    bh, none = _rows(pvalues, decided), _rows(pvalues, decided)
    family(bh, "bh", 0.05)
    family(none, "none", 0.05)
    assert all(r["decision_adjusted"] == "better" for r in bh)
    assert [r["p_adjusted"] for r in none] == pvalues


def test_a_small_p_value_the_test_did_not_decide_stays_undecided():
    rows = _rows([0.004], ["undecided"])
    family(rows, "holm", 0.05)
    assert rows[0]["decision_adjusted"] == seq.UNDECIDED


def test_a_fixed_seed_study_tests_each_configuration_with_one_look():
    decision, p, withheld = _fixed_test(np.full(8, 0.01) + np.arange(8) * 1e-3, "hd", 0.05)
    assert decision == seq.BETTER and p == pytest.approx(2 / 256) and not withheld
    decision, p, _ = _fixed_test(np.array([0.1, 0.2, 0.3]), "hd", 0.05)  # 8 patterns: p >= 1/4
    assert decision == seq.UNDECIDED and p >= 0.25
    assert _fixed_test(np.array([0.1]), "hd", 0.05) == (
        None,
        pytest.approx(math.nan, nan_ok=True),
        False,
    )
