"""Report benchmark: load -> statistics -> claims -> HTML for a study of 10,000 runs.

Builds a synthetic study (every configuration the claims look at, seeds shared across arms,
``--epochs`` epochs of history per run), writes it in the export's Parquet format with
``dashboards.export.write_frames`` (not through MLflow), then times each stage of the report
on it. The target is under 60 s on a 2-core machine at the defaults.

    python benchmarks/report.py [--runs 10000] [--epochs 200] [--out DIR] [--keep]
        [--resamples 2000] [--json timings.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

from benchmarks.tally import cpu_name  # noqa: E402
from dashboards import export, report  # noqa: E402
from trainables.contract import EPOCH_METRICS  # noqa: E402

EXPERIMENT = "bench-synthetic"
TRANSFER_DELAYS = (200, 400, 500, 1000, 2000, 5000)

# (task, arm, p_detach, c_detach, lr, clip, seq_len, final-accuracy mean, its spread,
#  divergence probability). Roughly the paper's picture: h-detach helps on long copying and
#  pMNIST, c-detach fails, vanilla is unstable without clipping.
CONFIGS = [
    ("copying", "vanilla", 0.0, 0.0, 1e-3, True, 100, 0.97, 0.03, 0.0),
    ("copying", "h-detach", 0.25, 0.0, 1e-3, True, 100, 0.995, 0.004, 0.0),
    ("copying", "h-detach", 0.5, 0.0, 1e-3, True, 100, 0.99, 0.01, 0.0),
    ("copying", "c-detach", 0.0, 0.5, 1e-3, True, 100, 0.35, 0.05, 0.0),
    ("copying", "vanilla", 0.0, 0.0, 1e-3, True, 300, 0.7, 0.12, 0.0),
    ("copying", "h-detach", 0.25, 0.0, 1e-3, True, 300, 0.98, 0.03, 0.0),
    ("copying", "h-detach", 0.5, 0.0, 1e-3, True, 300, 0.9, 0.08, 0.0),
    ("copying", "vanilla", 0.0, 0.0, 1e-3, False, 100, 0.8, 0.15, 0.3),
    ("copying", "h-detach", 0.25, 0.0, 1e-3, False, 100, 0.95, 0.05, 0.05),
    *[
        ("seq_mnist", arm, p, 0.0, lr, True, 784, acc, 0.004, 0.0)
        for arm, p, shift in (("vanilla", 0.0, 0.0), ("h-detach", 0.25, 0.001))
        for lr, acc in ((1e-3, 0.985 + shift), (5e-4, 0.982 + shift), (1e-4, 0.97 + 3 * shift))
    ],
    ("seq_mnist", "vanilla", 0.0, 0.0, 1e-3, False, 784, 0.95, 0.05, 0.25),
    ("seq_mnist", "h-detach", 0.25, 0.0, 1e-3, False, 784, 0.97, 0.03, 0.05),
    *[
        ("pmnist", arm, p, 0.0, lr, True, 784, acc, 0.006, 0.0)
        for arm, p, shift in (("vanilla", 0.0, 0.0), ("h-detach", 0.25, 0.012))
        for lr, acc in ((1e-3, 0.91 + shift), (5e-4, 0.905 + shift), (1e-4, 0.88 + shift))
    ],
]


def synthetic_study(n_runs: int, n_epochs: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(runs, history)`` frames in the export's schema: ``n_runs`` runs spread evenly over
    :data:`CONFIGS` (seeds 0..S-1 in every configuration), ``n_epochs`` epochs each."""
    rng = np.random.default_rng(seed)
    n_cfg = len(CONFIGS)
    per_config = max(1, n_runs // n_cfg)
    rows = []
    for c, (task, arm, p, cd, lr, clip, seq_len, mean, spread, p_div) in enumerate(CONFIGS):
        for s in range(per_config if c >= n_runs % n_cfg else per_config + 1):
            if len(rows) >= n_runs:
                break
            rows.append(
                {
                    "task": task,
                    "config_id": f"cfg{c:02d}",
                    "run_id": f"run-{c:02d}-{s:05d}",
                    "arm": arm,
                    "p_detach": p,
                    "c_detach": cd,
                    "damp": 0.0,
                    "lr": lr,
                    "clip": clip,
                    "clip_norm": 1.0,
                    "seq_len": seq_len,
                    "seed": s,
                    "epochs": n_epochs,
                    "threshold": 0.99 if task == "copying" else 0.97,
                    "_mean": mean,
                    "_spread": spread,
                    "_div": p_div,
                }
            )
    runs = pd.DataFrame(rows)
    n = len(runs)
    final = np.clip(rng.normal(runs["_mean"], runs["_spread"]), 0.05, 1.0)
    diverged = rng.random(n) < runs["_div"].to_numpy()
    div_epoch = np.where(diverged, rng.integers(2, max(3, n_epochs), size=n), 0)
    last = np.where(diverged, div_epoch, n_epochs)
    # Logistic learning curves: the time to learn varies by seed, h-detach learns sooner.
    speed = np.where(runs["arm"].eq("h-detach"), 0.7, 1.0) * rng.uniform(0.1, 0.35, size=n)
    epochs = np.arange(1, n_epochs + 1)
    curve = final[:, None] / (1 + np.exp(-(epochs[None, :] - speed[:, None] * n_epochs) / 4))
    curve = np.clip(curve + rng.normal(0, 0.005, size=curve.shape), 0, 1)
    alive = epochs[None, :] <= last[:, None]
    curve = np.where(alive, curve, np.nan)
    best = np.nanmax(curve, axis=1)
    best_epoch = np.nanargmax(curve, axis=1) + 1
    thr = runs["threshold"].to_numpy()
    hit = curve >= thr[:, None]
    ett = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, np.nan)

    runs["best_val_acc"] = best
    runs["best_epoch"] = best_epoch.astype(float)
    runs["test_acc_at_best"] = np.where(
        runs["task"].eq("copying"), np.nan, best - np.abs(rng.normal(0, 0.002, size=n))
    )
    runs["epochs_to_threshold"] = ett
    runs["diverged"] = diverged
    runs["diverged_epoch"] = np.where(diverged, div_epoch, np.nan).astype(float)
    runs["censored"] = False
    runs["last_epoch"] = last
    runs["epochs_logged"] = last
    grad = rng.lognormal(0.5, 0.6, size=n) * np.where(runs["clip"], 1.0, 30.0)
    runs["max_grad_norm"] = np.where(diverged, np.inf, grad)
    runs["status"] = "FINISHED"
    copy100 = runs["task"].eq("copying") & runs["seq_len"].eq(100)
    for k, delay in enumerate(TRANSFER_DELAYS):
        decay = np.exp(-(k + 1) * np.where(runs["arm"].eq("h-detach"), 0.12, 0.3))
        runs[f"transfer_acc_T{delay}"] = np.where(
            copy100, np.clip(best * decay + rng.normal(0, 0.03, size=n), 0, 1), np.nan
        )
    runs = runs.drop(columns=["_mean", "_spread", "_div"])

    run_index, epoch_index = np.nonzero(alive)
    history = pd.DataFrame(
        {
            "run_id": runs["run_id"].to_numpy()[run_index],
            "epoch": epochs[epoch_index].astype(np.int64),
        }
    )
    values = {
        "val_acc": curve[run_index, epoch_index],
        "train_loss": 2.0 * (1 - curve[run_index, epoch_index]) + 0.01,
        "val_loss": 2.1 * (1 - curve[run_index, epoch_index]) + 0.02,
        "grad_norm": rng.lognormal(0, 0.3, size=run_index.size),
        "grad_norm_max": rng.lognormal(0.3, 0.3, size=run_index.size),
        "detached_fraction": runs["p_detach"].to_numpy()[run_index],
        "epoch_seconds": rng.uniform(1, 2, size=run_index.size),
    }
    for key in EPOCH_METRICS:
        history[key] = values[key]
    return runs, history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=2_000, help="bootstrap resamples")
    parser.add_argument("--out", type=Path, help="work directory (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, help="also write the timings here")
    args = parser.parse_args(argv)
    if args.runs < len(CONFIGS) or args.epochs < 2:
        parser.error(f"--runs must be >= {len(CONFIGS)} and --epochs >= 2")

    work = args.out or Path(tempfile.mkdtemp(prefix="report-bench-"))
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        runs, history = synthetic_study(args.runs, args.epochs)
        timings["generate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        export.write_frames(work / "data", EXPERIMENT, runs, history)
        timings["write parquet"] = time.perf_counter() - t0

        start = time.perf_counter()
        runs, history = export.load(work / "data", EXPERIMENT)
        timings["load"] = time.perf_counter() - start
        built = report.build_report(
            runs,
            history,
            work / "report",
            experiment=EXPERIMENT,
            n_resamples=args.resamples,
            benchmarks={"backward_time_ratio": 0.8},
        )
        timings.update({f"report: {k}": v for k, v in built.seconds.items()})
        total = time.perf_counter() - start
        size_mb = built.html.stat().st_size / 1e6
        images = built.html.read_text(encoding="utf-8").count("<img ")
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"report benchmark: {len(runs)} runs x {args.epochs} epochs ({len(history)} history rows)"
    )
    print(f"machine: {cpu_name()}, python {platform.python_version()}")
    for name, seconds in timings.items():
        print(f"  {name:<28} {seconds:7.2f} s")
    print(f"  {'load -> HTML total':<28} {total:7.2f} s  (target < 60 s)")
    print(f"  HTML: {size_mb:.1f} MB, {images} figures")
    if args.keep or args.out is not None:
        print(f"  report: {built.html}")
    if args.json:
        # Where the figures come from, as every results file under benchmarks/results records.
        machine = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpu": cpu_name(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "command": "python benchmarks/report.py " + " ".join(argv or sys.argv[1:]),
        }
        payload = {"machine": machine, "runs": len(runs), "epochs": args.epochs}
        args.json.write_text(json.dumps({**payload, "total_s": total, **timings}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
