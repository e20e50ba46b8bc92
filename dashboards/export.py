"""MLflow -> Parquet: every child run of a study experiment as two tables, exported incrementally.

:func:`export` copies the child runs (``run_kind=child``) of one experiment into a Parquet
dataset; :func:`load` reads it back as the ``runs`` / ``history`` DataFrames that
:mod:`dashboards.claims` documents. :func:`write_frames` writes such frames directly (synthetic
data, benchmarks). Parent runs and report runs (``run_kind=report``) are never exported.

Layout (hive partitioning by experiment and task; values URI-encoded, pyarrow decodes them)::

    <out_dir>/manifests/experiment=<name>.json     the commit point of one experiment
    <out_dir>/runs/experiment=<name>/task=<task>/part-<batch>.parquet
    <out_dir>/history/experiment=<name>/task=<task>/part-<batch>.parquet

``experiment`` and ``task`` live in the directory names only (pyarrow adds them as columns).
A *batch* is one ``runs`` file and the ``history`` file of the same runs.

``runs`` table: one row per child run
-------------------------------------
=========================  ================  ===========================================
column                     type              from
=========================  ================  ===========================================
experiment, task           string            partition (task: param, else tag ``task``)
run_id, parent_run_id      string            run id, tag ``mlflow.parentRunId``
config_id, run_name        string            tag ``config_id``, run name
status                     string            RUNNING / FINISHED / FAILED / KILLED
start_time, end_time       timestamp[ms,UTC] run info (end_time null while running)
updated                    timestamp[ms,UTC] last update: max(start, end, newest metric)
arm                        string            tag ``arm`` (else derived from p/c_detach, damp)
seed, seq_len, epochs      int64             params (seed also tag ``seed``)
p_detach, c_detach, damp,  double            params (tags as fallback for p_detach, c_detach,
lr, clip_norm, threshold                     lr)
clip                       bool              param (tag fallback)
epochs_logged              int64             latest ``epoch`` bookkeeping metric
last_epoch                 int64             final ``last_epoch``, else ``epochs_logged``
best_val_acc, best_epoch,  double            final metrics (NaN: not logged = not finished
test_acc_at_best,                            or non-finite)
epochs_to_threshold,
diverged_epoch,
max_grad_norm
diverged, censored         bool              final metrics (null: not logged)
<other metric>             double            every other run-level metric, e.g.
                                             ``transfer_acc_T200``, ``test_cider``
<param>                    string            every other param, verbatim (``param.<name>``
                                             if the name is taken)
tag.<key>                  string            every other tag except ``mlflow.*``
=========================  ================  ===========================================

``history`` table: one row per (run_id, epoch)
----------------------------------------------
``experiment``, ``task`` (partition), ``run_id`` (string), ``epoch`` (int64, 1-based, the
MLflow step) and the ``EPOCH_METRICS`` of :mod:`study.schema` (double). The epochs are those
whose ``epoch`` bookkeeping marker MLflow holds; a metric missing at such an epoch was
non-finite (``study.tracking`` does not log those) and is NaN, as is MLflow's stand-in for
+/-inf (+/-1.8e308).

Incremental export
------------------
The manifest keeps, per run: its batch, status, end time, ``updated``, ``epochs_logged``, a
digest of its params, tags and latest metric values, and a *history key* (the newest step and
timestamp of its per-epoch metrics). One paged ``search_runs`` returns all of that for every
run, so an export first pages through the children, then:

* a run whose state equals the manifest's is left alone (nothing fetched, no file touched);
* a new run, or a changed one whose history key moved, has its history fetched: with
  ``GetMetricHistoryBulkInterval`` (one request per metric per 100 runs, the endpoint the
  MLflow UI uses; the SQL store answers the same call locally) or, where the store lacks it,
  ``get_metric_history`` per run and metric;
* a changed run whose history key did not move (it only finished, or got tags) keeps the
  history rows the dataset already holds;
* a run gone from MLflow (deleted) is dropped.

Only the batches holding changed or removed runs are rewritten (their unchanged runs are
copied over locally), together with the new runs, into new batch files.

Atomicity: data files are written under a temporary name and renamed; the manifest, written
the same way, is the commit point. :func:`load` reads only the files the manifest names, so
an export interrupted at any point leaves the previous dataset intact; files it left behind
are deleted by the next export. Exports of one experiment are serialised with a lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from study.schema import EPOCH_METRICS
from study.tracking import CONFIG_ID_TAG, EPOCH_METRIC, RUN_KIND_TAG, SEED_TAG

FORMAT_VERSION = 1
PARTITION_COLUMNS = ("experiment", "task")
UNKNOWN_TASK = "unknown"
HISTORY_KEYS = (*EPOCH_METRICS, EPOCH_METRIC)
#: MLflow's SQL stores keep +/-inf as +/-1.797e308; anything this large was not finite.
_INF_STANDIN = 1e308
_PAGE_SIZE = 2_500
_BULK_RUNS = 100  # GetMetricHistoryBulkInterval: at most 100 run ids per request
_BULK_MAX_RESULTS = 2_500  # ... and at most 2,500 points per run (more are sampled)
_TS = pa.timestamp("ms", tz="UTC")

#: Typed columns of the runs table, in order (dynamic columns follow, sorted).
RUN_COLUMNS: dict[str, pa.DataType] = {
    "run_id": pa.string(),
    "parent_run_id": pa.string(),
    "config_id": pa.string(),
    "run_name": pa.string(),
    "status": pa.string(),
    "start_time": _TS,
    "end_time": _TS,
    "updated": _TS,
    "arm": pa.string(),
    "seed": pa.int64(),
    "p_detach": pa.float64(),
    "c_detach": pa.float64(),
    "damp": pa.float64(),
    "lr": pa.float64(),
    "clip": pa.bool_(),
    "clip_norm": pa.float64(),
    "seq_len": pa.int64(),
    "epochs": pa.int64(),
    "threshold": pa.float64(),
    "epochs_logged": pa.int64(),
    "last_epoch": pa.int64(),
    "best_val_acc": pa.float64(),
    "best_epoch": pa.float64(),
    "test_acc_at_best": pa.float64(),
    "epochs_to_threshold": pa.float64(),
    "diverged": pa.bool_(),
    "diverged_epoch": pa.float64(),
    "censored": pa.bool_(),
    "max_grad_norm": pa.float64(),
}
HISTORY_COLUMNS: dict[str, pa.DataType] = {
    "run_id": pa.string(),
    "epoch": pa.int64(),
    **{key: pa.float64() for key in EPOCH_METRICS},
}
#: Params parsed into typed columns; the rest stay strings.
_TYPED_PARAMS = {
    "seed": "int",
    "p_detach": "float",
    "c_detach": "float",
    "damp": "float",
    "lr": "float",
    "clip": "bool",
    "clip_norm": "float",
    "seq_len": "int",
    "epochs": "int",
    "threshold": "float",
}
_TAG_FALLBACK = ("p_detach", "c_detach", "lr", "clip")
_BOOL_METRICS = ("diverged", "censored")
_FLOAT_FINALS = (
    "best_val_acc",
    "best_epoch",
    "test_acc_at_best",
    "epochs_to_threshold",
    "diverged_epoch",
    "max_grad_norm",
)
_NOT_RUN_METRICS = frozenset(HISTORY_KEYS) | {"last_epoch"}


class ExportError(ValueError):
    """A problem the user can fix: unknown experiment, unreadable dataset."""


@dataclass
class ExportResult:
    """What one :func:`export` call did."""

    experiment: str
    out_dir: Path
    runs_total: int = 0
    runs_new: int = 0
    runs_changed: int = 0
    runs_unchanged: int = 0
    runs_removed: int = 0
    #: Runs whose per-epoch history was fetched from MLflow (new, or with new epochs).
    fetched: list[str] = field(default_factory=list)
    search_requests: int = 0
    history_requests: int = 0
    files_written: int = 0
    files_deleted: int = 0
    seconds: float = 0.0
    #: Values that could not be read as their column's type (left null), one line each.
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"exported {self.experiment!r}: {self.runs_total} runs ({self.runs_new} new, "
            f"{self.runs_changed} changed, {self.runs_removed} removed, {self.runs_unchanged} "
            f"unchanged); histories fetched for {len(self.fetched)} runs in "
            f"{self.search_requests} search + {self.history_requests} history requests; "
            f"{self.files_written} files written in {self.seconds:.1f} s"
        )


# --------------------------------------------------------------------------------------------
# Public API


def export(
    tracking_uri: str,
    experiment: str,
    out_dir: str | os.PathLike,
    *,
    client: MlflowClient | None = None,
    max_runs_per_file: int = 1_000,
) -> ExportResult:
    """Bring the Parquet dataset of `experiment` in `out_dir` up to date with MLflow.

    Args:
        tracking_uri: MLflow tracking URI (ignored when `client` is given).
        experiment: experiment name; it must exist (nothing is created in MLflow).
        out_dir: dataset root; created if missing.
        client: a ready client (e.g. one that counts its requests).
        max_runs_per_file: runs per batch file.

    Raises:
        ExportError: the experiment does not exist or is deleted.
    """
    if max_runs_per_file < 1:
        raise ValueError(f"max_runs_per_file must be >= 1, got {max_runs_per_file}")
    started = time.monotonic()
    client = client or MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ExportError(f"no experiment named {experiment!r} on {tracking_uri}")
    if exp.lifecycle_stage != "active":
        raise ExportError(f"experiment {experiment!r} on {tracking_uri} is deleted")
    root = Path(out_dir)
    result = ExportResult(experiment=experiment, out_dir=root)
    with _locked(root, experiment):
        manifest = _read_manifest(root, experiment)
        if manifest is not None and manifest.get("experiment_id") != exp.experiment_id:
            manifest = None  # the name now belongs to another experiment: start afresh
        fresh = manifest is None  # commit even an empty dataset: load() then finds it
        manifest = manifest or _empty_manifest(experiment, exp.experiment_id)
        old_runs: dict[str, dict] = manifest["runs"]

        found, result.search_requests = _search_children(client, exp.experiment_id)
        rows: dict[str, dict[str, Any]] = {}
        states: dict[str, dict[str, Any]] = {}
        for run in found:
            row, state = _run_row(run, result.problems)
            rows[run.info.run_id] = row
            states[run.info.run_id] = state

        changed, need_history = [], []
        for run_id, state in states.items():
            old = old_runs.get(run_id)
            if old is None:
                result.runs_new += 1
            elif any(old.get(k) != v for k, v in state.items()):
                result.runs_changed += 1
            else:
                result.runs_unchanged += 1
                continue
            changed.append(run_id)
            # Same history key (no new epoch, same task): the dataset's epochs are still right.
            if old is None or any(old.get(k) != state[k] for k in ("history_key", "task")):
                need_history.append(run_id)
        removed = [run_id for run_id in old_runs if run_id not in states]
        result.runs_removed = len(removed)
        result.runs_total = len(states)

        if changed or removed or fresh:
            fetched, result.history_requests = _fetch_histories(
                client, need_history, {r: states[r]["epochs_logged"] for r in need_history}
            )
            result.fetched = list(need_history)
            new_runs = pd.DataFrame([rows[r] for r in changed])
            new_runs["task"] = [states[r]["task"] for r in changed]
            for name in ("start_time", "end_time", "updated"):
                if name in new_runs.columns:
                    new_runs[name] = pd.to_datetime(new_runs[name], unit="ms", utc=True)
            written, deleted = _apply(
                root,
                manifest,
                new_runs=new_runs,
                new_history=fetched,
                reuse_history=sorted(set(changed) - set(need_history)),
                removed=removed,
                states=states,
                max_runs_per_file=max_runs_per_file,
                tracking_uri=tracking_uri,
            )
            result.files_written, result.files_deleted = written, deleted
        else:
            result.files_deleted = _delete_orphans(root, manifest)
    result.seconds = time.monotonic() - started
    return result


def load(
    out_dir: str | os.PathLike, experiment: str | Sequence[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the dataset as ``(runs, history)`` DataFrames (schema: module docstring).

    Args:
        out_dir: dataset root written by :func:`export` or :func:`write_frames`.
        experiment: one experiment, several, or None for every experiment in the dataset.

    Raises:
        ExportError: no dataset (or no such experiment) in `out_dir`.
    """
    root = Path(out_dir)
    for attempt in range(3):
        manifests = _manifests_for(root, experiment)
        try:
            return _load_files(root, manifests)
        except FileNotFoundError:
            # A concurrent export committed a new manifest and deleted the files of the old
            # one between our two reads: read the new manifest.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def write_frames(
    out_dir: str | os.PathLike,
    experiment: str,
    runs: pd.DataFrame,
    history: pd.DataFrame,
    *,
    max_runs_per_file: int = 1_000,
) -> None:
    """Replace the dataset of `experiment` with these frames (synthetic data, benchmarks).

    `runs` needs ``run_id`` and ``task``; `history` needs ``run_id`` and ``epoch`` (its
    ``task`` is taken from `runs`). Columns follow the schema of the module docstring.
    """
    for name, frame, need in (
        ("runs", runs, {"run_id", "task"}),
        ("history", history, {"run_id", "epoch"}),
    ):
        missing = need - set(frame.columns)
        if missing:
            raise ValueError(f"{name} lacks columns {sorted(missing)}")
    if runs["run_id"].duplicated().any():
        raise ValueError("runs has duplicate run_id values")
    root = Path(out_dir)
    runs = runs.drop(columns=["experiment"], errors="ignore")
    history = history.drop(columns=["experiment", "task"], errors="ignore")
    now = _now_ms()
    states = {}
    for row in runs[["run_id", "task"]].itertuples(index=False):
        states[row.run_id] = {"task": str(row.task), "status": "FINISHED", "updated": now}
    with _locked(root, experiment):
        manifest = _empty_manifest(experiment, None)
        old = _read_manifest(root, experiment)
        if old is not None:
            manifest["batches"] = old["batches"]  # replaced wholesale below
            manifest["runs"] = {r: v for r, v in old["runs"].items() if r not in states}
            removed = list(manifest["runs"])
        else:
            removed = []
        _apply(
            root,
            manifest,
            new_runs=runs,
            new_history=history,
            reuse_history=[],
            removed=removed,
            states=states,
            max_runs_per_file=max_runs_per_file,
            tracking_uri=None,
            replace_all=True,
        )


