"""Reading a study's child runs from MLflow: one paged search, one runs-table row and one
change-detection state per run, and per-epoch histories fetched in bulk.

Used by :mod:`dashboards.export`; the rows follow the schema of :mod:`dashboards.dataset`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from dashboards.dataset import BOOL_FINALS, FLOAT_FINALS, HISTORY_COLUMNS, RUN_COLUMNS
from trainables.contract import (
    CHILD,
    CONFIG_ID_TAG,
    EPOCH_MARKER,
    EPOCH_METRICS,
    RUN_KIND_TAG,
    SEED_TAG,
    TASK_EPOCH_METRICS,
    arm_of,
    epoch_metrics_of,
)

UNKNOWN_TASK = "unknown"
HISTORY_METRICS = (*EPOCH_METRICS, *TASK_EPOCH_METRICS)
HISTORY_KEYS = (*HISTORY_METRICS, EPOCH_MARKER)
#: MLflow's SQL stores keep +/-inf as +/-1.797e308; anything this large was not finite.
_INF_STANDIN = 1e308
_PAGE_SIZE = 2_500
_BULK_RUNS = 100  # GetMetricHistoryBulkInterval: at most 100 run ids per request
_BULK_MAX_RESULTS = 2_500  # ... and at most 2,500 points per run (more are sampled)

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
_NOT_RUN_METRICS = frozenset(HISTORY_KEYS) | {"last_epoch"}


def search_children(client: MlflowClient, experiment_id: str) -> tuple[list[Run], int]:
    found: list[Run] = []
    token, requests = None, 0
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{RUN_KIND_TAG} = '{CHILD}'",
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


def run_row(run: Run, problems: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The runs-table row of one MLflow run, and its change-detection state."""
    info, params, tags = run.info, run.data.params, run.data.tags
    run_id = info.run_id
    # RunData.metrics holds values only; the timestamps and steps are on the protobuf.
    metrics = list(run.data.to_proto().metrics)
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
    derived = None
    if row.get("p_detach") is not None or row.get("c_detach") is not None:
        derived = arm_of(*(row.get(k) or 0.0 for k in ("p_detach", "c_detach", "damp")))
    row["arm"] = tags.get("arm") or derived
    marker = latest.get(EPOCH_MARKER)
    epochs_logged = int(marker.value) if marker is not None else 0
    row["epochs_logged"] = epochs_logged
    last = latest.get("last_epoch")
    row["last_epoch"] = int(last.value) if last is not None and math.isfinite(last.value) else (
        epochs_logged
    )  # fmt: skip
    for key in FLOAT_FINALS:
        row[key] = _finite(latest[key].value) if key in latest else math.nan
    for key in BOOL_FINALS:
        row[key] = bool(latest[key].value) if key in latest else None
    taken = set(RUN_COLUMNS) | {"experiment", "task"}
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
    updated = max([info.start_time or 0, info.end_time or 0, *(m.timestamp for m in metrics)])
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
    state = {
        "task": params.get("task") or tags.get("task") or UNKNOWN_TASK,
        "status": info.status,
        "end_time": info.end_time,
        "updated": updated,
        "epochs_logged": epochs_logged,
        "history_key": history_key,
        "digest": digest,
    }
    return row, state


def _bulk_history(client: MlflowClient, run_ids: Sequence[str], key: str) -> Iterator[tuple]:
    """(run_id, key, step, value, timestamp) of `key` for up to 100 runs in one request.

    The one MLflow call without a public client method: the bulk history endpoint the MLflow
    UI uses (``GetMetricHistoryBulkInterval``), through the client's store: the REST store's
    endpoint for http(s) URIs, the SQL store's method for sqlite. Raises ``LookupError`` when
    the store has neither (the caller then asks run by run).
    """
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if hasattr(store, "_call_endpoint") and hasattr(store, "get_host_creds"):
        from mlflow.protos.service_pb2 import GetMetricHistoryBulkInterval
        from mlflow.utils.proto_json_utils import message_to_json

        request = GetMetricHistoryBulkInterval(
            run_ids=list(run_ids), metric_key=key, max_results=_BULK_MAX_RESULTS
        )
        found = store._call_endpoint(GetMetricHistoryBulkInterval, message_to_json(request))
        found = found.metrics
    elif callable(getattr(store, "get_metric_history_bulk_interval", None)):
        found = store.get_metric_history_bulk_interval(
            run_ids=list(run_ids), metric_key=key, max_results=_BULK_MAX_RESULTS,
            start_step=None, end_step=None,
        )  # fmt: skip
    else:
        raise LookupError("this MLflow store has no bulk metric history")
    for m in found:
        yield m.run_id, key, m.step, m.value, m.timestamp


def fetch_histories(
    client: MlflowClient,
    run_ids: Sequence[str],
    epochs_logged: Mapping[str, int],
    tasks: Mapping[str, str],
) -> tuple[pd.DataFrame, int]:
    """The history rows of `run_ids` and the number of MLflow requests made for them.

    A run's keys are the per-epoch metrics of its task (``tasks[run_id]``) and the epoch
    marker.
    """
    points: list[tuple] = []  # (run_id, key, step, value, ts)
    requests = 0

    def keys_of(run_id: str) -> tuple[str, ...]:
        return (*epoch_metrics_of(tasks[run_id]), EPOCH_MARKER)

    # The bulk call samples beyond 2,500 points per run: such long runs go one by one.
    bulk_ids = [r for r in run_ids if epochs_logged[r] < _BULK_MAX_RESULTS]
    groups: dict[tuple[str, ...], list[str]] = {}
    for run_id in bulk_ids:
        groups.setdefault(keys_of(run_id), []).append(run_id)
    try:
        for keys, ids in groups.items():
            for start in range(0, len(ids), _BULK_RUNS):
                for key in keys:
                    requests += 1
                    points.extend(_bulk_history(client, ids[start : start + _BULK_RUNS], key))
    except LookupError:
        points, requests, bulk_ids = [], 0, []
    in_bulk = set(bulk_ids)
    for run_id in (r for r in run_ids if r not in in_bulk):
        for key in keys_of(run_id):
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
        return pd.DataFrame({name: pd.Series(dtype=object) for name in HISTORY_COLUMNS})
    long = long[long["epoch"] >= 1]
    # A retried log may have stored a value twice at one step: the newest one counts.
    long = long.sort_values("ts", kind="stable").drop_duplicates(
        ["run_id", "key", "epoch"], keep="last"
    )
    wide = long.pivot(index=["run_id", "epoch"], columns="key", values="value")
    if EPOCH_MARKER in wide.columns:
        # Epochs are the ones whose bookkeeping marker is in MLflow; runs without any marker
        # (not written by the study) keep every step they have.
        with_marker = wide.groupby(level="run_id")[EPOCH_MARKER].transform("count") > 0
        wide = wide[wide[EPOCH_MARKER].notna() | ~with_marker]
    wide = wide.reindex(columns=list(HISTORY_METRICS))
    values = np.array(wide.to_numpy(dtype=float))
    values[~np.isfinite(values) | (np.abs(values) >= _INF_STANDIN)] = np.nan
    out = pd.DataFrame(values, columns=list(HISTORY_METRICS))
    index = wide.index.to_frame(index=False)
    out.insert(0, "epoch", index["epoch"].to_numpy(dtype=np.int64))
    out.insert(0, "run_id", index["run_id"].to_numpy())
    return out
