"""study.tracking against a real `mlflow server` and a real sqlite store: no mocks."""

from __future__ import annotations

import math
import time
import uuid

import pytest
from mlflow.tracking import MlflowClient

from study.tracking import StudyTracker, TrackingError, check_tracking_uri
from trainables.contract import EPOCH_METRICS

METRICS = EPOCH_METRICS


class CountingClient(MlflowClient):
    """The real client, counting its log_batch calls."""

    log_batch_calls = 0

    def log_batch(self, *args, **kwargs):
        self.log_batch_calls += 1
        return super().log_batch(*args, **kwargs)


class LosesResponsesClient(MlflowClient):
    """The real client, whose next log_batch is committed but then reported as failed."""

    lose_next_response = False

    def log_batch(self, *args, **kwargs):
        result = super().log_batch(*args, **kwargs)
        if self.lose_next_response:
            self.lose_next_response = False
            raise ConnectionError("response lost")
        return result


def rows(first: int, last: int, seed: int = 0) -> list[dict]:
    """Per-epoch records as the trainable reports them, distinct per (seed, epoch, metric)."""
    return [
        {"epoch": e, **{m: seed + e / 10 + i / 1000 for i, m in enumerate(METRICS)}}
        for e in range(first, last + 1)
    ]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One database for the module: creating one runs all of MLflow's migrations (seconds).
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/mlflow.db"


@pytest.fixture(params=["server", "sqlite"])
def uri(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("mlflow_server" if request.param == "server" else "sqlite_uri")


def new_experiment_name() -> str:
    # Stores are shared by the module or the session: one experiment per test.
    return f"test-{uuid.uuid4().hex[:12]}"


def test_round_trip_survives_a_restarted_driver(uri: str) -> None:
    name = new_experiment_name()
    tracker = StudyTracker(uri, name)
    experiment_id = tracker.start(tags={"study.task": "copying", "study.command": "run a.yaml"})
    params = {"p_detach": 0.25, "hidden_size": 128}
    parent = tracker.parent_run("cfg-a", params=params, tags={"method": "h-detach"})
    children = {
        seed: tracker.child_run("cfg-a", seed, params={**params, "seed": seed}, tags={"lr": 1e-3})
        for seed in (0, 1)
    }
    for seed, run_id in children.items():
        assert tracker.log_epochs(run_id, rows(1, 3, seed)) == 3
        assert tracker.log_epochs(run_id, rows(4, 5, seed)) == 2

    # A restarted driver replays everything it has, one epoch further.
    again = StudyTracker(uri, name)
    assert again.start(tags={"study.command": "resume", "study.seeds": "2"}) == experiment_id
    assert again.parent_run("cfg-a", params=params, tags={"method": "h-detach"}) == parent
    for seed, run_id in children.items():
        seed_params = {**params, "seed": seed}
        assert again.child_run("cfg-a", seed, params=seed_params, tags={"lr": 1e-3}) == run_id
        assert again.last_epoch(run_id) == 5
        assert again.log_epochs(run_id, rows(1, 6, seed)) == 1
        assert again.log_epochs(run_id, rows(1, 6, seed)) == 0
        again.finish(run_id, {"best_val_acc": 0.9 + seed, "diverged": False}, tags={"stop": "max"})
        again.finish(run_id, {"best_val_acc": 0.9 + seed, "diverged": False}, tags={"stop": "max"})
    aggregate = [
        {"epoch": e, "val_acc_mean": 0.5, "val_acc_min": 0.4, "val_acc_max": 0.6, "seeds": 2}
        for e in range(1, 7)
    ]
    assert again.log_parent_epochs(parent, aggregate[:4]) == 4
    assert again.log_parent_epochs(parent, aggregate) == 2
    again.finish(parent, {"best_val_acc_mean": 0.5})

    client = MlflowClient(uri)
    experiment = client.get_experiment(experiment_id)
    assert experiment.tags["study.task"] == "copying"
    assert experiment.tags["study.command"] == "run a.yaml"  # the first command stays
    assert experiment.tags["study.seeds"] == "2"
    assert len(client.search_runs([experiment_id])) == 3

    found = again.find_runs()
    assert sorted(r.seed for r in found) == [0, 1]
    for run in found:
        assert run.run_id == children[run.seed]
        assert run.parent_run_id == parent
        assert run.tags["mlflow.parentRunId"] == parent
        assert (run.config_id, run.run_kind, run.status) == ("cfg-a", "child", "FINISHED")
        assert run.params == {"p_detach": "0.25", "hidden_size": "128", "seed": str(run.seed)}
        assert run.tags["lr"] == "0.001" and run.tags["stop"] == "max"
        assert run.last_epoch == 6
        assert run.metrics["best_val_acc"] == pytest.approx(0.9 + run.seed)
        assert run.metrics["diverged"] == 0.0
        expected = rows(1, 6, run.seed)
        for key in METRICS:
            got = history(client, run.run_id, key)
            assert [step for step, _ in got] == [1, 2, 3, 4, 5, 6], key
            assert [value for _, value in got] == pytest.approx([r[key] for r in expected])
        assert len(client.get_metric_history(run.run_id, "best_val_acc")) == 1

    (parent_run,) = again.find_runs(run_kind="parent")
    assert (parent_run.run_id, parent_run.config_id, parent_run.seed) == (parent, "cfg-a", None)
    assert parent_run.params == {"p_detach": "0.25", "hidden_size": "128"}
    assert parent_run.tags["method"] == "h-detach" and parent_run.status == "FINISHED"
    assert [s for s, _ in history(client, parent, "val_acc_mean")] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in history(client, parent, "seeds")] == [2.0] * 6


