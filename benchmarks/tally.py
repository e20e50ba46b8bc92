"""The benchmark scripts' shared bookkeeping: one calibration row from simulated verdicts, and
the name of the CPU a figure came from (every results file records it)."""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np


def row(rule, shape, n, alpha, truth, verdicts, seeds=None, **extra) -> dict:
    """One calibration row from a ``(studies,)`` boolean array of verdicts: the rate with its
    binomial standard error; ``seeds`` (a number or per-study counts) as their mean."""
    v = np.asarray(verdicts, dtype=bool)
    rate = float(v.mean())
    return {
        "rule": rule,
        "shape": shape,
        "n": int(n),
        "alpha": alpha,
        "truth": truth,
        "studies": int(v.size),
        "rate": rate,
        "se": math.sqrt(max(rate * (1 - rate), 1e-12) / v.size),
        "mean_seeds": None if seeds is None else float(np.mean(seeds)),
        **extra,
    }


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_results(path: Path, script: str, argv: list[str] | None, **fields) -> None:
    """Write a results file: ``fields`` with the machine, date and command that made them (the
    command as ``python <script> <argv>``, the process's own arguments when ``argv`` is None)."""
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    command = " ".join(["python", script, *(sys.argv[1:] if argv is None else argv)])
    machine = {"cpu": cpu_name(), "platform": platform.platform(), "python": sys.version}
    doc = {"machine": {**machine, "date": date, "command": command}, "date": date}
    path.write_text(json.dumps({**doc, "command": command, **fields}, indent=1) + "\n")


def reference(r: dict) -> bool:
    """A row shown for comparison, not a decision rule: a test run without the shape gate
    (what the verdicts used before the gate; over alpha on skewed and ceiling-piled outcomes:
    no test of a mean keeps its level over all skewed distributions at small n, Bahadur &
    Savage 1956). No rule the report or the study decides with is exempt."""
    return bool(r.get("reference"))


def too_high(r: dict, k: float = 3.0) -> bool:
    """A null row whose false-verdict rate exceeds alpha by more than k standard errors (the
    SE at alpha, so a rate of 0 in few studies is not flattered)."""
    se = math.sqrt(r["alpha"] * (1 - r["alpha"]) / r["studies"])
    return r["truth"] == "null" and r["rate"] > r["alpha"] + k * se
