"""Issue 21, failure 4: an error a retry cannot fix is not retried.

Tune retries a failed trial ``--max-failures`` times (2 by default). That is right for a killed
worker, and wrong for a corrupt checkpoint, a full disk or an invalid configuration: every
retry meets the same error. Here one trial's worker is killed (a fault a retry fixes) after
every checkpoint of its trial was truncated (one it does not): Tune restarts the trial once,
the restart finds the checkpoint corrupt, and the trial fails there, without a third attempt;
the driver's one line names the corrupt file. The other trials finish with every epoch once.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.study.test_study import (
    _children,
    _kill_session,
    _running_trial,
    _start,
    _steps,
    _study_args,
    _trial_states,
    _wait_for,
    _workers,
)


def _corrupt_a_running_trial(session: int, trials_dir: Path) -> str | None:
    """Freeze every trial worker, truncate each checkpoint of one running trial that has
    some, kill that trial's worker, let the others go on. The trial's name, or None when no
    running trial has a checkpoint yet (checked again once the workers are frozen)."""
    if _running_trial(session, trials_dir) is None:
        return None
    workers = _workers(session)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        found = _running_trial(session, trials_dir)
        if found is None:
            return None
        pid, name = found
        for file in (trials_dir / name).glob("checkpoint_*/trainer.pt"):
            data = file.read_bytes()
            file.write_bytes(data[: len(data) // 2])
        os.kill(pid, signal.SIGKILL)
        return name
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_tried_once_not_max_failures_times(tmp_path):
    experiment, db = "corrupt", tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    args = _study_args(
        tmp_path, "--tracking-uri", uri, "--experiment", experiment, epochs=5, batches=80
    )
    trials_dir = tmp_path / "runs" / experiment / "main"
    proc = _start(args, tmp_path)
    client = MlflowClient(uri)
    try:
        # a trial is killable only between its first checkpoint and its fourth epoch
        trial = _wait_for(
            lambda: _corrupt_a_running_trial(proc.pid, trials_dir),
            600, "a running trial with a checkpoint", proc, every=0.02,
        )  # fmt: skip
        assert proc.wait(timeout=900) == 1, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        _kill_session(proc.pid)

    # Tune's record of the trial: the kill, then one attempt that met the corrupt checkpoint.
    failures = (trials_dir / trial / "error.txt").read_text().split("Failure # ")[1:]
    corrupt = [f for f in failures if "PytorchStreamReader failed" in f]  # torch.load's error
    assert len(corrupt) == 1, f"the corrupt checkpoint was tried {len(corrupt)} times"
    assert len(failures) == 2 and "corrupt checkpoint " in corrupt[0], failures
    assert int(_trial_states(trials_dir)[trial]["num_failures"]) == 2

    last = (tmp_path / "driver.log").read_text().strip().splitlines()[-1]
    assert "1 trials failed (corrupt checkpoint " in last and "trainer.pt" in last, last
    assert "rerun with --resume:" in last, last

    children = _children(client, experiment)
    assert len(children) == 6
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 1 and trial.startswith(failed[0].data.tags["config_id"]), trial
    for child in children:  # the others: every epoch exactly once
        if child.info.status != "FAILED":
            assert child.info.status == "FINISHED"
            assert _steps(client, child.info.run_id, "val_acc") == [1, 2, 3, 4, 5]