def experiments(out_dir: str | os.PathLike) -> list[str]:
    """Names of the experiments with a committed dataset in `out_dir`."""
    return sorted(m["experiment"] for m in _all_manifests(Path(out_dir)))


# --------------------------------------------------------------------------------------------
# Reading MLflow


def _search_children(client: MlflowClient, experiment_id: str) -> tuple[list[Run], int]:
    found: list[Run] = []
    token, requests = None, 0
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{RUN_KIND_TAG} = 'child'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=_PAGE_SIZE,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        requests += 1
        found.extend(page)
        token = page.token
        if not token:
            return found, requests


def _metric_objects(run: Run) -> list:
    # RunData.metrics holds values only; the timestamps and steps are on the protobuf.
    return list(run.data.to_proto().metrics)


def _finite(value: float | None) -> float:
    if value is None or not math.isfinite(value) or abs(value) >= _INF_STANDIN:
        return math.nan
    return float(value)


def _parse(kind: str, text: str | None) -> Any:
    if text is None:
        return None
    text = text.strip()
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(text)
    if kind == "int":
        number = float(text)
        if not number.is_integer():
            raise ValueError(text)
        return int(number)
    return float(text)


def _derived_arm(row: Mapping[str, Any]) -> str | None:
    def positive(key: str) -> bool:
        value = row.get(key)
        return value is not None and value > 0  # NaN > 0 is False

    if row.get("p_detach") is None and row.get("c_detach") is None:
        return None
    if positive("c_detach"):
        return "c-detach"
    if positive("damp"):
        return "damp"
    return "h-detach" if positive("p_detach") else "vanilla"


