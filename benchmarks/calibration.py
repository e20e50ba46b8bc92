"""Calibration of the report's decision rules: false-verdict rates, power and seeds, measured.

For every rule in ``pairedstats.tests`` the report decides with (and the claim's Holm step),
over every outcome shape in ``benchmarks/shapes.py`` and small n, this simulates many studies
at once and counts how often the rule gives a verdict: under a null that is a false verdict
(its rate must stay at or below alpha within its binomial error), under an effect it is the
power. Each row is ``{rule, shape, n, alpha, truth, studies, rate, se, mean_seeds}``; the study
side's rows (``benchmarks/calibration_study.py``: sequential tests, per-configuration
corrections, selection and confirmation) join when that file exists.

The nulls are the ones each test claims to keep:

* mean difference, time to threshold (restricted means), equivalence and non-inferiority:
  the shape's own arms, whose means are equal (equal means, not equal distributions; the
  margin rules shift the differences to sit exactly on the margin);
* P(A>B) sign test, paired rates (McNemar), spread across seeds: the shape's arms swapped at
  random within pairs (the arms differ in nothing, which is what those tests' nulls say);
* worst case over learning rates: WORST_LRS learning rates whose arms all have equal means
  (every learning rate at the worst, the least favourable null for a minimum);
* a claim of 12 checks: 12 independent null mean checks, "contradicted" when Holm keeps any.

Usage::

    python benchmarks/calibration.py --quick                 # under a minute
    python benchmarks/calibration.py --json benchmarks/results/calibration_<date>.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.shapes import SHAPES  # noqa: E402
from benchmarks.tally import row, write_results  # noqa: E402
from pairedstats import tests, worstcase  # noqa: E402

ALPHA = 0.05
#: the margin rules decide on a 95% interval inside / above the margin: each one-sided t-test
#: at 0.025 (what the report's 95% CI shows)
MARGIN_ALPHA = 0.025
#: equivalence / non-inferiority margin, in SDs of the differences
MARGIN_SD = 0.5
CLAIM_CHECKS = 12
#: epochs to threshold from an accuracy-like value: better runs reach it sooner
TIME_SCALE, TIME_BUDGET = 20.0, 15.0
EFFECTS = (0.5, 1.0)
#: learning rates of the worst-case check (every one at the worst: its least favourable null)
WORST_LRS = 3

FULL = {"n": (3, 5, 8, 10, 20), "null": 4000, "effect": 2000, "patterns": 1024}
QUICK = {"n": (3, 5, 10), "null": 1000, "effect": 400, "patterns": 64}


def swapped(rng: np.random.Generator, a: np.ndarray, b: np.ndarray):
    """The arms swapped at random within each pair: exchangeable arms of the same shape."""
    s = rng.random(a.shape) < 0.5
    return np.where(s, b, a), np.where(s, a, b)


def flags(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0/1 outcomes (value at or above the study's pooled median), e.g. "reached 99%".

    The pooled median does not change when pairs are swapped, so swapped arms stay
    exchangeable."""
    cut = np.median(np.concatenate([a, b], axis=-1), axis=-1, keepdims=True)
    return a >= cut, b >= cut