def test_log_epochs_batches_requests(mlflow_server: str) -> None:
    client = CountingClient(mlflow_server)
    tracker = StudyTracker(mlflow_server, new_experiment_name(), client=client)
    tracker.start()
    parent = tracker.parent_run("cfg", params={}, tags={})
    child = tracker.child_run("cfg", 0, params={}, tags={})
    before = client.log_batch_calls
    assert tracker.log_epochs(child, rows(1, 50)) == 50
    # 50 epochs x (7 metrics + the epoch marker) = 400 values: one request.
    assert client.log_batch_calls - before == 1
    assert [s for s, _ in history(client, child, "grad_norm")] == list(range(1, 51))
    assert tracker.log_epochs(child, rows(1, 50)) == 0
    assert client.log_batch_calls - before == 1
    assert tracker.find_runs(run_kind="parent")[0].run_id == parent


def test_large_logs_split_on_whole_epochs(sqlite_uri: str) -> None:
    uri, name = sqlite_uri, new_experiment_name()
    client = CountingClient(uri)
    tracker = StudyTracker(uri, name, client=client)
    tracker.start()
    tracker.parent_run("cfg", params={}, tags={})
    child = tracker.child_run("cfg", 3, params={}, tags={})
    before = client.log_batch_calls
    tracker.log_epochs(child, rows(1, 300))
    # 8 values per epoch, at most 1000 per batch: 125 whole epochs per request.
    assert client.log_batch_calls - before == 3
    assert [s for s, _ in history(client, child, "epoch")] == list(range(1, 301))
    assert [s for s, _ in history(client, child, "val_acc")] == list(range(1, 301))


def test_diverged_run_skips_non_finite_values(mlflow_server: str) -> None:
    name = new_experiment_name()
    tracker = StudyTracker(mlflow_server, name)
    tracker.start()
    tracker.parent_run("cfg", params={}, tags={})
    child = tracker.child_run("cfg", 0, params={}, tags={})
    epochs = rows(1, 4)
    epochs[2].update(train_loss=math.nan, grad_norm=math.inf)
    epochs[3].update({m: math.nan for m in METRICS})
    assert tracker.log_epochs(child, epochs) == 4
    tracker.finish(child, {"diverged": True, "best_val_acc": 0.3, "test_acc_at_best": math.nan})

    client = MlflowClient(mlflow_server)
    assert [s for s, _ in history(client, child, "train_loss")] == [1, 2]
    assert [s for s, _ in history(client, child, "grad_norm")] == [1, 2]
    assert [s for s, _ in history(client, child, "val_acc")] == [1, 2, 3]
    # The epoch marker says epochs 3 and 4 were reported: their missing values were not finite.
    assert [s for s, _ in history(client, child, "epoch")] == [1, 2, 3, 4]
    run = client.get_run(child)
    assert run.data.metrics["diverged"] == 1.0
    assert "test_acc_at_best" not in run.data.metrics
    assert run.info.status == "FINISHED"
    restarted = StudyTracker(mlflow_server, name)
    restarted.start()
    assert restarted.last_epoch(child) == 4


