"""Nightly evidence: run fresh seeds of the configured studies, then report what changed.

    hdetach-study nightly --config hdetach/nightly.yaml [--dry-run]

The configuration (``hdetach/nightly.yaml``) is study options: its top-level keys are
defaults for every batch (any option of ``python study/run.py --config``, e.g.
``tracking_uri``, ``storage_path``, ``seeds``, ``seeds_per_trial``, ``cpus_per_trial``),
each entry of ``batches`` overrides them for one study, and ``reports_dir`` / ``benchmarks``
are the nightly's own. A batch defaults to ``preset: paper`` and ``search: fixed`` and must
name its ``experiment`` (the evidence of every night accumulates there).

Every night each batch runs on the next ``seeds`` *unused* seeds of its experiment (one more
than the largest seed any child run there has, so evidence accumulates and never repeats a
seed; every batch of an experiment gets the same new seeds, so the arms stay paired). Then
one report on all the experiments is written with ``--since latest``, so it says which
verdicts changed and which intervals tightened.

The nightly sits above the study and the report (``hdetach`` is the top layer): it checks
each batch's options with the study's own validation (``study.options``), runs each batch as
``python -m study.run --config <batch options>`` in a process of its own, so a batch that
crashes cannot take the others with it, and writes the report with the report's command.
A bad value exits with code 2 and a one-line message naming it, and so does a night whose
experiment another driver (a study, another nightly) is running: the nightly holds the study
lock of each of its experiments (``trainables/locking.py``, the same lock a
study driver takes) from choosing the seeds to the report, and its batches run under it.
Exit code 1: a batch or the report failed (the others still ran); 0: all went through.
Scheduling: ``deploy/hdetach-nightly.{service,timer}`` or ``deploy/crontab``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import yaml

from dashboards import cli as report_cli
from study.options import OptionsError, options_from_mapping
from trainables.config import OneLineParser
from trainables.contract import CHILD, RUN_KIND_TAG, SEED_TAG
from trainables.locking import LOCK_TOKEN_ENV, BadName, LockHeld, StudyLock, check_name
from trainables.tracking_uri import TrackingError, check_tracking_uri

NIGHTLY_KEYS = ("reports_dir", "benchmarks", "batches")
#: What a batch is unless it or the top level says otherwise.
BATCH_DEFAULTS = {"preset": "paper", "search": "fixed", "seeds": 5}
DEFAULT_URI = "sqlite:///mlflow.db"  # unless the file or MLFLOW_TRACKING_URI says otherwise


class NightlyConfigError(ValueError):
    """A bad value in the nightly configuration; the message names it."""


@dataclass(frozen=True)
class Batch:
    """One study to extend tonight: its study options (without the night's seeds)."""

    options: dict[str, Any]
    experiment: str

    @property
    def seeds(self) -> int:
        return int(self.options["seeds"])

    @property
    def task(self) -> str:
        return self.options["task"]


@dataclass(frozen=True)
class NightlyConfig:
    tracking_uri: str
    reports_dir: Path
    benchmarks: Path | None
    batches: tuple[Batch, ...]

    @property
    def experiments(self) -> list[str]:
        return list(dict.fromkeys(b.experiment for b in self.batches))


def _fail(where: str, problem: str, value: Any) -> NightlyConfigError:
    return NightlyConfigError(f"{where}: {problem}, got {value!r}")


def _study_check(batches: list[dict[str, Any]]) -> list[str | None]:
    """The study's own validation of each batch's options: None, or the error's message."""
    errors: list[str | None] = []
    for values in batches:
        try:
            options_from_mapping(values)
        except OptionsError as err:
            errors.append(str(err))
        else:
            errors.append(None)
    return errors


def batch_options(batch: Batch, seed_offset: int, run_name: str) -> dict[str, Any]:
    """The study options of one batch tonight."""
    return {**batch.options, "seed_offset": seed_offset, "run_name": run_name, "resume": False}


def parse_config(document: Any) -> NightlyConfig:
    """Validate a parsed nightly YAML document.

    Raises:
        NightlyConfigError: one line naming the offending field and value.
    """
    if not isinstance(document, Mapping):
        raise _fail("top level", "must be a mapping", document)
    batches = document.get("batches")
    if not isinstance(batches, list) or not batches:
        raise _fail("batches", "must be a non-empty list", batches)
    defaults = {k: v for k, v in document.items() if k not in NIGHTLY_KEYS}
    defaults.setdefault("tracking_uri", os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI))
    merged = []
    for i, raw in enumerate(batches):
        if not isinstance(raw, Mapping):
            raise _fail(f"batches[{i}]", "must be a mapping of study options", raw)
        options = {**BATCH_DEFAULTS, **defaults, **raw}
        experiment = options.get("experiment")
        if not isinstance(experiment, str) or not experiment.strip():
            raise _fail(f"batches[{i}].experiment", "must be non-empty text", experiment)
        try:
            check_name(f"batches[{i}].experiment", experiment)
        except BadName as err:
            raise NightlyConfigError(str(err)) from None
        merged.append(options)
    checked = _study_check([batch_options(Batch(o, ""), 0, "nightly") for o in merged])
    for i, error in enumerate(checked):
        if error is not None:
            raise NightlyConfigError(f"batches[{i}]: {error}")
    reports_dir = document.get("reports_dir", "reports")
    benchmarks = document.get("benchmarks")
    for name, value in (("reports_dir", reports_dir), ("benchmarks", benchmarks)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise _fail(name, "must be a path", value)
    return NightlyConfig(
        tracking_uri=defaults["tracking_uri"],
        reports_dir=Path(reports_dir),
        benchmarks=Path(benchmarks) if benchmarks else None,
        batches=tuple(Batch(o, o["experiment"]) for o in merged),
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


def next_seed(tracking_uri: str, experiment: str) -> int:
    """One more than the largest seed of any child run of `experiment` (0 for a new study).

    Reads MLflow only: a missing sqlite database or experiment means no seed is used yet
    (the study creates them).
    """
    check_tracking_uri(tracking_uri)
    db = report_cli.sqlite_path(tracking_uri)
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
            filter_string=f"tags.{RUN_KIND_TAG} = '{CHILD}'",
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


def run_batch(batch: Batch, seed_offset: int, run_name: str, lock_token: str = "") -> int:
    """Run one batch with the study's command in its own process; returns its exit code.
    ``lock_token``: the nightly's study locks, which the batch runs under."""
    with tempfile.TemporaryDirectory(prefix="hdetach-nightly-") as folder:
        path = Path(folder) / f"{run_name}.yaml"
        path.write_text(yaml.safe_dump(batch_options(batch, seed_offset, run_name)))
        command = [sys.executable, "-m", "study.run", "--config", str(path)]
        env = {**os.environ, LOCK_TOKEN_ENV: lock_token} if lock_token else None
        return subprocess.run(command, check=False, env=env).returncode


def write_report(night: NightlyConfig) -> int:
    """One report on all the configuration's experiments, compared with the latest earlier
    one; returns the report command's exit code."""
    out = report_cli.default_out(night.experiments, night.reports_dir)
    argv = ["--tracking-uri", night.tracking_uri, "--out", str(out), "--since", "latest"]
    for experiment in night.experiments:
        argv += ["--experiment", experiment]
    if night.benchmarks is not None:
        argv += ["--benchmarks", str(night.benchmarks)]
    return report_cli.main(argv)


@contextlib.contextmanager
def _single_instance(config: NightlyConfig) -> Iterator[str]:
    """Hold the study lock of every experiment of the night (in name order, so two nightlies
    sharing experiments cannot each hold one the other waits for), then the reports
    directory's lock; yields the token the batches run under. Raises ``LockHeld``."""
    with contextlib.ExitStack() as held:
        token = None
        for experiment in sorted(config.experiments):
            lock = held.enter_context(StudyLock(config.tracking_uri, experiment, token=token))
            token = lock.token
        config.reports_dir.mkdir(parents=True, exist_ok=True)
        try:
            held.enter_context(filelock.FileLock(config.reports_dir / ".nightly.lock", timeout=0))
        except filelock.Timeout:
            raise LockHeld(f"another nightly is writing reports to {config.reports_dir}") from None
        yield token or ""


log = logging.getLogger("hdetach.nightly")


class _Stdout(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stdout`` is at the time of each line (a caller
    may swap it after the handler is made, as pytest's capture does)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def _console_log() -> None:
    """Progress lines on stdout as ``[nightly 2026-12-06 01:30:00 UTC] message`` (cron mails
    and journald keep them), through ``logging`` so a caller can redirect or silence them."""
    if log.handlers:
        return
    handler = _Stdout()
    formatter = logging.Formatter("[nightly %(asctime)s UTC] %(message)s", "%Y-%m-%d %H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def night(config: NightlyConfig, *, dry_run: bool = False, lock_token: str = "") -> int:
    """Run every batch on fresh seeds, then write the report. Returns the exit code."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    offsets = {exp: next_seed(config.tracking_uri, exp) for exp in config.experiments}
    for i, batch in enumerate(config.batches):
        first = offsets[batch.experiment]
        configs = batch.options.get("configs")
        what = (
            f"{len(configs)} fixed configs"
            if configs
            else f"{batch.options.get('trials', 1)} {batch.options['search']} trials"
        )
        log.info(
            f"batch {i}: {batch.task}/{batch.options['preset']}, {what}, seeds {first}.."
            f"{first + batch.seeds - 1} -> experiment {batch.experiment!r}"
        )
    if dry_run:
        return 0
    failed = []
    for i, batch in enumerate(config.batches):
        name = f"nightly-{stamp}-{i}-{batch.task}"
        code = run_batch(batch, offsets[batch.experiment], name, lock_token)
        if code == 0:
            log.info(f"batch {i} done")
        else:  # one failed batch must not cost the others their night
            failed.append(f"batch {i} (exit {code})")
            log.info(f"batch {i} failed with exit code {code}")
    code = write_report(config)
    if code != 0:
        failed.append(f"the report (exit {code})")
    if failed:
        log.info(f"finished with failures: {', '.join(failed)}")
        return 1
    log.info("finished")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="hdetach-study nightly", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="nightly YAML configuration")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and print tonight's plan, run nothing"
    )
    args = parser.parse_args(argv)
    _console_log()
    try:
        config = load_config(args.config)
        if args.dry_run:
            return night(config, dry_run=True)
        with _single_instance(config) as token:
            return night(config, lock_token=token)
    except (NightlyConfigError, TrackingError, LockHeld) as err:
        print(f"nightly: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
