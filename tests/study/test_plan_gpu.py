"""``hdetach-study plan --gpu-check``: the paper-scale verdicts priced from a GPU check's
measured step times, the figures the check's JSON holds (computed once, by cost.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from study import plan
from trainables.kernels import cost

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
PRICED = RESULTS / "gpu_cost_h200_2026-12-04.json"


def test_the_planner_prints_the_gpu_checks_verdict_hours(capsys):
    assert plan.main(["--gpu-check", str(PRICED)]) == 0
    out = capsys.readouterr().out
    hours = json.loads(PRICED.read_text())["cost"]["gpu_hours"]
    assert set(hours) == {v.claim for v in cost.PAPER_VERDICTS}
    for claim, v in hours.items():
        block = out[out.index(f"  {claim}: ") :]
        for engine, h in v["hours"].items():
            assert re.search(rf"^\s+{h:.1f} GPU-hours  {re.escape(engine)}$", block, re.M), block


def test_a_json_without_gpu_hours_exits_2_naming_it(tmp_path, capsys):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"machine": {}}))
    with pytest.raises(SystemExit) as exit_:
        plan.main(["--gpu-check", str(bad)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "cost.gpu_hours" in err[0]
