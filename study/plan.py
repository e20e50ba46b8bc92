"""``hdetach-study plan``: how many seeds a study needs, from a pilot study.

    hdetach-study plan --experiment PILOT [--tracking-uri sqlite:///mlflow.db]
        [--metric best_val_acc] [--effect 0.02] [--power 0.8] [--alpha 0.05]
        [--min-seeds 8 --seed-block 4 --max-seeds 32] [--json plan.json]
    hdetach-study plan --gpu-check benchmarks/results/gpu_cost_h200_2026-12-04.json

For every h-detach configuration of the pilot with its paired vanilla baseline: the paired
differences of the metric (seed by seed), their mean and standard deviation, then

* a fixed design: the seeds per arm a two-sided paired t-test at ``alpha`` needs to detect
  the effect (``--effect``, default the pilot's observed mean difference) with ``--power``
  (``pairedstats.power.paired_seeds_needed``, the power function the report uses too);
* the sequential design of ``--seeds auto`` (``study/sequential.py``) with the given looks:
  its power and its expected seeds for that effect, by running the design itself on 400
  simulated studies of normal differences with the pilot's spread;
* the compute of each: seeds x 2 arms x the pilot's trial seconds per seed;
* the shape gate (``pairedstats.shape``): the pooled skewness of every configuration's paired
  differences in the pilot and the pairs a t verdict needs at it. The fixed design asks for
  at least that many seeds, and the sequential simulation gates its looks with it, as the
  study will.

``--gpu-check FILE`` prices the paper-scale verdicts instead (C1, C2 and C5 at 32 seeds per
arm, both arms, training only) from a GPU check's measured step times
(``benchmarks/gpu_check.py`` writes them, through ``trainables.kernels.cost.verdict_gpu_hours``):
the GPU-hours of each verdict with each engine the check timed, the same figures its JSON holds.

Nothing is written to MLflow. An unknown experiment, one without paired runs, or bad values
exit with code 2 and one line.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from pairedstats.power import paired_seeds_needed
from pairedstats.shape import Shape
from study import sequential as seq
from study.searcher import paired_differences
from trainables.config import OneLineParser
from trainables.contract import (
    BASELINE_TAG,
    CHILD,
    LOWER_IS_BETTER,
    PARENT,
    seconds_per_seed,
    study_hours,
)
from trainables.tracking_uri import TrackingError, check_tracking_uri


class PlanError(ValueError):
    """A problem the user can fix (exit code 2)."""


def _parser() -> OneLineParser:
    p = OneLineParser(prog="hdetach-study plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", help="the pilot study's MLflow experiment")
    p.add_argument(
        "--gpu-check", type=Path, help="price the paper's verdicts from this GPU check's JSON"
    )
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument("--metric", default="best_val_acc", help="final metric of each seed")
    p.add_argument("--effect", type=float, help="difference to detect (default: observed)")
    p.add_argument("--power", type=float, default=0.8)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--min-seeds", type=int, default=8)
    p.add_argument("--seed-block", type=int, default=4)
    p.add_argument("--max-seeds", type=int, default=32)
    p.add_argument("--alpha-spending", choices=seq.SPENDING, default="pocock")
    p.add_argument("--json", type=Path, help="write the plan here too")
    return p


def plan(args) -> list[dict]:
    """One row per h-detach configuration of the pilot (see the module docstring)."""
    from study.tracking import StudyTracker

    if not 0 < args.power < 1:
        raise PlanError(f"power must be in (0, 1), got {args.power}")
    if args.effect is not None and (not math.isfinite(args.effect) or args.effect == 0):
        raise PlanError(f"effect must be a non-zero number, got {args.effect}")
    try:
        design = seq.SequentialDesign(
            min_seeds=args.min_seeds, seed_block=args.seed_block, max_seeds=args.max_seeds,
            alpha=args.alpha, spending=args.alpha_spending,
        )  # fmt: skip
    except ValueError as err:
        raise PlanError(str(err)) from None
    check_tracking_uri(args.tracking_uri)
    if args.tracking_uri.startswith("sqlite:///"):  # reading must not create a database
        path = Path(args.tracking_uri[len("sqlite:///") :])
        if not path.is_file():
            raise PlanError(f"no MLflow database at {path} (--tracking-uri)")
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(args.tracking_uri).get_experiment_by_name(args.experiment)
    if experiment is None:
        raise PlanError(f"no experiment {args.experiment!r} on {args.tracking_uri}")
    tracker = StudyTracker(args.tracking_uri, args.experiment)
    tracker.start()
    children: dict[str, dict[int, object]] = {}
    for child in tracker.find_runs(CHILD):
        if child.status == "FINISHED" and child.seed is not None:
            children.setdefault(child.config_id, {})[child.seed] = child
    rows, diffs = [], []
    higher = args.metric not in LOWER_IS_BETTER
    for parent in tracker.find_runs(PARENT):
        base = parent.tags.get(BASELINE_TAG)
        if not base or base not in children or parent.config_id not in children:
            continue
        mine, theirs = children[parent.config_id], children[base]
        seeds = sorted(set(mine) & set(theirs))
        if len(seeds) < 2:
            continue
        d = paired_differences(
            [mine[s].metrics.get(args.metric, math.nan) for s in seeds],
            [theirs[s].metrics.get(args.metric, math.nan) for s in seeds],
            higher_is_better=higher,
        )
        diffs.append(d)
        mean, sd = float(d.mean()), float(d.std(ddof=1))
        effect = abs(args.effect) if args.effect is not None else abs(mean)
        per_seed = _seconds_per_seed([*(mine[s] for s in seeds), *(theirs[s] for s in seeds)])
        row = {
            "config_id": parent.config_id,
            "baseline": base,
            "pairs": len(seeds),
            "mean_difference": mean,
            "sd_difference": sd,
            "effect": effect,
            "seconds_per_seed": per_seed,
        }
        rows.append(row)
    if not rows:
        raise PlanError(
            f"experiment {args.experiment!r} has no h-detach configuration with two or more "
            "finished seeds paired with its baseline"
        )
    shape = Shape.of(diffs)
    gate = shape.needed()
    for row in rows:
        row.update(pilot_skewness=None if math.isnan(shape.gamma) else shape.gamma,
                   pilot_pooled_values=shape.values, gate_pairs_needed=gate)  # fmt: skip
        effect, sd = row["effect"], row["sd_difference"]
        if not (effect > 0 and sd > 0):
            continue
        needed = paired_seeds_needed(effect, sd, alpha=args.alpha, power=args.power)
        n_fixed = needed.seeds
        if n_fixed is not None and gate is not None:
            n_fixed = max(n_fixed, gate)
        sim = seq.simulate(design, effect, sd, studies=400, seed=0, gamma=shape.gamma)
        row.update(
            power_seeds=needed.seeds,
            fixed_seeds=n_fixed,
            fixed_seeds_capped=needed.capped,
            fixed_seeds_reason=needed.reason,
            fixed_hours=None if n_fixed is None else study_hours(n_fixed, row["seconds_per_seed"]),
            sequential_power=sim.better_rate,
            sequential_mean_seeds=sim.mean_seeds,
            sequential_hours=study_hours(sim.mean_seeds, row["seconds_per_seed"]),
        )
    return rows


def _seconds_per_seed(runs) -> float:
    """Trial seconds per seed: a child's epochs x its last epoch time, over its members."""
    costs = []
    for run in runs:
        epoch = run.metrics.get("epoch_seconds")
        members = float(run.params.get("members_per_trial", 1) or 1)
        if epoch is not None and math.isfinite(epoch):
            costs.append(seconds_per_seed(epoch, run.last_epoch, members))
    return float(np.mean(costs)) if costs else math.nan


