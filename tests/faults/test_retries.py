"""Issue 21, failure 4: an error a retry cannot fix is not retried.

Tune retries a failed trial ``--max-failures`` times (2 by default). That is right for a killed
worker, and wrong for a corrupt checkpoint, a full disk or an invalid configuration: every
retry meets the same error. Here one trial's worker is killed (a fault a retry fixes) after
every checkpoint of its trial was truncated (one it does not): Tune restarts the trial once,
the restart finds the checkpoint corrupt, and the trial fails there, without a third attempt;
the driver's one line names the corrupt file. The other trials finish with every epoch once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.study.test_study import (
    _children,
    _cmdline,
    _kill_session,
    _pids,
    _start,
    _steps,
    _study_args,
    _trial_states,
)


def _workers(session: int) -> list[int]:
    return [p for p in _pids() if "ImplicitFunc" in _cmdline(p) and _sid(p) == session]


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _trial_of(worker: int) -> str | None:
    """The trial a worker runs: Tune runs it in the trial's working directory."""
    try:
        return Path(os.readlink(f"/proc/{worker}/cwd")).name
    except OSError:
        return None


def _runs_now(trial_dir: Path, pid: int, last_epoch: int = 3) -> bool:
    """Whether ``pid`` runs the trial of ``trial_dir`` now, early enough to be interrupted:
    the trial's last result came from that process, is not its last (``done``), and is at
    most ``last_epoch``. With ``reuse_actors`` a worker goes on to other trials, and the one
    its working directory names may have finished (a kill would then hit another trial)."""
    try:
        lines = (trial_dir / "result.json").read_text().strip().splitlines()
        last = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return False
    if not last or last.get("done"):
        return False
    return last.get("pid") == pid and last.get("epoch", 0) <= last_epoch


def _candidate(session: int, trials_dir: Path) -> tuple[int, str] | None:
    """A worker and the running trial it owns that has a checkpoint, read without stopping
    anything (cheap enough to poll many times a second)."""
    for pid in _workers(session):
        name = _trial_of(pid)
        if name is None or not _runs_now(trials_dir / name, pid):
            continue  # a reused worker's directory can name a trial it ran before
        if any((trials_dir / name).glob("checkpoint_*/trainer.pt")):
            return pid, name
    return None


def _corrupt_a_running_trial(session: int, trials_dir: Path) -> str | None:
    """Freeze every trial worker, truncate each checkpoint of one running trial that has
    some, kill that trial's worker, let the others go on. The trial's name, or None when no
    running trial has a checkpoint yet (checked again once the workers are frozen)."""
    if _candidate(session, trials_dir) is None:
        return None
    workers = _workers(session)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        found = _candidate(session, trials_dir)
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
        # Poll the trial directories, not MLflow: an epoch takes a fraction of a second here,
        # and a trial is killable only between its first checkpoint and its fourth epoch.
        deadline, trial = time.monotonic() + 600, None
        while trial is None:
            trial = _corrupt_a_running_trial(proc.pid, trials_dir)
            if trial is None:
                assert proc.poll() is None, f"study exited ({proc.returncode}) before the kill"
                assert time.monotonic() < deadline, "no running trial with a checkpoint"
                time.sleep(0.02)
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
