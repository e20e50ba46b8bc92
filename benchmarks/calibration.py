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

Every t verdict (mean, time, equivalence, non-inferiority, the claim's Holm step) passes the
shape gate of ``pairedstats.shape`` first: each simulated study holds POOL comparisons of the
metric from the same shape, and the check's verdict stands only when its n pairs reach what
their pooled skewness asks for. Two rows show the gate's reach: the gate on the check's own
pairs alone (a report with one comparison of the metric), and the bare t without the gate,
a reference row (``reference``) that no rule uses and the test does not hold to alpha.

Usage::

    python benchmarks/calibration.py --quick                 # under a minute
    python benchmarks/calibration.py --json benchmarks/results/calibration_<date>.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.shapes import SHAPES  # noqa: E402
from benchmarks.tally import reference, row, too_high, write_results  # noqa: E402
from pairedstats import shape, tests, worstcase  # noqa: E402

ALPHA = 0.05
#: the margin rules decide on a 95% interval inside / above the margin: each one-sided t-test
#: at 0.025 (what the report's 95% CI shows)
MARGIN_ALPHA = 0.025
#: equivalence / non-inferiority margin, in SDs of the differences
MARGIN_SD = 0.5
CLAIM_CHECKS = 12
#: comparisons of one metric whose paired differences pool into the shape gate's skewness
#: (a claim's checks or a study's configurations on that metric; the report pools every
#: comparison with the baseline in the data)
POOL = 12
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


def report_rules(rng, draw, kind, n, studies, effect, patterns) -> list[dict]:
    """The report's rules on one shape and n: null rows (effect None) or power rows.

    Each study holds POOL comparisons of one metric drawn from the same shape (a claim's or
    a study's checks on that metric); the first is the check judged, all of them form the
    pool whose skewness gates its t verdicts (``pairedstats.shape``)."""
    truth = "null" if effect is None else f"effect={effect:g}"
    pa, pb = draw(rng, studies * POOL, n, effect or 0.0)
    pa, pb = pa.reshape(studies, POOL, n), pb.reshape(studies, POOL, n)
    a, b = pa[:, 0], pb[:, 0]
    gate = shape.allows(n, shape.pooled_skewness(pa - pb))
    own = shape.allows(n, shape.pooled_skewness((a - b)[:, None, :]))
    xa, xb = (a, b) if effect is not None else swapped(rng, a, b)
    t_mean = tests.mean_pvalue(a - b) < ALPHA
    out = [
        row("mean: paired t, shape gate", kind, n, ALPHA, truth, t_mean & gate, n),
        row("mean: paired t, shape gate on the check's own pairs", kind, n, ALPHA,
            truth, t_mean & own, n),
        row("mean: paired t, no gate (for comparison)", kind, n, ALPHA, truth,
            t_mean, n, reference=True),
        row("P(A>B): exact sign test", kind, n, ALPHA, truth,
            tests.prob_better_pvalue(xa, xb) < ALPHA, n),
        row("rate: exact McNemar", kind, n, ALPHA, truth,
            tests.mcnemar_pvalue(*flags(xa, xb)) < ALPHA, n),
    ]  # fmt: skip
    wa, wb = draw(rng, studies * WORST_LRS, n, effect or 0.0)
    p_worst = worstcase.worst_case_pvalue(wa.reshape(studies, WORST_LRS, n),
                                          wb.reshape(studies, WORST_LRS, n))  # fmt: skip
    out.append(row(f"worst of {WORST_LRS} learning rates: t/Bonferroni", kind, n,
                   ALPHA, truth, p_worst < ALPHA, n))  # fmt: skip
    if effect is None:  # the time rule's null: arms swapped within pairs, in every group
        s = rng.random(pa.shape) < 0.5
        pa, pb = np.where(s, pb, pa), np.where(s, pa, pb)
    (ta, ea), (tb, eb) = epochs(pa), epochs(pb)
    saved = tests.restricted_times(tb, eb, TIME_BUDGET) - tests.restricted_times(
        ta, ea, TIME_BUDGET
    )
    p_time = tests.time_pvalue(ta[:, 0], ea[:, 0], tb[:, 0], eb[:, 0], TIME_BUDGET)
    time_gate = shape.allows(n, shape.pooled_skewness(saved))
    out.append(row("time: paired t, restricted mean, shape gate", kind, n, ALPHA,
                   truth, (p_time < ALPHA) & time_gate, n))  # fmt: skip
    if effect is None:  # a spread effect is not a mean shift: no power rows for it here
        p_spread = tests.spread_pvalue(xa, xb, max_patterns=patterns)
        out.append(row("spread: swap randomisation", kind, n, ALPHA, truth,
                       p_spread < ALPHA, n))  # fmt: skip
        m = margin_of(draw)
        d = a - b  # true mean 0: shifted onto each margin, the null's worst case
        for side, shift in (("upper", m), ("lower", -m)):
            p = tests.tost_pvalue(d + shift, -m, m)
            out.append(row(f"equivalence: TOST at {side} margin, shape gate", kind,
                           n, MARGIN_ALPHA, truth, (p < MARGIN_ALPHA) & gate, n))  # fmt: skip
        p_ni = tests.noninferiority_pvalue(d - m, m)
        out.append(row("non-inferiority: one-sided t at margin, shape gate", kind, n,
                       MARGIN_ALPHA, truth, (p_ni < MARGIN_ALPHA) & gate, n))  # fmt: skip
    return out


def claim_rule(rng, draw, kind, n, studies) -> dict:
    """A claim of CLAIM_CHECKS null checks on one metric, "contradicted" when Holm keeps any
    check whose effect points against the claim and the shape gate (pooled over the claim's
    checks) lets its t verdict through. Holm rejects anything iff its smallest p-value is
    below alpha / m (``tests/pairedstats`` holds this against ``multiplicity.adjust``)."""
    a, b = draw(rng, studies * CLAIM_CHECKS, n, 0.0)
    d = (a - b).reshape(studies, CLAIM_CHECKS, n)
    p = tests.mean_pvalue(d)
    against = np.where(d.mean(axis=-1) < 0, p, np.inf)
    gate = shape.allows(n, shape.pooled_skewness(d))
    contradicted = (np.min(against, axis=-1) < ALPHA / CLAIM_CHECKS) & gate
    rule = f"claim of {CLAIM_CHECKS} checks: Holm, shape gate"
    return row(rule, kind, n, ALPHA, "null", contradicted, n)


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
    for kind, draw in (shapes or SHAPES).items():
        for n in grid["n"]:
            out += report_rules(rng, draw, kind, n, grid["null"], None, grid["patterns"])
            out.append(claim_rule(rng, draw, kind, n, grid["null"] // 4))
            for effect in EFFECTS:
                out += report_rules(rng, draw, kind, n, grid["effect"], effect, grid["patterns"])
    return out + (study_rows(quick, seed) if study else [])


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table; null rows over alpha + 3 SE are marked."""
    lines = [
        "| rule | shape | n | truth | alpha | rate (SE) | studies |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        mark = (
            (" over (reference, not a rule)" if reference(r) else " **over**")
            if too_high(r)
            else ""
        )
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
    for (rule, kind), rs in groups.items():
        nulls = [r for r in rs if r["truth"] == "null"]
        if nulls:
            w = max(nulls, key=lambda r: (r["rate"] - r["alpha"]) / max(r["se"], 1e-9))
            mark = ""
            if too_high(w):
                mark = " (reference, not a rule)" if reference(w) else " **over**"
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
        lines.append(f"| {rule} | {kind} | {alpha} | {worst} | {power} |")
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
    rules = [r for r in over if not reference(r)]
    print(
        f"\n{len(rows)} rows in {seconds:.1f} s; {len(over)} null rows above alpha + 3 SE, "
        f"{len(rules)} of them decision rules ({len(over) - len(rules)} reference rows)"
    )
    if args.json is not None:
        write_results(args.json, "benchmarks/calibration.py", argv, seed=args.seed,
                      quick=args.quick, seconds=seconds, rows=rows)  # fmt: skip
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