def _run_row(run: Run, problems: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The runs-table row of one MLflow run, and its change-detection state."""
    info, params, tags = run.info, run.data.params, run.data.tags
    run_id = info.run_id
    metrics = _metric_objects(run)
    latest = {m.key: m for m in metrics}
    row: dict[str, Any] = {
        "run_id": run_id,
        "parent_run_id": tags.get(MLFLOW_PARENT_RUN_ID),
        "config_id": tags.get(CONFIG_ID_TAG, params.get("config_id")),
        "run_name": info.run_name,
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
    }
    for name, kind in _TYPED_PARAMS.items():
        text = params.get(name)
        if text is None and (name in _TAG_FALLBACK or name == "seed"):
            text = tags.get(SEED_TAG if name == "seed" else name)
        try:
            row[name] = _parse(kind, text)
        except ValueError:
            row[name] = None
            problems.append(f"run {run_id}: param {name}={text!r} is not a {kind}")
    row["arm"] = tags.get("arm") or _derived_arm(row)
    epoch_marker = latest.get(EPOCH_METRIC)
    epochs_logged = int(epoch_marker.value) if epoch_marker is not None else 0
    row["epochs_logged"] = epochs_logged
    last = latest.get("last_epoch")
    row["last_epoch"] = (
        int(last.value) if last is not None and math.isfinite(last.value) else (epochs_logged)
    )
    for key in _FLOAT_FINALS:
        row[key] = _finite(latest[key].value) if key in latest else math.nan
    for key in _BOOL_METRICS:
        row[key] = bool(latest[key].value) if key in latest else None
    taken = set(RUN_COLUMNS) | set(PARTITION_COLUMNS)
    for key, metric in latest.items():
        if key not in _NOT_RUN_METRICS and key not in taken:
            row[key] = _finite(metric.value)
    taken |= set(row)
    for key, value in params.items():
        if key in _TYPED_PARAMS or key in ("task", "config_id"):
            continue
        row[key if key not in taken else f"param.{key}"] = value
    for key, value in tags.items():
        if key.startswith("mlflow.") or key in (RUN_KIND_TAG, CONFIG_ID_TAG, SEED_TAG, "arm"):
            continue
        if key in _TAG_FALLBACK or key == "task":
            continue
        row[f"tag.{key}"] = value
    timestamps = [m.timestamp for m in metrics]
    updated = max([info.start_time or 0, info.end_time or 0, *timestamps])
    row["updated"] = updated
    per_epoch = [latest[k] for k in HISTORY_KEYS if k in latest]
    history_key = [
        epochs_logged,
        max((m.step for m in per_epoch), default=0),
        max((m.timestamp for m in per_epoch), default=0),
    ]
    digest = hashlib.sha1(
        json.dumps(
            [
                sorted(params.items()),
                sorted(tags.items()),
                sorted((m.key, m.value, m.step, m.timestamp) for m in metrics),
            ],
            default=str,
        ).encode()
    ).hexdigest()
    task = params.get("task") or tags.get("task") or UNKNOWN_TASK
    state = {
        "task": task,
        "status": info.status,
        "end_time": info.end_time,
        "updated": updated,
        "epochs_logged": epochs_logged,
        "history_key": history_key,
        "digest": digest,
    }
    return row, state


def _rest_store(client: MlflowClient):
    # MlflowClient exposes no bulk history call; its store does (a RestStore for http(s) URIs,
    # a SqlAlchemyStore for sqlite). Returns None when neither is available.
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if store is None:
        return None
    if hasattr(store, "_call_endpoint") and hasattr(store, "get_host_creds"):
        return store
    if callable(getattr(store, "get_metric_history_bulk_interval", None)):
        return store
    return None


def _bulk(store, run_ids: Sequence[str], key: str) -> Iterator[tuple[str, str, int, float, int]]:
    """(run_id, key, step, value, timestamp) of `key` for up to 100 runs, in one request."""
    if hasattr(store, "_call_endpoint"):
        from mlflow.protos.service_pb2 import GetMetricHistoryBulkInterval
        from mlflow.utils.proto_json_utils import message_to_json

        request = GetMetricHistoryBulkInterval(
            run_ids=list(run_ids), metric_key=key, max_results=_BULK_MAX_RESULTS
        )
        response = store._call_endpoint(GetMetricHistoryBulkInterval, message_to_json(request))
        for m in response.metrics:
            yield m.run_id, key, m.step, m.value, m.timestamp
        return
    found = store.get_metric_history_bulk_interval(
        run_ids=list(run_ids),
        metric_key=key,
        max_results=_BULK_MAX_RESULTS,
        start_step=None,
        end_step=None,
    )
    for m in found:
        yield m.run_id, key, m.step, m.value, m.timestamp


def _fetch_histories(
    client: MlflowClient, run_ids: Sequence[str], epochs_logged: Mapping[str, int]
) -> tuple[pd.DataFrame, int]:
    """The history rows of `run_ids` and the number of MLflow requests made for them."""
    points: list[tuple[str, str, int, float, int]] = []  # (run_id, key, step, value, ts)
    requests = 0
    store = _rest_store(client)
    # The bulk call samples beyond 2,500 points per run: such long runs go one by one.
    bulk_ids = [r for r in run_ids if store is not None and epochs_logged[r] < _BULK_MAX_RESULTS]
    in_bulk = set(bulk_ids)
    single_ids = [r for r in run_ids if r not in in_bulk]
    for start in range(0, len(bulk_ids), _BULK_RUNS):
        chunk = bulk_ids[start : start + _BULK_RUNS]
        for key in HISTORY_KEYS:
            requests += 1
            points.extend(_bulk(store, chunk, key))
    for run_id in single_ids:
        for key in HISTORY_KEYS:
            requests += 1
            points.extend(
                (run_id, key, m.step, m.value, m.timestamp)
                for m in client.get_metric_history(run_id, key)
            )
    long = pd.DataFrame(points, columns=["run_id", "key", "epoch", "value", "ts"])
    return _wide_history(long), requests


def _wide_history(long: pd.DataFrame) -> pd.DataFrame:
    """Long (run_id, key, epoch, value, ts) points -> one row per (run_id, epoch)."""
    if long.empty:
        return _empty_frame(HISTORY_COLUMNS)
    long = long[long["epoch"] >= 1]
    # A retried log may have stored a value twice at one step: the newest one counts.
    long = long.sort_values("ts", kind="stable").drop_duplicates(
        ["run_id", "key", "epoch"], keep="last"
    )
    wide = long.pivot(index=["run_id", "epoch"], columns="key", values="value")
    if EPOCH_METRIC in wide.columns:
        # Epochs are the ones whose bookkeeping marker is in MLflow; runs without any marker
        # (not written by study.tracking) keep every step they have.
        with_marker = wide.groupby(level="run_id")[EPOCH_METRIC].transform("count") > 0
        wide = wide[wide[EPOCH_METRIC].notna() | ~with_marker]
    wide = wide.reindex(columns=list(EPOCH_METRICS))
    values = np.array(wide.to_numpy(dtype=float))
    values[~np.isfinite(values) | (np.abs(values) >= _INF_STANDIN)] = np.nan
    out = pd.DataFrame(values, columns=list(EPOCH_METRICS))
    index = wide.index.to_frame(index=False)
    out.insert(0, "epoch", index["epoch"].to_numpy(dtype=np.int64))
    out.insert(0, "run_id", index["run_id"].to_numpy())
    return out


# --------------------------------------------------------------------------------------------
# Writing the dataset


def _quote(value: str) -> str:
    return quote(str(value), safe="")


def _manifest_path(root: Path, experiment: str) -> Path:
    return root / "manifests" / f"experiment={_quote(experiment)}.json"


def _partition_dir(root: Path, table: str, experiment: str, task: str) -> Path:
    return root / table / f"experiment={_quote(experiment)}" / f"task={_quote(task)}"


def _batch_file(root: Path, table: str, experiment: str, task: str, batch: str) -> Path:
    return _partition_dir(root, table, experiment, task) / f"part-{batch}.parquet"


def _empty_manifest(experiment: str, experiment_id: str | None) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "experiment": experiment,
        "experiment_id": experiment_id,
        "tracking_uri": None,
        "exported_at": None,
        "batches": {},
        "runs": {},
    }


@contextlib.contextmanager
def _locked(root: Path, experiment: str) -> Iterator[None]:
    path = _manifest_path(root, experiment).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write) -> None:
    """Write through `write(tmp_path)` to a temporary sibling, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def _write_table(path: Path, table: pa.Table) -> None:
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, separators=(",", ":"), sort_keys=True)
    _atomic_write(
        _manifest_path(root, manifest["experiment"]),
        lambda tmp: tmp.write_text(text, encoding="utf-8"),
    )


