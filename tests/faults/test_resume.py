"""Issue 21, failures 1 and 3: Ctrl-C and ``--resume`` leave one study in one store.

Real drivers on the copying smoke preset shrunk to seconds: Ctrl-C (SIGINT to the driver)
exits 130 with the resume command once Tune has saved its state, and the resumed study ends
with every epoch exactly once; a study resumed against another tracking store than its runs
are in is refused (exit 2, saying how to move it) and neither store is touched.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from tests.study.test_study import (
    ENV,
    _children,
    _kill_session,
    _start,
    _steps,
    _study_args,
    _wait_for,
)


def _child_at_epoch(client: MlflowClient, db, experiment: str, epoch: int):
    def check():
        if not db.exists() or client.get_experiment_by_name(experiment) is None:
            return None
        return [c for c in _children(client, experiment) if c.data.metrics.get("epoch", 0) >= epoch]

    return check


def _interrupted(args: list[str], cwd, db, experiment: str) -> MlflowClient:
    """Start the study, Ctrl-C it once an epoch is logged (it exits 130 after Tune saved its
    state); the client of its store."""
    proc = _start(args, cwd)
    client = MlflowClient(f"sqlite:///{db}")
    try:
        _wait_for(_child_at_epoch(client, db, experiment, 1), 600, "a trained epoch", proc)
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends the foreground driver
        assert proc.wait(timeout=300) == 130, (cwd / "driver.log").read_text()[-3000:]
    finally:
        _kill_session(proc.pid)
    return client


@pytest.mark.slow
def test_ctrl_c_exits_130_with_the_resume_command_and_resume_finishes_the_study(tmp_path):
    db = tmp_path / "mlflow.db"
    uri, epochs = f"sqlite:///{db}", 6
    args = _study_args(
        tmp_path, "--tracking-uri", uri, "--experiment", "ctrlc", epochs=epochs, batches=150
    )
    client = _interrupted(args, tmp_path, db, "ctrlc")
    last = (tmp_path / "driver.log").read_text().strip().splitlines()[-1]
    assert "interrupted: rerun with --resume" in last and "--experiment ctrlc" in last, last
    assert "Tuner.restore" not in (tmp_path / "driver.log").read_text()
    unfinished = [c for c in _children(client, "ctrlc") if c.info.status != "FINISHED"]
    assert unfinished, "the study ended before it was interrupted"

    resumed = subprocess.run(
        [*args, "--resume"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    children = _children(client, "ctrlc")
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    for child in children:  # every epoch exactly once
        assert _steps(client, child.info.run_id, "val_acc") == list(range(1, epochs + 1))


@pytest.mark.slow
def test_resume_against_another_store_is_refused_and_writes_nothing(tmp_path):
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    args = _study_args(tmp_path, "--experiment", "moved", epochs=6, batches=150)
    proc = _start([*args, "--tracking-uri", f"sqlite:///{old}"], tmp_path)
    client = MlflowClient(f"sqlite:///{old}")
    try:
        _wait_for(_child_at_epoch(client, old, "moved", 2), 600, "two trained epochs", proc)
    finally:
        _kill_session(proc.pid)  # the driver and its local Ray, without warning
    proc.wait(timeout=60)
    before = {
        c.info.run_id: _steps(client, c.info.run_id, "val_acc") for c in _children(client, "moved")
    }

    resumed = subprocess.run(
        [*args, "--tracking-uri", f"sqlite:///{new}", "--resume"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    lines = resumed.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--tracking-uri sqlite:///{old}" in lines[0], lines
    assert "move the study" in lines[0]
    assert not new.exists()
    after = {
        c.info.run_id: _steps(client, c.info.run_id, "val_acc") for c in _children(client, "moved")
    }
    assert after == before

    # and with the store it was started with, it resumes and finishes there
    done = subprocess.run(
        [*args, "--tracking-uri", f"sqlite:///{old}", "--resume"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    children = _children(client, "moved")
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    for child in children:
        assert _steps(client, child.info.run_id, "val_acc") == [1, 2, 3, 4, 5, 6]