def format_plan(rows: list[dict], args) -> str:
    lines = [
        f"Seeds per arm to detect the effect in {args.metric} (two-sided alpha {args.alpha}, "
        f"power {args.power}); sequential design: looks at "
        f"{seq.SequentialDesign(args.min_seeds, args.seed_block, args.max_seeds).looks}",
        f"{'configuration':<30} {'pairs':>5} {'mean diff':>9} {'sd':>7} {'effect':>7} "
        f"{'fixed':>6} {'hours':>7} {'seq. mean':>9} {'power':>6} {'hours':>7}",
    ]
    for r in rows:
        if "fixed_seeds" not in r:
            lines.append(
                f"{r['config_id']:<30} {r['pairs']:>5} {r['mean_difference']:>+9.4f} "
                f"{r['sd_difference']:>7.4f}   no effect or no spread: give --effect"
            )
            continue
        fixed = "-" if r["fixed_seeds"] is None else str(r["fixed_seeds"])
        if r.get("fixed_seeds_capped"):
            fixed = f">{r['fixed_seeds']}"
        lines.append(
            f"{r['config_id']:<30} {r['pairs']:>5} {r['mean_difference']:>+9.4f} "
            f"{r['sd_difference']:>7.4f} {r['effect']:>7.4f} {fixed:>6} "
            f"{_hours(r['fixed_hours']):>7} {r['sequential_mean_seeds']:>9.1f} "
            f"{r['sequential_power']:>6.2f} {_hours(r['sequential_hours']):>7}"
        )
    lines.append("hours: both arms, from the pilot's trial seconds per seed")
    gate = rows[0].get("gate_pairs_needed")
    skew = rows[0].get("pilot_skewness")
    if skew is not None:
        lines.append(
            f"shape gate: the pilot's differences have pooled skewness {skew:.2f} over "
            f"{rows[0]['pilot_pooled_values']} pairs, so a t verdict needs {gate} pairs "
            "(fixed: at least that many; sequential: looks gated with it)"
        )
    return "\n".join(lines)