def _read_manifest(root: Path, experiment: str) -> dict[str, Any] | None:
    path = _manifest_path(root, experiment)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise ExportError(f"dataset manifest {path} is not valid JSON: {err}") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise ExportError(
            f"dataset manifest {path} has format {manifest.get('format')!r}, expected "
            f"{FORMAT_VERSION}: export into a fresh directory"
        )
    return manifest


def _all_manifests(root: Path) -> list[dict[str, Any]]:
    folder = root / "manifests"
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("experiment=*.json")):
        manifest = json.loads(path.read_text(encoding="utf-8"))
        found.append(manifest)
    return found


def _manifests_for(root: Path, experiment: str | Sequence[str] | None) -> list[dict[str, Any]]:
    if experiment is None:
        manifests = _all_manifests(root)
        if not manifests:
            raise ExportError(f"no exported dataset in {root}")
        return manifests
    names = [experiment] if isinstance(experiment, str) else list(dict.fromkeys(experiment))
    manifests = []
    for name in names:
        manifest = _read_manifest(root, name)
        if manifest is None:
            raise ExportError(f"no exported dataset of experiment {name!r} in {root}")
        manifests.append(manifest)
    return manifests


def _empty_frame(columns: Mapping[str, pa.DataType]) -> pd.DataFrame:
    return pa.schema(list(columns.items())).empty_table().to_pandas()