def test_finish_is_a_no_op_twice_and_updates_a_failed_run(sqlite_uri: str) -> None:
    uri, name = sqlite_uri, new_experiment_name()
    client = CountingClient(uri)
    tracker = StudyTracker(uri, name, client=client)
    tracker.start()
    tracker.parent_run("cfg", params={}, tags={})
    child = tracker.child_run("cfg", 0, params={}, tags={})
    tracker.finish(child, {"best_val_acc": 0.2}, status="FAILED", tags={"error": "OOM"})
    calls = client.log_batch_calls
    tracker.finish(child, {"best_val_acc": 0.2}, status="FAILED", tags={"error": "OOM"})
    assert client.log_batch_calls == calls
    assert client.get_run(child).info.status == "FAILED"
    tracker.finish(child, {"best_val_acc": 0.8}, status="FINISHED")
    run = client.get_run(child)
    assert (run.info.status, run.data.metrics["best_val_acc"]) == ("FINISHED", 0.8)
    with pytest.raises(ValueError, match="status must be one of"):
        tracker.finish(child, {}, status="DONE")


def test_a_committed_batch_whose_response_was_lost_is_not_logged_twice(sqlite_uri: str) -> None:
    client = LosesResponsesClient(sqlite_uri)
    tracker = StudyTracker(sqlite_uri, new_experiment_name(), client=client)
    tracker.start()
    tracker.parent_run("cfg", params={}, tags={})
    child = tracker.child_run("cfg", 0, params={}, tags={})
    client.lose_next_response = True
    with pytest.raises(ConnectionError):
        tracker.log_epochs(child, rows(1, 3))
    assert tracker.log_epochs(child, rows(1, 4)) == 1
    assert [s for s, _ in history(client, child, "val_loss")] == [1, 2, 3, 4]


def test_a_deleted_experiment_is_refused(sqlite_uri: str) -> None:
    name = new_experiment_name()
    experiment_id = StudyTracker(sqlite_uri, name).start()
    MlflowClient(sqlite_uri).delete_experiment(experiment_id)
    with pytest.raises(TrackingError, match=f"experiment '{name}' .* is deleted"):
        StudyTracker(sqlite_uri, name).start()


def test_misuse_is_refused(sqlite_uri: str) -> None:
    uri, name = sqlite_uri, new_experiment_name()
    tracker = StudyTracker(uri, name)
    tracker.start()
    with pytest.raises(ValueError, match="call parent_run first"):
        tracker.child_run("cfg", 0, params={}, tags={})
    parent = tracker.parent_run("cfg", params={"p_detach": 0.5}, tags={})
    with pytest.raises(ValueError, match="set by the tracker"):
        tracker.child_run("cfg", 0, params={}, tags={"seed": 1})
    child = tracker.child_run("cfg", 0, params={}, tags={})
    tracker.log_epochs(child, rows(1, 2))
    with pytest.raises(ValueError, match="epoch 4 would leave a gap"):
        tracker.log_epochs(child, rows(4, 4))
    with pytest.raises(ValueError, match="consecutive"):
        tracker.log_epochs(child, [*rows(3, 3), *rows(5, 5)])
    with pytest.raises(ValueError, match="not a parent run"):
        tracker.log_parent_epochs(child, [])
    with pytest.raises(ValueError, match="lacks"):
        tracker.log_parent_epochs(parent, [{"epoch": 1, "val_acc_mean": 0.5}])
    # Same config_id, other configuration: refused, never silently mixed.
    restarted = StudyTracker(uri, name)
    restarted.start()
    for _ in range(2):
        with pytest.raises(TrackingError, match="p_detach='0.5', now '0.25'"):
            restarted.parent_run("cfg", params={"p_detach": 0.25}, tags={})


def test_unreachable_server_is_refused_quickly(tmp_path, monkeypatch, unused_port: int) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{unused_port}"
    started = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable") as error:
        check_tracking_uri(uri, timeout_s=2)
    assert uri in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(TrackingError, match=uri):
        StudyTracker(uri, "never").start()
    assert time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == []


def test_sqlite_uri_needs_an_existing_writable_directory(tmp_path) -> None:
    missing = f"sqlite:///{tmp_path}/no/such/dir/mlflow.db"
    with pytest.raises(TrackingError, match="does not exist") as error:
        check_tracking_uri(missing)
    assert missing in str(error.value)
    with pytest.raises(TrackingError):
        StudyTracker(missing, "never").start()
    assert not (tmp_path / "no").exists()
    check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    assert list(tmp_path.iterdir()) == []  # checking creates nothing
    for bad in ("sqlite://", "sqlite:///:memory:", "postgresql://db/mlflow", ""):
        with pytest.raises(TrackingError):
            check_tracking_uri(bad)


def test_file_store_needs_mlflows_opt_in(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri in (f"file://{tmp_path}/mlruns", "./mlruns"):
        with pytest.raises(TrackingError, match="MLFLOW_ALLOW_FILE_STORE"):
            check_tracking_uri(uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_tracking_uri(f"file://{tmp_path}/mlruns")
    assert list(tmp_path.iterdir()) == []