def _hours(value) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def gpu_verdict_hours(path: Path) -> dict[str, dict]:
    """The GPU-hours of the paper's verdicts in a GPU check's JSON (its ``cost.gpu_hours``:
    per claim, the verdict's budget and the hours with each timed engine)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PlanError(f"--gpu-check {path}: {err}") from None
    hours = (data.get("cost") or {}).get("gpu_hours") if isinstance(data, dict) else None
    if not hours:
        raise PlanError(
            f"--gpu-check {path}: no cost.gpu_hours in it (a benchmarks/gpu_check.py JSON; "
            "price an older one with gpu_check.py --cost-of)"
        )
    return hours


def format_gpu_hours(hours: dict[str, dict], path: Path) -> str:
    lines = [f"Paper-scale verdicts priced from {path} (training only, both arms):"]
    for claim, v in hours.items():
        budget = (
            f"{v['seeds_per_arm']} seeds x {v['arms']} arms, {v['epochs']} epochs x "
            f"{v['batches_per_epoch']} batches, {v['time_steps']} time steps"
        )
        lines.append(f"  {claim}: {budget}")
        for engine, h in sorted(v["hours"].items(), key=lambda kv: kv[1]):
            lines.append(f"    {h:8.1f} GPU-hours  {engine}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.gpu_check is not None:
        try:
            hours = gpu_verdict_hours(args.gpu_check)
        except PlanError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
        print(format_gpu_hours(hours, args.gpu_check))
        if args.json:
            args.json.write_text(json.dumps(hours, indent=1))
        return 0
    if not args.experiment:
        parser.exit(2, f"{parser.prog}: error: --experiment (a pilot study) or --gpu-check\n")
    try:
        rows = plan(args)
    except (PlanError, TrackingError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(format_plan(rows, args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
