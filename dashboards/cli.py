"""The report command: export the experiment from MLflow, judge the claims, write HTML.

    hdetach-study report --experiment NAME [--experiment NAME2 ...] [--tracking-uri URI]
        [--out DIR] [--data-dir DIR] [--since PREVIOUS_REPORT_DIR|latest]
        [--benchmarks benchmark.json]

(also ``python -m dashboards.cli ...``).

Steps: export the experiment's child runs incrementally into a Parquet dataset
(``<out parent>/data`` unless ``--data-dir``), load it, write ``index.html`` and
``summary.json`` into the report directory (default ``reports/<experiment>/<UTC timestamp>``),
then log that directory as the artifacts of a *report run* in the same experiment (tag
``run_kind=report``: neither a parent nor a child, so exports and the study ignore it).

The claims span tasks while a study is one experiment per task (and copying delay): give
``--experiment`` once per study to judge them together; the report run is then logged in each.

``--since latest`` compares with the newest other report beside this one (by the time in its
``summary.json``); ``--since DIR`` with that report. ``--no-export`` reports on the dataset as
it is, without touching MLflow (and logs no run).

Bad input (unknown experiment, unreachable tracking server, missing files, a corrupt tracking
store or dataset file) exits with code 2 and a one-line message naming it. A failure while the
report runs (a full disk, a server gone away) exits with code 1 and one line: the cause and
the file holding the traceback (``<temp dir>/hdetach-report-<time>.log``); a report directory
this run created is removed rather than left half written. The command never creates an
experiment or a tracking database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dashboards import claims as claims_mod
from dashboards import export, report
from dashboards.dataset import DatasetError
from dashboards.stats import N_RESAMPLES
from trainables.causes import failure_cause, save_traceback
from trainables.contract import REPORT, RUN_KIND_TAG
from trainables.tracking_uri import TrackingError, check_tracking_uri

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_REPORTS_DIR = Path("reports")


class UsageError(ValueError):
    """Bad input: the command exits with code 2 and this one-line message."""


def experiment_slug(name: str) -> str:
    """A directory name for an experiment name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return slug or "experiment"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hdetach-study report",
        description="Export a study from MLflow and write its HTML report with claim verdicts.",
    )
    parser.add_argument(
        "--experiment",
        required=True,
        action="append",
        help="MLflow experiment of a study (repeat to report on several together)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=DEFAULT_TRACKING_URI,
        help=f"MLflow tracking URI (default {DEFAULT_TRACKING_URI})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="report directory (default reports/<experiment>/<UTC timestamp>)",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="Parquet dataset directory (default <out parent>/data)"
    )
    parser.add_argument(
        "--since",
        help="compare with this earlier report directory, or 'latest' (the newest beside --out)",
    )
    parser.add_argument(
        "--benchmarks",
        type=Path,
        help='JSON with benchmark figures for C9, e.g. {"backward_time_ratio": 0.8}',
    )
    parser.add_argument("--claims", type=Path, help="claims file (default: the packaged one)")
    parser.add_argument(
        "--no-export",
        action="store_true",
        help="report on the dataset in --data-dir as it is: no MLflow access, no report run",
    )
    parser.add_argument(
        "--no-log-run", action="store_true", help="do not log the report as an MLflow run"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of bootstraps and samples")
    parser.add_argument(
        "--resamples", type=int, default=N_RESAMPLES, help="bootstrap resamples per interval"
    )
    parser.add_argument(
        "--max-curves", type=int, default=report.MAX_CURVES, help="seed curves drawn per panel"
    )
    return parser


def default_out(experiments: str | list[str], reports_dir: Path = DEFAULT_REPORTS_DIR) -> Path:
    """``reports/<experiment>/<UTC timestamp>`` (experiments joined by ``+``), made unique if
    that directory exists."""
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = reports_dir / experiment_slug("+".join(names))
    out = base / stamp
    n = 2
    while out.exists():
        out = base / f"{stamp}-{n}"
        n += 1
    return out


def latest_report(parent: Path, exclude: Path | None = None) -> Path | None:
    """The report directory under `parent` whose summary.json is the newest (or None)."""
    found = []
    if not parent.is_dir():
        return None
    for candidate in parent.iterdir():
        if not candidate.is_dir() or (exclude is not None and candidate.resolve() == exclude):
            continue
        try:
            summary = report.read_summary(candidate)
        except ValueError:
            continue
        found.append((str(summary.get("created") or ""), candidate.stat().st_mtime, candidate))
    return max(found)[2] if found else None


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite://"):
        return None
    rest = uri[len("sqlite://") :].split("?", 1)[0]
    return Path(rest[1:])


def _open_experiment(uri: str, name: str):
    """(client, experiment) for an existing experiment; UsageError otherwise. Creates
    nothing: no database, no experiment."""
    try:
        check_tracking_uri(uri)
    except TrackingError as err:
        raise UsageError(str(err)) from None
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UsageError(f"no MLflow database at {db} (tracking URI {uri})")
    from mlflow.tracking import MlflowClient

    try:  # MLflow opens (and checks) a sqlite store as the client is made
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)
    except Exception as err:
        if db is None or not _sqlite_refused(err):
            raise
        raise UsageError(
            f"tracking store {db.absolute()} is corrupt ({_first_line(err)}): restore it from "
            "a backup or point --tracking-uri at another file"
        ) from None
    if experiment is None or experiment.lifecycle_stage != "active":
        known = [e.name for e in client.search_experiments(max_results=20)]
        hint = f" (experiments there: {', '.join(known)})" if known else ""
        state = "deleted" if experiment is not None else "unknown"
        raise UsageError(f"{state} experiment {name!r} on {uri}{hint}")
    return client, experiment


