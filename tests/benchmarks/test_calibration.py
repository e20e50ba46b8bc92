"""The calibration's quick mode: every report rule keeps its stated error on every shape.

A null row whose false-verdict rate exceeds alpha by more than three binomial standard errors
fails the test. The only rows exempt are the reference rows (``calibration.reference``: the
bare paired t without the shape gate, which no rule decides with); the test also holds that
they are over alpha on the skewed shape, so the gate has something to do.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import calibration

KEYS = {"rule", "shape", "n", "alpha", "truth", "studies", "rate", "se", "mean_seeds"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return calibration.run(quick=True, seed=20, study=False)


def test_every_null_rate_is_at_most_alpha_within_three_standard_errors(rows):
    over = [r for r in rows if calibration.too_high(r) and not calibration.reference(r)]
    assert not over, calibration.table(over)
    bare = [r for r in rows if calibration.reference(r) and r["shape"] == "skewed"]
    assert bare and all(calibration.too_high(r) for r in bare if r["truth"] == "null")


def test_rows_cover_every_rule_and_shape_with_power_under_effects(rows):
    assert all(set(r) - {"reference"} == KEYS for r in rows)
    assert {r["shape"] for r in rows} == set(calibration.SHAPES)
    nulls = [r for r in rows if r["truth"] == "null"]
    assert len({r["rule"] for r in nulls}) == 12
    # the mean test has power where it should: a 1-SD effect at 10 normal pairs
    power = next(
        r for r in rows
        if r["rule"] == "mean: paired t, shape gate" and r["shape"] == "normal" and r["n"] == 10
        and r["truth"] == "effect=1"
    )  # fmt: skip
    assert power["rate"] > 0.6


def test_the_old_or_rule_would_fail_the_same_check():
    """The check this file makes can fail: a rule at twice its alpha is flagged."""
    r = {"truth": "null", "alpha": 0.05, "studies": 2000, "rate": 0.071}
    assert calibration.too_high(r)
    assert not calibration.too_high({**r, "rate": 0.055})


def test_json_and_bad_folder(tmp_path, capsys):
    out = tmp_path / "cal.json"
    assert calibration.main(["--quick", "--report-only", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {"machine", "date", "command", "rows"} <= set(doc) and doc["rows"]
    assert calibration.main(["--quick", "--json", str(tmp_path / "no" / "x.json")]) == 2
    assert "no such folder" in capsys.readouterr().err
