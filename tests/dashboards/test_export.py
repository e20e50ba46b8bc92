"""dashboards.export against a real MLflow server (through a counting HTTP proxy) and a real
sqlite store: completeness, incremental fetching, atomic writes. No mocks of MLflow."""

from __future__ import annotations

import http.client
import math
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from mlflow.tracking import MlflowClient

from dashboards import dataset, export, mlflow_runs
from study.tracking import StudyTracker
from trainables.contract import EPOCH_METRICS

CONFIGS = {"cfg-van": 0.0, "cfg-hd": 0.25}
SEEDS = (0, 1, 2)


class CountingClient(MlflowClient):
    """The real client, counting the calls an export makes through it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()

    def search_runs(self, *args, **kwargs):
        self.calls["search_runs"] += 1
        return super().search_runs(*args, **kwargs)

    def get_metric_history(self, *args, **kwargs):
        self.calls["get_metric_history"] += 1
        return super().get_metric_history(*args, **kwargs)


class _Proxy(BaseHTTPRequestHandler):
    """Forwards every request to the MLflow server and records (method, path, query)."""

    upstream: tuple[str, int]
    seen: list[tuple[str, str, dict]]

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        parsed = urlparse(self.path)
        self.seen.append((self.command, parsed.path, parse_qs(parsed.query)))
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def proxy(mlflow_server: str) -> Iterator[tuple[str, list]]:
    """(URI of a proxy in front of the MLflow server, the requests it has seen)."""
    target = urlparse(mlflow_server)
    seen: list[tuple[str, str, dict]] = []
    handler = type("Handler", (_Proxy,), {"upstream": (target.hostname, target.port), "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/mlflow.db"


def epochs(first: int, last: int, seed: int, nan_at: int | None = None) -> list[dict]:
    out = []
    for e in range(first, last + 1):
        row = {"epoch": e, **{m: seed + e / 100 + i / 1000 for i, m in enumerate(EPOCH_METRICS)}}
        if e == nan_at:
            row["val_acc"] = math.nan
        out.append(row)
    return out


def small_study(uri: str, name: str) -> tuple[StudyTracker, dict[tuple[str, int], str]]:
    """2 configurations x 3 seeds, 4 epochs each; seed 1 of cfg-hd has a NaN val_acc at epoch
    3; every run but (cfg-van, 2) is finished with final metrics."""
    tracker = StudyTracker(uri, name)
    tracker.start()
    children = {}
    for config_id, p in CONFIGS.items():
        arm = "h-detach" if p else "vanilla"
        params = {"task": "copying", "p_detach": p, "lr": 1e-3, "clip": True, "seq_len": 100,
                  "epochs": 4, "hidden_size": 128}  # fmt: skip
        tags = {"task": "copying", "arm": arm, "p_detach": p, "lr": 1e-3, "clip": True}
        tracker.parent_run(config_id, params, tags)
        for seed in SEEDS:
            run_id = tracker.child_run(config_id, seed, {**params, "seed": seed}, tags)
            nan_at = 3 if (config_id, seed) == ("cfg-hd", 1) else None
            tracker.log_epochs(run_id, epochs(1, 4, seed, nan_at))
            if (config_id, seed) != ("cfg-van", 2):
                finals = {"best_val_acc": 0.5 + p + seed / 10, "last_epoch": 4, "diverged": 0,
                          "transfer_acc_T200": 0.4 + p}  # fmt: skip
                tracker.finish(run_id, finals, tags={"stop": "max"})
            children[(config_id, seed)] = run_id
    return tracker, children


def data_files(root: Path) -> dict[str, float]:
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*.parquet")
        if p.is_file()
    }


def history_requests(seen: list) -> list[tuple[str, dict]]:
    return [(path, q) for _, path, q in seen if "get-history" in path]


@pytest.mark.slow
def test_export_is_complete_then_incremental(proxy, tmp_path: Path) -> None:
    uri, seen = proxy
    name = f"export-{uuid.uuid4().hex[:8]}"
    tracker, children = small_study(uri, name)
    out = tmp_path / "data"

    # First export: everything.
    client = CountingClient(uri)
    seen.clear()
    result = export.export(uri, name, out, client=client)
    assert (result.runs_total, result.runs_new, result.runs_removed) == (6, 6, 0)
    assert sorted(result.fetched) == sorted(children.values())
    # One bulk request per history metric for all six runs, one search page.
    assert client.calls == Counter({"search_runs": 1})
    assert len(history_requests(seen)) == len(EPOCH_METRICS) + 1

    runs, history = export.load(out, name)
    assert sorted(runs["run_id"]) == sorted(children.values())  # children only, each once
    assert not runs["run_id"].duplicated().any()
    assert set(runs["experiment"]) == {name} and set(runs["task"]) == {"copying"}
    by_key = runs.set_index(["config_id", "seed"])
    assert by_key.loc[("cfg-hd", 2), "p_detach"] == 0.25
    assert by_key.loc[("cfg-hd", 2), "arm"] == "h-detach"
    assert by_key.loc[("cfg-van", 0), "arm"] == "vanilla"
    assert by_key.loc[("cfg-hd", 2), "best_val_acc"] == pytest.approx(0.95)
    assert by_key.loc[("cfg-hd", 2), "transfer_acc_T200"] == pytest.approx(0.65)
    assert bool(by_key.loc[("cfg-hd", 0), "clip"]) is True
    assert by_key.loc[("cfg-hd", 0), "lr"] == pytest.approx(1e-3)
    assert by_key.loc[("cfg-hd", 0), "hidden_size"] == "128"  # other params verbatim
    assert by_key.loc[("cfg-hd", 0), "tag.stop"] == "max"  # other tags, prefixed
    assert by_key.loc[("cfg-hd", 0), "parent_run_id"] == tracker.parent_run("cfg-hd", {}, {})
    unfinished = by_key.loc[("cfg-van", 2)]
    assert unfinished["status"] == "RUNNING" and math.isnan(unfinished["best_val_acc"])
    assert unfinished["last_epoch"] == 4 and pd.isna(unfinished["end_time"])
    assert (runs["updated"] >= runs["start_time"]).all()

    assert len(history) == 6 * 4
    assert not history.duplicated(["run_id", "epoch"]).any()
    assert sorted(history.groupby("run_id")["epoch"].apply(list).tolist()) == [[1, 2, 3, 4]] * 6
    hd1 = history[history["run_id"] == children[("cfg-hd", 1)]].set_index("epoch")
    assert math.isnan(hd1.loc[3, "val_acc"])  # not finite: not logged, read back as NaN
    assert hd1.loc[3, "train_loss"] == pytest.approx(1 + 3 / 100)
    assert hd1.loc[2, "val_acc"] == pytest.approx(1 + 2 / 100 + 2 / 1000)
    assert set(EPOCH_METRICS) <= set(history.columns)

    # Second export, nothing changed: one search page, no history, no file touched.
    files = data_files(out)
    client = CountingClient(uri)
    seen.clear()
    result = export.export(uri, name, out, client=client)
    assert (result.runs_unchanged, result.runs_changed, result.runs_new) == (6, 0, 0)
    assert result.fetched == [] and result.files_written == 0
    assert client.calls == Counter({"search_runs": 1})
    assert history_requests(seen) == []
    assert data_files(out) == files

    # One run gets a fifth epoch: only its history is fetched again.
    grown = children[("cfg-van", 2)]
    tracker.log_epochs(grown, epochs(5, 5, 2))
    seen.clear()
    result = export.export(uri, name, out, client=CountingClient(uri))
    assert (result.runs_changed, result.runs_unchanged) == (1, 5)
    assert result.fetched == [grown]
    asked = history_requests(seen)
    assert len(asked) == len(EPOCH_METRICS) + 1
    assert all(q["run_ids"] == [grown] for _, q in asked)
    runs, history = export.load(out, name)
    assert len(runs) == 6 and len(history) == 6 * 4 + 1
    assert history[history["run_id"] == grown]["epoch"].tolist() == [1, 2, 3, 4, 5]

    # It finishes: new final metrics and status, no new epoch: nothing fetched.
    tracker.finish(grown, {"best_val_acc": 0.77, "last_epoch": 5, "diverged": 0})
    seen.clear()
    result = export.export(uri, name, out)
    assert result.runs_changed == 1 and result.fetched == []
    assert history_requests(seen) == []
    runs, history = export.load(out, name)
    row = runs.set_index("run_id").loc[grown]
    assert row["status"] == "FINISHED" and row["best_val_acc"] == pytest.approx(0.77)
    assert row["last_epoch"] == 5 and not pd.isna(row["end_time"])
    assert len(history) == 6 * 4 + 1

    # A deleted run leaves the dataset.
    MlflowClient(uri).delete_run(children[("cfg-hd", 0)])
    result = export.export(uri, name, out)
    assert result.runs_removed == 1
    runs, history = export.load(out, name)
    assert len(runs) == 5 and children[("cfg-hd", 0)] not in set(history["run_id"])
    assert len(list(out.rglob("*.parquet"))) == 2  # replaced batches are gone

    with pytest.raises(export.ExportError, match="no experiment named"):
        export.export(uri, f"missing-{uuid.uuid4().hex[:6]}", out)
    # An experiment without child runs yet exports to an empty, loadable dataset.
    empty = f"empty-{uuid.uuid4().hex[:6]}"
    MlflowClient(uri).create_experiment(empty)
    assert export.export(uri, empty, out).runs_total == 0
    runs, history = export.load(out, empty)
    assert runs.empty and history.empty and {"run_id", "best_val_acc"} <= set(runs.columns)
    assert len(export.load(out)[0]) == 5  # both experiments together


@pytest.mark.slow
def test_interrupted_export_leaves_previous_dataset(
    sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"export-{uuid.uuid4().hex[:8]}"
    tracker, children = small_study(sqlite_uri, name)
    out = tmp_path / "data"
    export.export(sqlite_uri, name, out)  # the SQL store's bulk history path
    before_runs, before_history = export.load(out, name)
    assert len(before_runs) == 6 and len(before_history) == 24
    grown = children[("cfg-van", 2)]
    tracker.log_epochs(grown, epochs(5, 6, 2))

    # 1. The process dies half-way through writing a data file.
    real_write = ds.write_dataset

    def dies_mid_file(table, where, **kwargs):
        real_write(table.slice(0, max(1, table.num_rows // 2)), where, **kwargs)
        for path in Path(where).rglob("*.parquet"):
            with open(path, "r+b") as handle:
                handle.truncate(100)  # a torn file, no footer
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ds, "write_dataset", dies_mid_file)
    with pytest.raises(KeyboardInterrupt):
        export.export(sqlite_uri, name, out)
    monkeypatch.setattr(ds, "write_dataset", real_write)
    after_runs, after_history = export.load(out, name)
    pd.testing.assert_frame_equal(after_runs, before_runs)
    pd.testing.assert_frame_equal(after_history, before_history)

    # 2. It dies after the data files, before the rename into place (the commit point).
    def dies_before_commit(staging, final, old):
        raise KeyboardInterrupt("killed before commit")

    monkeypatch.setattr(dataset, "_commit", dies_before_commit)
    with pytest.raises(KeyboardInterrupt):
        export.export(sqlite_uri, name, out)
    monkeypatch.undo()
    assert len(list(out.rglob("*.parquet"))) > 2  # new, uncommitted files lie around
    after_runs, after_history = export.load(out, name)
    pd.testing.assert_frame_equal(after_runs, before_runs)
    pd.testing.assert_frame_equal(after_history, before_history)

    # 3. It dies between moving the old dataset aside and moving the new one in: readers find
    # the old one put back.
    def dies_between_renames(staging, final, old):
        os.rename(final, old)
        raise KeyboardInterrupt("killed mid-swap")

    monkeypatch.setattr(dataset, "_commit", dies_between_renames)
    with pytest.raises(KeyboardInterrupt):
        export.export(sqlite_uri, name, out)
    monkeypatch.undo()
    after_runs, after_history = export.load(out, name)
    pd.testing.assert_frame_equal(after_runs, before_runs)
    pd.testing.assert_frame_equal(after_history, before_history)

    # The next export commits the change and sweeps the leftovers.
    result = export.export(sqlite_uri, name, out)
    assert result.fetched == [grown]
    runs, history = export.load(out, name)
    assert history[history["run_id"] == grown]["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert len(list(out.rglob("*.parquet"))) == 2
    assert not list(out.rglob(".tmp-*"))


def test_write_frames_round_trip_with_hive_partitions(tmp_path: Path) -> None:
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "task": ["copying", "copying", "pmnist"],
            "config_id": ["x", "y", "z"],
            "arm": ["vanilla", "h-detach", "vanilla"],
            "seed": [0, 0, 1],
            "p_detach": [0.0, 0.25, 0.0],
            "clip": [True, True, False],
            "best_val_acc": [0.5, 0.9, np.nan],
            "diverged": [False, False, True],
            "transfer_acc_T200": [0.4, 0.6, np.nan],
            "note": ["n1", None, "n3"],
        }
    )
    history = pd.DataFrame(
        {"run_id": ["a", "a", "b", "c"], "epoch": [1, 2, 1, 1], "val_acc": [0.1, 0.2, 0.3, 0.4]}
    )
    odd = "study/one = 1%"  # names travel URI-encoded in the directory names
    export.write_frames(tmp_path, odd, runs, history, max_rows_per_file=1)
    export.write_frames(tmp_path, "other", runs.iloc[:1], history.iloc[:2])
    assert export.experiments(tmp_path) == sorted([odd, "other"])
    assert (tmp_path / "experiment=study%2Fone%20%3D%201%25" / "runs" / "task=pmnist").is_dir()

    got, hist = export.load(tmp_path, odd)
    assert sorted(got["run_id"]) == ["a", "b", "c"] and set(got["experiment"]) == {odd}
    got = got.set_index("run_id")
    assert got.loc["c", "task"] == "pmnist" and bool(got.loc["c", "diverged"]) is True
    assert got.loc["b", "transfer_acc_T200"] == pytest.approx(0.6)
    assert got.loc["a", "note"] == "n1" and pd.isna(got.loc["b", "note"])
    assert math.isnan(got.loc["c", "best_val_acc"])
    assert sorted(hist["val_acc"]) == [0.1, 0.2, 0.3, 0.4]
    assert set(hist.columns) >= {"experiment", "task", "run_id", "epoch", *EPOCH_METRICS}

    both, _ = export.load(tmp_path)
    assert len(both) == 4
    # Replacing an experiment's frames drops what is no longer there.
    export.write_frames(tmp_path, odd, runs.iloc[:2], history.iloc[:3])
    got, hist = export.load(tmp_path, odd)
    assert sorted(got["run_id"]) == ["a", "b"] and len(hist) == 3
    with pytest.raises(export.ExportError, match="no exported dataset"):
        export.load(tmp_path, "absent")
    with pytest.raises(export.ExportError, match="no exported dataset"):
        export.load(tmp_path / "empty")


def test_the_one_store_call_returns_what_the_public_api_returns(sqlite_uri: str) -> None:
    """`mlflow_runs._bulk_history` (the bulk endpoint the MLflow UI uses, reached through the
    client's store) gives, per run, exactly the points `get_metric_history` gives."""
    name = f"bulk-{uuid.uuid4().hex[:8]}"
    _, children = small_study(sqlite_uri, name)
    client = MlflowClient(sqlite_uri)
    run_ids = sorted(children.values())
    for key in ("val_acc", "epoch"):
        bulk = sorted(
            (run_id, step, value) for run_id, _, step, value, _ in
            mlflow_runs._bulk_history(client, run_ids, key)
        )  # fmt: skip
        one_by_one = sorted(
            (run_id, m.step, m.value) for run_id in run_ids
            for m in client.get_metric_history(run_id, key)
        )  # fmt: skip
        assert bulk == one_by_one and len(bulk) == len(run_ids) * 4 - (key == "val_acc")
