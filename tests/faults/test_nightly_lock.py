"""Issue 21, failure 2 for the nightly: its lock is per (tracking store, experiment).

Two nightly configurations that differ only in ``reports_dir`` used to both take the same
fresh seeds of one experiment (every epoch logged twice). Now the nightly holds the study lock
of each of its experiments, the same lock a study driver takes: a second nightly and a study
driver on that experiment exit 2 naming the holder, while the nightly's own batches (started
with its token) run under it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from hdetach import nightly
from tests.study.test_study import ENV, RUN
from trainables.locking import LOCK_TOKEN_ENV

NIGHTLY = [sys.executable, "-m", "hdetach.nightly"]


def _config(tmp_path, reports: str) -> str:
    path = tmp_path / f"{reports}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "storage_path": str(tmp_path / "runs"),
                "reports_dir": str(tmp_path / reports),
                "preset": "smoke",
                "seeds": 1,
                "batches": [
                    {
                        "experiment": "nightly-exp",
                        "task": "copying",
                        "configs": [{"p_detach": 0.25, "lr": 0.01}],
                    }
                ],
            }
        )
    )
    return str(path)


def test_a_second_nightly_and_a_study_on_a_held_experiment_exit_2(tmp_path):
    first = nightly.load_config(_config(tmp_path, "reports-a"))
    with nightly._single_instance(first) as token:
        second = subprocess.run(
            [*NIGHTLY, "--config", _config(tmp_path, "reports-b")],
            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr[-3000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {os.getpid()}" in lines[0], lines
        assert "'nightly-exp'" in lines[0]
        assert not (tmp_path / "reports-b").exists()

        study = [
            *RUN, "--task", "copying", "--experiment", "nightly-exp", "--tracking-uri",
            first.tracking_uri, "--storage-path", str(tmp_path / "runs"), "--verbose", "0",
        ]  # fmt: skip
        driver = subprocess.run(
            study, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
        )
        assert driver.returncode == 2 and f"pid {os.getpid()}" in driver.stderr, driver.stderr
        assert not (tmp_path / "runs").exists()

        # A batch of this nightly (started with its token) runs under the lock.
        take = (
            "import sys; from trainables.locking import StudyLock; "
            "lock = StudyLock(sys.argv[1], 'nightly-exp').__enter__(); "
            "assert lock.inherited; print('inherited')"
        )
        for env, expected in (({**ENV, LOCK_TOKEN_ENV: token}, 0), (ENV, 1)):
            batch = subprocess.run(
                [sys.executable, "-c", take, first.tracking_uri],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert batch.returncode == expected, batch.stderr[-2000:]