def _sqlite_refused(err: BaseException) -> bool:
    """Whether sqlite itself refused the file (``database disk image is malformed``, ``file
    is not a database``): the store is corrupt, not the command."""
    import sqlite3

    while err is not None:
        if isinstance(err, sqlite3.DatabaseError) and not isinstance(err, sqlite3.OperationalError):
            return True
        err = err.__cause__ or err.__context__
    return False


def _first_line(err: BaseException) -> str:
    while err.__cause__ is not None:  # the library's own message, not its wrapper's
        err = err.__cause__
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _read_benchmarks(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        return report.read_json_object(path, "benchmarks")
    except ValueError as err:
        raise UsageError(str(err)) from None


def _log_report_run(
    client, experiment, out: Path, built: report.Report, since: str | None, names: list[str]
) -> str:
    """The report directory as the artifacts of a run tagged run_kind=report."""
    from mlflow.entities import Metric, RunTag

    stamp = out.name
    tags = {
        RUN_KIND_TAG: REPORT,
        "report.dir": str(out.resolve()),
        "report.experiments": ", ".join(names),
    }
    if since:
        tags["report.since"] = since
    for verdict in built.verdicts:
        tags[f"claim.{verdict.claim_id}"] = verdict.verdict
    run = client.create_run(experiment.experiment_id, run_name=f"report-{stamp}", tags=tags)
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        counts: dict[str, int] = {}
        for verdict in built.verdicts:
            key = verdict.verdict.replace(" ", "_")
            counts[key] = counts.get(key, 0) + 1
        metrics = [Metric("runs", float(built.summary["n_runs"]), now, 0)]
        metrics += [Metric(f"claims_{k}", float(v), now, 0) for k, v in counts.items()]
        client.log_batch(run_id, metrics=metrics, tags=[RunTag("report.html", "index.html")])
        client.log_artifacts(run_id, str(out))
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def run(args: argparse.Namespace) -> int:
    if args.resamples < 100:
        raise UsageError(f"--resamples must be >= 100, got {args.resamples}")
    if args.max_curves < 1:
        raise UsageError(f"--max-curves must be >= 1, got {args.max_curves}")
    names = list(dict.fromkeys(args.experiment))
    out = args.out if args.out is not None else default_out(names)
    data_dir = args.data_dir if args.data_dir is not None else out.parent / "data"
    benchmarks = _read_benchmarks(args.benchmarks)
    try:
        claim_list = claims_mod.load_claims(args.claims)
    except (OSError, ValueError) as err:
        raise UsageError(f"claims file: {err}") from None

    previous, since_label = None, None
    if args.since == "latest":
        found = latest_report(out.parent, exclude=out.resolve())
        if found is None:
            since_label = f"No earlier report in {out.parent} to compare with."
        else:
            previous, since_label = report.read_summary(found), str(found)
    elif args.since:
        try:
            previous, since_label = report.read_summary(args.since), str(args.since)
        except ValueError as err:
            raise UsageError(str(err)) from None

    notes = []
    opened = []
    if not args.no_export:
        opened = [_open_experiment(args.tracking_uri, name) for name in names]
        for name, (client, _) in zip(names, opened, strict=True):
            try:
                result = export.export(args.tracking_uri, name, data_dir, client=client)
            except DatasetError as err:  # ExportError, or one the export meets
                raise UsageError(str(err)) from None
            print(result.describe())
            notes.append(f"Data: {result.describe()} into {data_dir}.")
            for problem in result.problems[:20]:
                notes.append(f"Export problem: {problem}")
    try:
        runs, history = export.load(data_dir, names)
    except DatasetError as err:  # ExportError, or one the export meets
        raise UsageError(str(err)) from None

    fresh = not out.exists()
    try:
        built = report.build_report(
            runs,
            history,
            out,
            experiment=", ".join(names),
            claim_list=claim_list,
            benchmarks=benchmarks,
            previous=previous,
            since_label=since_label,
            notes=notes,
            seed=args.seed,
            n_resamples=args.resamples,
            max_curves=args.max_curves,
        )
    except BaseException as err:
        if fresh:  # half a report (a summary.json without its page) would pass for one
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(out)  # a failed write names no file: the report's folder
        raise
    tally = ", ".join(f"{v.claim_id} {v.verdict}" for v in built.verdicts)
    print(f"report: {built.html} ({tally})")
    if not args.no_log_run:
        for name, (client, experiment) in zip(names, opened, strict=False):
            since = since_label if previous else None
            run_id = _log_report_run(client, experiment, out, built, since, names)
            print(f"logged as MLflow run {run_id} (run_kind=report) in {name!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a runtime failure: one line, the traceback in a file
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        log = save_traceback([Path(tempfile.gettempdir()) / f"hdetach-report-{stamp}.log"])
        where = f"traceback in {log}" if log else "no log: no disk would take the traceback"
        print(f"report: error: {failure_cause(err)} ({where})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