def epochs(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(time, reached) to a threshold from an accuracy-like value; past the budget censored."""
    t = np.ceil(TIME_SCALE * np.clip(1.2 - v, 0.05, None))
    return t, t <= TIME_BUDGET


def margin_of(draw) -> float:
    """MARGIN_SD in the shape's own units: the null SD of its differences."""
    a, b = draw(np.random.default_rng(7), 2000, 100, 0.0)
    return MARGIN_SD * float((a - b).std())


def report_rules(rng, draw, shape, n, studies, effect, patterns) -> list[dict]:
    """The report's rules on one shape and n: null rows (effect None) or power rows."""
    truth = "null" if effect is None else f"effect={effect:g}"
    a, b = draw(rng, studies, n, effect or 0.0)
    xa, xb = (a, b) if effect is not None else swapped(rng, a, b)
    out = [
        row("mean: paired t", shape, n, ALPHA, truth, tests.mean_pvalue(a - b) < ALPHA, n),
        row(
            "P(A>B): exact sign test", shape, n, ALPHA, truth,
            tests.prob_better_pvalue(xa, xb) < ALPHA, n,
        ),
        row("rate: exact McNemar", shape, n, ALPHA, truth, tests.mcnemar_pvalue(*flags(xa, xb))
            < ALPHA, n),
    ]  # fmt: skip
    wa, wb = draw(rng, studies * WORST_LRS, n, effect or 0.0)
    p_worst = worstcase.worst_case_pvalue(wa.reshape(studies, WORST_LRS, n),
                                          wb.reshape(studies, WORST_LRS, n))  # fmt: skip
    out.append(row(f"worst of {WORST_LRS} learning rates: t/Bonferroni", shape, n, ALPHA, truth,
                   p_worst < ALPHA, n))  # fmt: skip
    (ta, ea), (tb, eb) = epochs(xa), epochs(xb)
    p_time = tests.time_pvalue(ta, ea, tb, eb, TIME_BUDGET)
    out.append(row("time: paired t, restricted mean", shape, n, ALPHA, truth, p_time < ALPHA, n))
    if effect is None:  # a spread effect is not a mean shift: no power rows for it here
        p_spread = tests.spread_pvalue(xa, xb, max_patterns=patterns)
        out.append(row("spread: swap randomisation", shape, n, ALPHA, truth, p_spread < ALPHA, n))
        m = margin_of(draw)
        d = a - b  # true mean 0: shifted onto each margin, the null's worst case
        for side, shift in (("upper", m), ("lower", -m)):
            p = tests.tost_pvalue(d + shift, -m, m)
            out.append(row(f"equivalence: TOST at {side} margin", shape, n, MARGIN_ALPHA, truth,
                           p < MARGIN_ALPHA, n))  # fmt: skip
        p_ni = tests.noninferiority_pvalue(d - m, m)
        out.append(row("non-inferiority: one-sided t at margin", shape, n, MARGIN_ALPHA, truth,
                       p_ni < MARGIN_ALPHA, n))  # fmt: skip
    return out


def claim_rule(rng, draw, shape, n, studies) -> dict:
    """A claim of CLAIM_CHECKS null checks, "contradicted" when Holm keeps any check whose
    effect points against the claim. Holm rejects anything iff its smallest p-value is below
    alpha / m (``tests/pairedstats`` holds this against ``multiplicity.adjust``)."""
    a, b = draw(rng, studies * CLAIM_CHECKS, n, 0.0)
    d = (a - b).reshape(studies, CLAIM_CHECKS, n)
    p = tests.mean_pvalue(d)
    against = np.where(d.mean(axis=-1) < 0, p, np.inf)
    contradicted = np.min(against, axis=-1) < ALPHA / CLAIM_CHECKS
    rule = f"claim of {CLAIM_CHECKS} checks: Holm"
    return row(rule, shape, n, ALPHA, "null", contradicted, n)


def study_rows(quick: bool, seed: int) -> list[dict]:
    """The study side's rows, when its module exists."""
    path = Path(__file__).with_name("calibration_study.py")
    if not path.exists():
        return []
    spec = importlib.util.spec_from_file_location("calibration_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.rows(quick=quick, seed=seed))


def run(
    quick: bool, seed: int, shapes: dict[str, Callable] | None = None, *, study: bool = True
) -> list[dict]:
    """Every calibration row (the report's, then the study's unless ``study`` is False)."""
    grid = QUICK if quick else FULL
    rng = np.random.default_rng(seed)
    out = []
    for shape, draw in (shapes or SHAPES).items():
        for n in grid["n"]:
            out += report_rules(rng, draw, shape, n, grid["null"], None, grid["patterns"])
            out.append(claim_rule(rng, draw, shape, n, grid["null"] // 4))
            for effect in EFFECTS:
                out += report_rules(rng, draw, shape, n, grid["effect"], effect, grid["patterns"])
    return out + (study_rows(quick, seed) if study else [])


#: Rules on a mean whose false-verdict rate this table shows above alpha, and why: every
#: t-based test of a mean (and the claim's Holm step over such tests) on strongly skewed
#: differences (lognormal sigma 1, skewness about 6: 0.13-0.19 at n = 3..20 for 0.05), and on
#: the ceiling shape's left-skewed differences (about 0.06 for 0.05 at n = 10..20; 0.04-0.05
#: for 0.025 at a margin). No test of a mean keeps its level over all skewed distributions at small
#: n (Bahadur & Savage 1956); skew-corrected t (Johnson 1978, Hall 1992) still gave 0.08-0.14,
#: and Cochran's rule as a gate (benchmarks/skew_guard.py) fixes the ceiling rows but halves
#: the power on normal differences at 10 pairs. These rows stay in the table, marked; the test
#: holds every other row.
KNOWN_OVER = {
    ("mean: paired t", "skewed"),
    ("equivalence: TOST at upper margin", "skewed"),
    (f"claim of {CLAIM_CHECKS} checks: Holm", "skewed"),
    ("mean: paired t", "ceiling"),
    ("non-inferiority: one-sided t at margin", "ceiling"),
    ("equivalence: TOST at lower margin", "ceiling"),
}


def known(r: dict) -> bool:
    """A row in :data:`KNOWN_OVER` (a stated limit, not a surprise)."""
    return (r["rule"], r["shape"]) in KNOWN_OVER


def too_high(r: dict, k: float = 3.0) -> bool:
    """A null row whose false-verdict rate exceeds alpha by more than k standard errors (the
    SE at alpha, so a rate of 0 in few studies is not flattered)."""
    se = math.sqrt(r["alpha"] * (1 - r["alpha"]) / r["studies"])
    return r["truth"] == "null" and r["rate"] > r["alpha"] + k * se


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table; null rows over alpha + 3 SE are marked."""
    lines = [
        "| rule | shape | n | truth | alpha | rate (SE) | studies |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        mark = (" **over (known limit)**" if known(r) else " **over**") if too_high(r) else ""
        lines.append(
            f"| {r['rule']} | {r['shape']} | {r['n']} | {r['truth']} | {r['alpha']:g} | "
            f"{r['rate']:.3f} ({r['se']:.3f}){mark} | {r['studies']} |"
        )
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    """One line per (rule, shape): the worst null rate over n (with its n and SE) against
    alpha, and the power at the largest effect at n = 10 (or the largest n with one)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["rule"], r["shape"]), []).append(r)
    lines = [
        "| rule | shape | alpha | worst null rate (SE) at n | power (effect, n) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for (rule, shape), rs in groups.items():
        nulls = [r for r in rs if r["truth"] == "null"]
        if nulls:
            w = max(nulls, key=lambda r: (r["rate"] - r["alpha"]) / max(r["se"], 1e-9))
            mark = ""
            if too_high(w):
                mark = " (known limit)" if known(w) else " **over**"
            worst = f"{w['rate']:.3f} ({w['se']:.3f}) at {w['n']}{mark}"
            alpha = f"{w['alpha']:g}"
        else:
            worst, alpha = "-", f"{rs[0]['alpha']:g}"
        effects = [r for r in rs if r["truth"].startswith("effect=")]
        if effects:
            top = max(effects, key=lambda r: (float(r["truth"][7:]), r["n"] == 10, r["n"]))
            power = f"{top['rate']:.2f} ({top['truth']}, n={top['n']})"
        else:
            power = "-"
        lines.append(f"| {rule} | {shape} | {alpha} | {worst} | {power} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small grid, under a minute")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument(
        "--report-only", action="store_true", help="leave out calibration_study.py's rows"
    )
    parser.add_argument(
        "--table-from", type=Path, help="print the summary table of a saved JSON and exit"
    )
    parser.add_argument("--json", type=Path, help="write the rows with machine, date, command")
    args = parser.parse_args(argv)
    if args.table_from is not None:
        if not args.table_from.is_file():
            print(f"--table-from: no such file {args.table_from}", file=sys.stderr)
            return 2
        doc = json.loads(args.table_from.read_text())
        print(f"{doc['command']} ({doc['date']}, {doc['machine']['cpu']})\n")
        print(summary_table(doc["rows"]))
        return 0
    if args.json is not None and not args.json.parent.is_dir():
        print(f"--json: no such folder {args.json.parent}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = run(args.quick, args.seed, study=not args.report_only)
    seconds = time.perf_counter() - start
    print(table(rows))
    over = [r for r in rows if too_high(r)]
    surprises = [r for r in over if not known(r)]
    print(
        f"\n{len(rows)} rows in {seconds:.1f} s; {len(over)} null rows above alpha + 3 SE, "
        f"{len(surprises)} of them outside the known limits"
    )
    if args.json is not None:
        write_results(args.json, "benchmarks/calibration.py", argv, seed=args.seed,
                      quick=args.quick, seconds=seconds, rows=rows)  # fmt: skip
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
