"""Why the t-based rules carry no skewness guard: Cochran's rule as a gate, measured.

Cochran's rule (n >= 25 G1^2, ``pairedstats.tests.skew_ok``) used as a gate on every paired t
verdict brings the ceiling-piled shape back under alpha, but the sample skewness at 5-20
pairs is so noisy that it also withholds verdicts on normal and symmetric heavy-tailed
differences, and power falls by a third to a half. This script measures both sides on the
shapes of ``benchmarks/shapes.py``: per shape and n, the paired t-test's false-verdict rate
(two-sided 0.05, and its larger one-sided tail at 0.025) and power at a 1-SD effect, with and
without the gate. ``docs/statistics.md`` quotes its results file.

Usage::

    python benchmarks/skew_guard.py --json benchmarks/results/skew_guard.json
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.shapes import SHAPES  # noqa: E402
from benchmarks.tally import row, write_results  # noqa: E402
from pairedstats import tests  # noqa: E402

NS = (5, 10, 20)
STUDIES = 10_000


def rows(studies: int = STUDIES, seed: int = 3) -> list[dict]:
    """Per shape, n and gate: the null rows (two-sided, worst one-sided tail) and power."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, draw in SHAPES.items():
        for n in NS:
            for truth, effect in (("null", 0.0), ("effect=1", 1.0)):
                a, b = draw(rng, studies, n, effect)
                d = a - b
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    lo = tests.mean_pvalue(d, alternative="less")
                    hi = tests.mean_pvalue(d, alternative="greater")
                ok = tests.skew_ok(d)
                for gate, keep in (("paired t", True), ("paired t, Cochran gate", ok)):
                    two = (np.minimum(lo, hi) < 0.025) & keep
                    out.append(row(gate, shape, n, 0.05, truth, two, n))
                    if truth == "null":
                        low, high = (lo < 0.025) & keep, (hi < 0.025) & keep
                        worse = low if low.mean() >= high.mean() else high
                        out.append(row(f"{gate}, worse tail", shape, n, 0.025, truth, worse))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the rows with machine, date, command")
    parser.add_argument("--studies", type=int, default=STUDIES)
    args = parser.parse_args(argv)
    if args.json is not None and not args.json.parent.is_dir():
        print(f"--json: no such folder {args.json.parent}", file=sys.stderr)
        return 2
    got = rows(args.studies)
    print(
        "| rule | shape | n | truth | alpha | rate (SE) |\n| --- | --- | ---: | --- | ---: | ---: |"
    )
    for r in got:
        rule, shape, n, truth = r["rule"], r["shape"], r["n"], r["truth"]
        print(
            f"| {rule} | {shape} | {n} | {truth} | {r['alpha']} | {r['rate']:.3f} ({r['se']:.3f}) |"
        )
    if args.json is not None:
        write_results(args.json, "benchmarks/skew_guard.py", argv, rows=got)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
