"""Nightly evidence: run fresh seeds of the configured studies, then report what changed.

    python study/nightly.py --config study/nightly.yaml [--dry-run]

Every night each batch of the configuration runs its configurations on the next ``seeds``
*unused* seeds of its experiment (one more than the largest seed any child run there has, so
evidence accumulates and never repeats a seed; every batch of an experiment gets the same new
seeds, so the arms stay paired). Then one report on all the experiments is written with
``--since latest``, so it says which verdicts changed and which intervals tightened.

A study is one experiment per task and copying delay (its configuration ids name p, lr and
clipping only), so give each such batch its own ``experiment``.

The configuration (see ``study/nightly.yaml``) is validated when it is read; a bad value exits
with code 2 and a one-line message naming it. Exit code 1: a batch or a report failed (the
others still ran) or another nightly holds the lock; 0: all went through.

The study itself runs through ``study.run.run_study`` (:func:`run_batch` is the one place that
knows that API). Scheduling: ``deploy/hdetach-nightly.{service,timer}`` or ``deploy/crontab``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import math
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.config import PRESETS, TASKS  # noqa: E402

SEARCHES = ("tpe", "grid", "fixed")
CONFIG_KEYS = ("p_detach", "lr", "clip")
_TOP_KEYS = {
    "tracking_uri",
    "experiment",
    "reports_dir",
    "storage_path",
    "data_dir",
    "download",
    "address",
    "seeds",
    "seeds_per_trial",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_concurrent",
    "benchmarks",
    "batches",
}
_BATCH_KEYS = {
    "task",
    "preset",
    "search",
    "trials",
    "configs",
    "experiment",
    "seeds",
    "seeds_per_trial",
    "epochs",
    "set",
}


DEFAULT_URI = "sqlite:///mlflow.db"  # unless the file or MLFLOW_TRACKING_URI says otherwise


class NightlyConfigError(ValueError):
    """A bad value in the nightly configuration; the message names it."""


@dataclass(frozen=True)
class Batch:
    """One study to extend tonight: a task, how to pick configurations, how many new seeds."""

    task: str
    preset: str
    search: str
    trials: int
    configs: tuple[dict[str, Any], ...] | None
    experiment: str
    seeds: int
    seeds_per_trial: int
    epochs: int | None = None
    set: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NightlyConfig:
    tracking_uri: str
    reports_dir: Path
    storage_path: str
    data_dir: str
    download: bool
    address: str | None
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None
    benchmarks: Path | None
    batches: tuple[Batch, ...]

    @property
    def experiments(self) -> list[str]:
        return list(dict.fromkeys(b.experiment for b in self.batches))


# --------------------------------------------------------------------------------------------
# Reading and validating the configuration


def _fail(where: str, problem: str, value: Any) -> NightlyConfigError:
    return NightlyConfigError(f"{where}: {problem}, got {value!r}")


def _int(where: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(where, f"must be an integer >= {minimum}", value)
    return value


def _number(where: str, value: Any, *, minimum: float, strict: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        raise _fail(where, f"must be a number {'>' if strict else '>='} {minimum:g}", value)
    return float(value)


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, "must be non-empty text", value)
    return value


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, "must be true or false", value)
    return value


def _config(where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise _fail(where, "must be a mapping {p_detach, lr, clip}", raw)
    unknown = sorted(set(raw) - set(CONFIG_KEYS))
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", f"unknown key (use {', '.join(CONFIG_KEYS)})", raw)
    missing = [k for k in CONFIG_KEYS if k not in raw]
    if missing:
        raise _fail(where, f"needs {', '.join(missing)}", dict(raw))
    p = _number(f"{where}.p_detach", raw["p_detach"], minimum=0.0)
    if p > 1.0:
        raise _fail(f"{where}.p_detach", "must be in [0, 1]", raw["p_detach"])
    return {
        "p_detach": p,
        "lr": _number(f"{where}.lr", raw["lr"], minimum=0.0, strict=True),
        "clip": _bool(f"{where}.clip", raw["clip"]),
    }


def _batch(i: int, raw: Any, top: Mapping[str, Any]) -> Batch:
    where = f"batches[{i}]"
    if not isinstance(raw, Mapping):
        raise _fail(where, "must be a mapping", raw)
    unknown = sorted(set(raw) - _BATCH_KEYS)
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", "unknown key", raw[unknown[0]])
    task = raw.get("task")
    if task not in TASKS:
        raise _fail(f"{where}.task", f"must be one of {', '.join(TASKS)}", task)
    preset = raw.get("preset", "paper")
    if preset not in PRESETS:
        raise _fail(f"{where}.preset", f"must be one of {', '.join(PRESETS)}", preset)
    search = raw.get("search", "fixed")
    if search not in SEARCHES:
        raise _fail(f"{where}.search", f"must be one of {', '.join(SEARCHES)}", search)
    configs = raw.get("configs")
    if search == "fixed":
        if not isinstance(configs, list) or not configs:
            raise _fail(f"{where}.configs", "search 'fixed' needs a non-empty list", configs)
        configs = tuple(_config(f"{where}.configs[{k}]", c) for k, c in enumerate(configs))
    elif configs is not None:
        raise _fail(
            f"{where}.configs", f"only search 'fixed' takes configs, not '{search}'", configs
        )
    experiment = _text(f"{where}.experiment", raw.get("experiment", top.get("experiment")))
    seeds = _int(f"{where}.seeds", raw.get("seeds", top.get("seeds", 5)), 1)
    per_trial = _int(
        f"{where}.seeds_per_trial", raw.get("seeds_per_trial", top.get("seeds_per_trial", 1)), 1
    )
    epochs = raw.get("epochs")
    if epochs is not None:
        epochs = _int(f"{where}.epochs", epochs, 1)
    overrides = raw.get("set") or {}
    if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
        raise _fail(f"{where}.set", "must be a mapping of run options", overrides)
    return Batch(
        task=task,
        preset=preset,
        search=search,
        trials=_int(f"{where}.trials", raw.get("trials", 1), 1),
        configs=configs,
        experiment=experiment,
        seeds=seeds,
        seeds_per_trial=per_trial,
        epochs=epochs,
        set=dict(overrides),
    )


def parse_config(document: Any) -> NightlyConfig:
    """Validate a parsed nightly YAML document.

    Raises:
        NightlyConfigError: one line naming the offending field and value.
    """
    if not isinstance(document, Mapping):
        raise _fail("top level", "must be a mapping", document)
    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise _fail(unknown[0], "unknown key", document[unknown[0]])
    batches = document.get("batches")
    if not isinstance(batches, list) or not batches:
        raise _fail("batches", "must be a non-empty list", batches)
    max_concurrent = document.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = _int("max_concurrent", max_concurrent, 1)
    address = document.get("address")
    if address is not None:
        address = _text("address", address)
    benchmarks = document.get("benchmarks")
    if benchmarks is not None:
        benchmarks = Path(_text("benchmarks", benchmarks))
    return NightlyConfig(
        tracking_uri=_text(
            "tracking_uri",
            document.get("tracking_uri", os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)),
        ),
        reports_dir=Path(_text("reports_dir", document.get("reports_dir", "reports"))),
        storage_path=_text("storage_path", document.get("storage_path", "runs")),
        data_dir=_text("data_dir", document.get("data_dir", "data")),
        download=_bool("download", document.get("download", False)),
        address=address,
        cpus_per_trial=_number(
            "cpus_per_trial", document.get("cpus_per_trial", 1), minimum=0.0, strict=True
        ),
        gpus_per_trial=_number("gpus_per_trial", document.get("gpus_per_trial", 0), minimum=0.0),
        max_concurrent=max_concurrent,
        benchmarks=benchmarks,
        batches=tuple(_batch(i, b, document) for i, b in enumerate(batches)),
    )


def load_config(path: str | Path) -> NightlyConfig:
    """Read and validate a nightly configuration file (errors: NightlyConfigError)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise NightlyConfigError(f"cannot read {path}: {err.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else "parse error"
        raise NightlyConfigError(f"{path} is not valid YAML: {first}") from None
    try:
        return parse_config(document)
    except NightlyConfigError as err:
        raise NightlyConfigError(f"{path}: {err}") from None


# --------------------------------------------------------------------------------------------
# Seeds


def next_seed(tracking_uri: str, experiment: str) -> int:
    """One more than the largest seed of any child run of `experiment` (0 for a new study).

    Reads MLflow only: a missing sqlite database or experiment means no seed is used yet
    (the study creates them).
    """
    from study.report import sqlite_path
    from study.tracking import RUN_KIND_TAG, SEED_TAG, check_tracking_uri

    check_tracking_uri(tracking_uri)
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        return 0
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    largest, token = -1, None
    while True:
        # Deleted runs count too: their seeds were used.
        page = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.{RUN_KIND_TAG} = 'child'",
            run_view_type=ViewType.ALL,
            max_results=5_000,
            page_token=token,
        )
        for run in page:
            seed = run.data.tags.get(SEED_TAG)
            if seed is not None and seed.strip().lstrip("-").isdigit():
                largest = max(largest, int(seed))
        token = page.token
        if not token:
            return largest + 1


