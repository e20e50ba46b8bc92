"""Bad names, values past their bounds and corrupt stores: exit 2, one line, nothing written.

Issue 21, failures 5 (names become paths), 6 (values past the checks) and 4 (a corrupt
store). Each command runs the real ``python study/run.py`` in a subprocess; the tiny study
options make a command that wrongly passes the checks finish (and fail the test) in seconds.
"""

from __future__ import annotations

import resource
import subprocess

import pytest

from tests.study.test_study import ENV, RUN

TINY = ["--task", "copying", "--preset", "smoke", "--seeds", "1", "--epochs", "1"]
TINY += ["--set", "batches_per_epoch=1", "--set", "train_size=100", "--set", "val_size=50"]
TINY += ["--set", "transfer_size=10", "--verbose", "0", "--storage-path", "base/runs"]


def _limit_memory() -> None:
    # A check that builds a billion seeds must fail here, not take the machine with it.
    resource.setrlimit(resource.RLIMIT_DATA, (6 << 30, 6 << 30))


def _run(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "base").mkdir(exist_ok=True)
    return subprocess.run(
        [*RUN, *TINY, "--tracking-uri", "sqlite:///base/mlflow.db", *extra],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_memory,
    )


def _assert_refused(tmp_path, result, needle: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr[-3000:]
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == ["base"], written  # nothing inside the base, nothing beside it


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--experiment", "../../../escape"], "experiment"),
        (["--experiment", "/tmp/absolute-escape"], "experiment"),
        (["--experiment", "a/b"], "experiment"),
        (["--experiment", "x" * 300], "experiment"),
        (["--experiment", "."], "experiment"),
        (["--run-name", ".."], "run_name"),
        (["--run-name", "a\\b"], "run_name"),
        (["--run-name", "bad\nname"], "run_name"),
    ],
)
def test_a_name_that_is_not_a_name_exits_2(tmp_path, extra, needle):
    _assert_refused(tmp_path, _run(tmp_path, *extra), needle)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--search", "grid", "--lr-values", "1e308"], "lr"),
        (["--lr-range", "1e-4,1e30"], "lr"),
        (["--seeds", "1000000000"], "seeds"),
        (["--epochs", "100000000000000000000"], "epochs"),
        (["--set", "batches_per_epoch=10000000000000"], "batches_per_epoch"),
        (["--set", "hidden_size=1000000000"], "hidden_size"),
        (["--seed-offset", "10000000000000000000000"], "seed"),
        (["--seeds", "auto", "--budget-hours", "1e300"], "budget_hours"),
        (["--trials", "100000000000"], "trials"),
    ],
)
def test_a_value_past_its_bound_exits_2_before_anything_starts(tmp_path, extra, needle):
    _assert_refused(tmp_path, _run(tmp_path, *extra), needle)


def test_a_corrupt_sqlite_store_is_named_in_one_line(tmp_path):
    (tmp_path / "base").mkdir()
    db = tmp_path / "base" / "mlflow.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 40)  # a truncated database file
    result = _run(tmp_path, "--experiment", "corrupt")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(db) in lines[0], lines
    assert not (tmp_path / "base" / "runs").exists()
