"""Issue 21, failure 1 (every runtime location): a resumed study reads its data where the
resuming command says, also in the trials Tune restores with the run options saved when they
were created, and keeps its Optuna study where the command says. A ``seq_mnist`` study on a
small MNIST is interrupted (Ctrl-C), the data folder is moved, and ``--resume --data-dir <new
place>`` finishes every seed with every epoch once (before, each restored trial looked for the
data in the old place and failed); a study whose Optuna journal moved resumes with
``--optuna-storage <new place>`` and tells Optuna every configuration there (before, Tune's
saved searcher wrote a fresh journal at the old path).
"""

from __future__ import annotations

import subprocess

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tests.faults.test_resume import _interrupted
from tests.study.test_study import (
    ENV,
    FIXED,
    RUN,
    _children,
    _steps,
)
from tests.trainables.idx_files import write_mnist_raw

EPOCHS = 12


def _args(tmp_path, data_dir) -> list[str]:
    config = tmp_path / "study.yaml"
    config.write_text(FIXED)
    return [
        *RUN, "--config", str(config), "--task", "seq_mnist", "--preset", "smoke",
        "--seeds", "2", "--cpus-per-trial", "1", "--max-concurrent", "2", "--verbose", "0",
        "--set", "train_size=500", "--set", "val_size=100", "--set", "test_size=100",
        "--epochs", str(EPOCHS), "--storage-path", str(tmp_path / "runs"),
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--experiment", "located",
        "--data-dir", str(data_dir),
    ]  # fmt: skip


@pytest.mark.slow
def test_a_resumed_study_reads_its_data_and_optuna_study_where_the_resuming_command_says(
    tmp_path,
):
    """One study, both locations moved while it was interrupted (one study run instead of
    two: the fault suite's time counts against CI's)."""
    old, new = tmp_path / "data", tmp_path / "moved" / "data"
    write_mnist_raw(old, n_train=600, n_test=100)
    db = tmp_path / "mlflow.db"
    client = _interrupted(_args(tmp_path, old), tmp_path, db, "located")
    started = {c.info.run_id for c in _children(client, "located")}
    unfinished = [c for c in _children(client, "located") if c.info.status != "FINISHED"]
    assert unfinished, "the study ended before it was interrupted"

    new.parent.mkdir()
    old.rename(new)  # the data moved (another disk, another mount point)
    old_journal = tmp_path / "runs" / "located" / "main.optuna.journal"
    new_journal = tmp_path / "elsewhere" / "study.journal"
    new_journal.parent.mkdir()
    old_journal.rename(new_journal)  # and the Optuna journal
    resumed = subprocess.run(
        [*_args(tmp_path, new), "--optuna-storage", str(new_journal), "--resume"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    errors = [f.read_text()[-1500:] for f in (tmp_path / "runs").rglob("error.txt")]
    assert resumed.returncode == 0, (resumed.stderr[-2000:], errors)
    children = _children(client, "located")
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    assert started <= {c.info.run_id for c in children}  # the restored trials' runs went on
    for child in children:  # every epoch exactly once
        assert _steps(client, child.info.run_id, "val_acc") == list(range(1, EPOCHS + 1))
    assert not old_journal.exists(), "the resumed study wrote a journal at its first path"
    study = optuna.load_study(
        study_name="located/main", storage=JournalStorage(JournalFileBackend(str(new_journal)))
    )
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2, states  # both h-detach configs