# --------------------------------------------------------------------------------------------
# Running


def batch_options(
    batch: Batch, night: NightlyConfig, seed_offset: int, run_name: str
) -> dict[str, Any]:
    """The ``study.run.StudyOptions`` fields of one batch tonight."""
    return {
        "task": batch.task,
        "preset": batch.preset,
        "search": batch.search,
        "trials": batch.trials,
        "seeds": batch.seeds,
        "seed_offset": seed_offset,
        "seeds_per_trial": batch.seeds_per_trial,
        "cpus_per_trial": night.cpus_per_trial,
        "gpus_per_trial": night.gpus_per_trial,
        "max_concurrent": night.max_concurrent,
        "address": night.address,
        "tracking_uri": night.tracking_uri,
        "experiment": batch.experiment,
        "run_name": run_name,
        "storage_path": night.storage_path,
        "resume": False,
        "data_dir": night.data_dir,
        "download": night.download,
        "configs": [dict(c) for c in batch.configs] if batch.configs else None,
        "epochs": batch.epochs,
        "set": dict(batch.set),
    }


def run_batch(batch: Batch, night: NightlyConfig, seed_offset: int, run_name: str) -> Any:
    """Run one batch through the study's Python API: the only call into it."""
    from study.run import StudyOptions, run_study

    return run_study(StudyOptions(**batch_options(batch, night, seed_offset, run_name)))


