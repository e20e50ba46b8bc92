"""Issue 21, failures 2 and 7: one study, one driver; a new sqlite store raced by two.

Real drivers (``python study/run.py`` with its embedded local Ray), a real sqlite store and a
real ``mlflow server``: a second driver on a running study exits 2 naming the holder and
the first finishes with every epoch exactly once; a remote claim whose holder is gone is
taken over with a warning; two studies that open one new sqlite file at once both run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.study.test_study import ENV, RUN, _children, _start, _steps, _study_args, _wait_for


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_a_second_driver_on_a_running_study_exits_2_naming_the_holder(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = _study_args(tmp_path, "--tracking-uri", uri, "--experiment", "one", epochs=3, batches=60)
    first = _start(args, tmp_path)
    client = MlflowClient(uri)
    try:
        _wait_for(
            lambda: (
                (tmp_path / "mlflow.db").exists()
                and client.get_experiment_by_name("one") is not None
                and _children(client, "one")
            ),
            600,
            "the first driver's runs",
            first,
        )
        # Another batch name: a separate Tune directory, the same MLflow study.
        second = subprocess.run(
            [*args, "--run-name", "again"], cwd=tmp_path, env=ENV, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr[-3000:]
        line = _one_line(second)
        assert f"pid {first.pid}" in line and "'one'" in line, line
        assert first.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    children = _children(client, "one")
    assert len(children) == 6  # 3 configurations x 2 seeds, none twice
    for child in children:
        assert _steps(client, child.info.run_id, "val_acc") == [1, 2, 3]
    assert not (tmp_path / "runs" / "one" / "again").exists()


def test_a_remote_claim_refuses_a_second_driver_and_a_stale_one_is_taken_over(
    tmp_path, mlflow_server
):
    from trainables import locking
    from trainables.locking import HEARTBEAT_TAG, OWNER_TAG, LockHeld, StudyLock

    with StudyLock(mlflow_server, "claimed"):
        result = subprocess.run(
            [*RUN, "--task", "copying", "--tracking-uri", mlflow_server, "--experiment",
             "claimed", "--storage-path", str(tmp_path / "runs"), "--verbose", "0"],
            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr[-3000:]
        assert "claimed by pid" in _one_line(result)
        with pytest.raises(LockHeld):
            StudyLock(mlflow_server, "claimed").__enter__()
    assert not (tmp_path / "runs").exists()

    # A holder that died without releasing: its heartbeat stops, and once stale it yields.
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("claimed").experiment_id
    dead = {"token": "dead", "pid": 999999, "host": "gone", "since": "then", "command": "x"}
    client.set_experiment_tag(exp, OWNER_TAG, json.dumps(dead))
    client.set_experiment_tag(exp, HEARTBEAT_TAG, str(time.time() - locking.STALE_S - 5))
    with pytest.warns(RuntimeWarning, match="taking over the claim of pid 999999 .* silent"):
        with StudyLock(mlflow_server, "claimed") as lock:
            owner = json.loads(client.get_experiment(exp).tags[OWNER_TAG])
            assert owner["token"] == lock.token
    assert OWNER_TAG not in client.get_experiment(exp).tags  # released on exit


_FIRST_USE = """
import sys, time
from study.tracking import StudyTracker
start = float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
StudyTracker(sys.argv[1], sys.argv[2]).start()
"""


@pytest.mark.slow
def test_two_studies_opening_a_new_sqlite_store_at_once_both_run(tmp_path):
    for attempt in range(2):  # the race is a window of a second or two: try it a few times
        uri = f"sqlite:///{tmp_path / f'new{attempt}.db'}"
        start = time.time() + 8  # both interpreters are up and importing done by then
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _FIRST_USE, uri, f"study-{k}", str(start)],
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for k in range(2)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
        names = {e.name for e in MlflowClient(uri).search_experiments()}
        assert {"study-0", "study-1"} <= names
