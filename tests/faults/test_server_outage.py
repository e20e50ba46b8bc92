"""Issue 21, failure 4: an MLflow server that stays away ends the study in one line.

A real ``mlflow server`` (its own, on a sqlite store) is killed while a study logs to it. With
the wait shortened through MLflow's own variables (the study's defaults allow about a minute),
the driver exits 1 with one line naming the server, the resume command and the log file that
holds the traceback. With the server back on the same store, the printed command finishes the
study with every epoch exactly once.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import _free_port, _stop, _wait_healthy
from tests.study.test_study import (
    ENV,
    _children,
    _kill_session,
    _steps,
    _study_args,
    _wait_for,
)

SHORT_WAIT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


def _server(root: Path, port: int) -> subprocess.Popen:
    command = [
        str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    env = {**ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "ab") as log:
        server = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    _wait_healthy(f"http://127.0.0.1:{port}", server, root / "server.log", timeout_s=90)
    return server


@pytest.mark.slow
def test_a_server_that_stays_away_ends_the_study_in_one_line_and_resume_finishes(tmp_path):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _server(tmp_path, port)
    args = _study_args(
        tmp_path, "--tracking-uri", uri, "--experiment", "outage", epochs=6, batches=150
    )
    env = {**ENV, **SHORT_WAIT}
    with open(tmp_path / "driver.log", "w") as log:
        proc = subprocess.Popen(
            args, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=log,
        )  # fmt: skip
    client = MlflowClient(uri)
    try:

        def logging():
            if client.get_experiment_by_name("outage") is None:
                return None
            return [c for c in _children(client, "outage") if c.data.metrics.get("epoch", 0) >= 1]

        _wait_for(logging, 600, "a logged epoch", proc)
        _stop(server)  # the server goes away and stays away
        assert proc.wait(timeout=300) == 1, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        _kill_session(proc.pid)
        _stop(server)
    stderr = (tmp_path / "driver.log").read_text()
    last = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr, stderr[-3000:]  # tracebacks go to the log, not here
    assert f"the MLflow server http://127.0.0.1:{port} is unreachable" in last, last
    assert "rerun with --resume:" in last, last
    log_file = re.search(r"traceback in (\S+)\)", last)
    assert log_file and "Traceback" in Path(log_file.group(1)).read_text(), last

    server = _server(tmp_path, port)  # back, on the same store
    try:
        command = shlex.split(last.split("rerun with --resume: ", 1)[1].split(" (traceback in ")[0])
        assert command[:2] == ["python", "study/run.py"] and "--resume" in command
        resumed = subprocess.run(
            [*args[:2], *command[2:]], cwd=tmp_path, env=ENV, capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        children = _children(client, "outage")
        assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
        for child in children:  # every epoch exactly once
            assert _steps(client, child.info.run_id, "val_acc") == [1, 2, 3, 4, 5, 6]
    finally:
        _stop(server)