def write_report(night: NightlyConfig) -> int:
    """One report on all the configuration's experiments, compared with the latest earlier
    one; returns the report command's exit code."""
    from study import report as report_cli

    out = report_cli.default_out(night.experiments, night.reports_dir)
    argv = ["--tracking-uri", night.tracking_uri, "--out", str(out), "--since", "latest"]
    for experiment in night.experiments:
        argv += ["--experiment", experiment]
    if night.benchmarks is not None:
        argv += ["--benchmarks", str(night.benchmarks)]
    return report_cli.main(argv)


@contextlib.contextmanager
def _single_instance(reports_dir: Path) -> Iterator[bool]:
    reports_dir.mkdir(parents=True, exist_ok=True)
    with open(reports_dir / ".nightly.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log(message: str) -> None:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"[nightly {stamp}] {message}", flush=True)


def night(config: NightlyConfig, *, dry_run: bool = False) -> int:
    """Run every batch on fresh seeds, then write the reports. Returns the exit code."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    offsets = {exp: next_seed(config.tracking_uri, exp) for exp in config.experiments}
    for i, batch in enumerate(config.batches):
        first = offsets[batch.experiment]
        what = (
            f"{len(batch.configs)} fixed configs"
            if batch.configs
            else (f"{batch.trials} {batch.search} trials")
        )
        last = first + batch.seeds - 1
        _log(
            f"batch {i}: {batch.task}/{batch.preset}, {what}, seeds {first}..{last}"
            f" -> experiment {batch.experiment!r}"
        )
    if dry_run:
        return 0
    failed = []
    for i, batch in enumerate(config.batches):
        run_name = f"nightly-{stamp}-{i}-{batch.task}"
        try:
            run_batch(batch, config, offsets[batch.experiment], run_name)
            _log(f"batch {i} done")
        except Exception:  # one failed batch must not cost the others their night
            failed.append(f"batch {i}")
            _log(f"batch {i} failed:\n{traceback.format_exc()}")
    code = write_report(config)
    if code != 0:
        failed.append(f"the report (exit {code})")
    if failed:
        _log(f"finished with failures: {', '.join(failed)}")
        return 1
    _log("finished")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="study/nightly.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="nightly YAML configuration")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and print tonight's plan, run nothing"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except NightlyConfigError as err:
        print(f"nightly: error: {err}", file=sys.stderr)
        return 2
    from study.tracking import TrackingError

    try:
        if args.dry_run:
            return night(config, dry_run=True)
        with _single_instance(config.reports_dir) as alone:
            if not alone:
                print("nightly: another nightly run holds the lock; not starting", file=sys.stderr)
                return 1
            return night(config)
    except TrackingError as err:
        print(f"nightly: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
