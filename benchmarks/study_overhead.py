"""Orchestration overhead of a study: wall time of Tune's loop against the trials' own time.

    python benchmarks/study_overhead.py [--seeds 4] [--epochs N] [--batches N]

Runs a copying smoke study (two h-detach configurations sharing one vanilla baseline; by
default with the smoke preset's own trial length) on the embedded local Ray in a temporary
directory, then prints the wall time of ``tuner.fit()``, the
sum of the trials' ``time_total_s`` (everything a trial does: data, model, training,
evaluation, checkpoints) and the overhead: ``1 - sum(trial time) / (concurrency x wall)``,
the share of the available trial slots not spent inside trials (scheduling, process start,
MLflow logging from the driver, idle slots at the end). Ray's own start-up is printed apart.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from study.options import StudyOptions
from study.run import run_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, help="override the preset's 12 epochs")
    parser.add_argument("--batches", type=int, help="override the preset's 250 minibatches")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    for name in ("seeds", "epochs", "batches"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    with tempfile.TemporaryDirectory(prefix="hdetach-overhead-") as tmp:
        options = StudyOptions(
            task="copying",
            preset="smoke",
            search="fixed",
            configs=[
                {"p_detach": 0.25, "lr": 0.01, "clip": True},
                {"p_detach": 0.5, "lr": 0.01, "clip": True},
            ],
            seeds=args.seeds,
            epochs=args.epochs,
            set={} if args.batches is None else {"batches_per_epoch": args.batches},
            tracking_uri=f"sqlite:///{tmp}/mlflow.db",
            storage_path=f"{tmp}/runs",
            experiment="overhead",
            verbose=0,
        ).validate()
        start = time.perf_counter()
        result = run_study(options)
        total = time.perf_counter() - start

    busy = sum(result.trial_seconds)
    capacity = result.concurrency * result.fit_seconds
    figures = {
        "trials": len(result.trial_seconds),
        "concurrency": result.concurrency,
        "mean_trial_s": busy / max(1, len(result.trial_seconds)),
        "sum_trial_s": busy,
        "fit_wall_s": result.fit_seconds,
        "overhead": 1 - busy / capacity,
        "startup_s": total - result.fit_seconds,
        "mlflow_logging_s": result.logging_seconds,
    }
    print(
        f"{figures['trials']} trials of ~{figures['mean_trial_s']:.1f} s on {result.concurrency} "
        f"slots: sum of trial time {busy:.1f} s, tuner.fit() wall {result.fit_seconds:.1f} s "
        f"-> overhead {100 * figures['overhead']:.1f}% of the slot time "
        f"(Ray start-up, validation and summary outside the loop: {figures['startup_s']:.1f} s)"
    )
    print(
        f"of which the driver spent {result.logging_seconds:.1f} s writing to MLflow "
        f"({100 * result.logging_seconds / result.fit_seconds:.1f}% of the wall time)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