def _column_type(name: str, values: pd.Series) -> pa.DataType:
    if name in RUN_COLUMNS:
        return RUN_COLUMNS[name]
    if name in HISTORY_COLUMNS:
        return HISTORY_COLUMNS[name]
    if name.startswith(("tag.", "param.")):
        return pa.string()
    if pd.api.types.is_bool_dtype(values):
        return pa.bool_()
    if pd.api.types.is_integer_dtype(values):
        return pa.int64()
    if pd.api.types.is_float_dtype(values):
        return pa.float64()
    if pd.api.types.is_datetime64_any_dtype(values):
        return _TS
    non_null = values.dropna()
    if all(isinstance(v, bool | np.bool_) for v in non_null):
        return pa.bool_()
    if all(isinstance(v, int | float | np.number) for v in non_null):
        return pa.float64()
    # Params and tags are strings in MLflow; so is anything else we cannot type.
    return pa.string()


def _to_arrow_values(values: pd.Series, kind: pa.DataType) -> pa.Array:
    if kind == _TS:
        if not pd.api.types.is_datetime64_any_dtype(values):
            values = pd.to_datetime(values, unit="ms", utc=True)
        elif values.dt.tz is None:
            values = values.dt.tz_localize("UTC")
        return pa.array(values).cast(_TS, safe=False)
    if kind in (pa.string(), pa.bool_(), pa.int64()):
        try:
            return pa.array(values, type=kind, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            convert = {pa.string(): str, pa.bool_(): bool, pa.int64(): int}[kind]
            return pa.array([None if _missing(v) else convert(v) for v in values], type=kind)
    return pa.array(pd.to_numeric(values, errors="coerce").to_numpy(dtype=float), type=kind)


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _table(frame: pd.DataFrame, fixed: Mapping[str, pa.DataType]) -> pa.Table:
    """An Arrow table with the fixed columns first (typed, present even if empty), then the
    others sorted; the partition columns are left out."""
    # A dynamic column with no value here is left out: its type is unknown, and reading
    # fills it with nulls from the files that have it.
    names = list(fixed) + sorted(
        c
        for c in frame.columns
        if c not in fixed and c not in PARTITION_COLUMNS and frame[c].notna().any()
    )
    arrays, fields = [], []
    for name in names:
        if name in frame.columns:
            kind = fixed.get(name) or _column_type(name, frame[name])
            arrays.append(_to_arrow_values(frame[name], kind))
        else:
            kind = fixed[name]
            arrays.append(pa.nulls(len(frame), type=kind))
        fields.append(pa.field(name, kind))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _apply(
    root: Path,
    manifest: dict[str, Any],
    *,
    new_runs: pd.DataFrame,
    new_history: pd.DataFrame,
    reuse_history: Sequence[str],
    removed: Sequence[str],
    states: Mapping[str, Mapping[str, Any]],
    max_runs_per_file: int,
    tracking_uri: str | None,
    replace_all: bool = False,
) -> tuple[int, int]:
    """Write the new and changed runs, rewrite the batches they leave, commit the manifest.

    Returns (files written, files deleted).
    """
    experiment = manifest["experiment"]
    runs_meta: dict[str, dict] = manifest["runs"]
    batches: dict[str, dict] = manifest["batches"]
    replaced = set(new_runs["run_id"]) if not new_runs.empty else set()
    gone = replaced | set(removed)
    if replace_all:
        touched = set(batches)
    else:
        touched = {runs_meta[r]["batch"] for r in gone if r in runs_meta}
    reuse = set(reuse_history)

    # Per task: rows carried over from the touched batches, plus the new ones.
    carried_runs: list[pd.DataFrame] = []
    carried_history: list[pd.DataFrame] = []
    for batch in [] if replace_all else sorted(touched):
        old_runs, old_history = _read_batch(root, experiment, batch, batches[batch]["task"])
        carried = old_runs[~old_runs["run_id"].isin(gone)]
        carried_runs.append(carried)
        keep_ids = set(carried["run_id"]) | reuse
        carried_history.append(old_history[old_history["run_id"].isin(keep_ids)])
    all_runs = pd.concat([*carried_runs, new_runs], ignore_index=True, sort=False)
    if "run_id" not in all_runs.columns:  # nothing left, nothing new
        all_runs = pd.DataFrame({"run_id": pd.Series(dtype=str), "task": pd.Series(dtype=str)})
    all_history = pd.concat([*carried_history, new_history], ignore_index=True, sort=False)
    if "task" in all_history.columns:
        all_history = all_history.drop(columns=["task"])
    tasks = set(all_runs["task"].astype(str))

    # Compaction: small batches of a touched task are folded into this write.
    small = [
        b
        for b, meta in batches.items()
        if b not in touched and meta["task"] in tasks and meta["runs"] < max_runs_per_file // 4
    ]
    if len(small) >= 8:
        extra = [_read_batch(root, experiment, b, batches[b]["task"]) for b in small]
        all_runs = pd.concat([all_runs, *(r for r, _ in extra)], ignore_index=True, sort=False)
        all_history = pd.concat([all_history, *(h for _, h in extra)], ignore_index=True)
        touched |= set(small)

    history_by_run = (
        all_history.groupby("run_id", sort=False).indices if not all_history.empty else {}
    )
    written = 0
    new_batches: dict[str, dict] = {}
    for task in sorted(tasks):
        task_runs = all_runs[all_runs["task"].astype(str) == task]
        order = [c for c in ("config_id", "seed", "run_id") if c in task_runs.columns]
        task_runs = task_runs.sort_values(order, kind="stable", na_position="last")
        for start in range(0, len(task_runs), max_runs_per_file):
            chunk = task_runs.iloc[start : start + max_runs_per_file]
            batch = f"{time.time_ns():x}-{uuid.uuid4().hex[:8]}"
            rows = [history_by_run[r] for r in chunk["run_id"] if r in history_by_run]
            index = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
            hist = all_history.iloc[index].sort_values(["run_id", "epoch"], kind="stable")
            _write_table(
                _batch_file(root, "history", experiment, task, batch), _table(hist, HISTORY_COLUMNS)
            )
            _write_table(
                _batch_file(root, "runs", experiment, task, batch), _table(chunk, RUN_COLUMNS)
            )
            written += 2
            new_batches[batch] = {"task": task, "runs": len(chunk), "history_rows": len(hist)}
            for run_id in chunk["run_id"]:
                meta = runs_meta.get(run_id, {})
                state = states.get(run_id)
                if state is not None:
                    meta = {**state}
                meta["batch"] = batch
                meta["task"] = task
                runs_meta[run_id] = meta

    for run_id in removed:
        runs_meta.pop(run_id, None)
    for batch in touched:
        batches.pop(batch, None)
    batches.update(new_batches)
    manifest["format"] = FORMAT_VERSION
    manifest["tracking_uri"] = tracking_uri
    manifest["exported_at"] = _now_ms()
    _write_manifest(root, manifest)  # the commit point
    return written, _delete_orphans(root, manifest)


def _read_batch(
    root: Path, experiment: str, batch: str, task: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs (with their ``task`` column) and the history rows of one batch."""
    runs = pq.read_table(_batch_file(root, "runs", experiment, task, batch)).to_pandas()
    history = pq.read_table(_batch_file(root, "history", experiment, task, batch)).to_pandas()
    return runs.assign(task=task), history


def _delete_orphans(root: Path, manifest: Mapping[str, Any]) -> int:
    """Delete data files of `manifest`'s experiment that it does not name (replaced batches,
    leftovers of an interrupted export). Only called with the experiment's lock held."""
    experiment = manifest["experiment"]
    live = {
        _batch_file(root, table, experiment, meta["task"], batch)
        for batch, meta in manifest["batches"].items()
        for table in ("runs", "history")
    }
    deleted = 0
    for table in ("runs", "history"):
        base = root / table / f"experiment={_quote(experiment)}"
        if not base.is_dir():
            continue
        for path in base.glob("task=*/*"):
            if (
                path.is_file()
                and path not in live
                and (path.name.startswith(("part-", ".tmp-")) and path.suffix == ".parquet")
            ):
                path.unlink()
                deleted += 1
        for folder in base.glob("task=*"):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
    return deleted


# --------------------------------------------------------------------------------------------
# Reading the dataset


def _partitioning() -> ds.Partitioning:
    schema = pa.schema([(name, pa.string()) for name in PARTITION_COLUMNS])
    return ds.partitioning(schema, flavor="hive")


def _read_table(root: Path, table: str, files: list[Path], fixed: Mapping[str, pa.DataType]):
    if not files:
        return _empty_frame({"experiment": pa.string(), "task": pa.string(), **fixed})
    schemas = [pq.read_schema(f) for f in files]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    for name in PARTITION_COLUMNS:
        schema = schema.append(pa.field(name, pa.string()))
    dataset = ds.dataset(
        [str(f) for f in files],
        schema=schema,
        format="parquet",
        partitioning=_partitioning(),
        partition_base_dir=str(root / table),
    )
    frame = dataset.to_table().to_pandas()
    leading = [*PARTITION_COLUMNS, *fixed]
    return frame[leading + [c for c in frame.columns if c not in leading]]


def _load_files(
    root: Path, manifests: Iterable[Mapping[str, Any]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    run_files: list[Path] = []
    history_files: list[Path] = []
    for manifest in manifests:
        for batch, meta in sorted(manifest["batches"].items()):
            run_files.append(_batch_file(root, "runs", manifest["experiment"], meta["task"], batch))
            history_files.append(
                _batch_file(root, "history", manifest["experiment"], meta["task"], batch)
            )
    runs = _read_table(root, "runs", run_files, RUN_COLUMNS)
    history = _read_table(root, "history", history_files, HISTORY_COLUMNS)
    return runs, history


def _now_ms() -> int:
    return int(time.time() * 1000)
