"""Issue 21, failure 4 as the report meets it: ``hdetach-study report`` ends every failure in
one line. Bad input (a missing or corrupt tracking store, a truncated Parquet file or dataset
state) exits 2 naming the file; a failure while the report runs (here a full disk, through a
file-size limit) exits 1 naming the cause and the log that holds the traceback, and leaves no
half-written report behind (``--since latest`` would take it for the newest report)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dashboards import cli as report_cli
from dashboards import dataset
from tests.dashboards.test_report import EXPERIMENT, write_data

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--resamples", "300", "--max-curves", "5"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _store(tmp_path: Path, experiment: str) -> Path:
    db = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").create_experiment(experiment)
    return db


def test_a_full_disk_while_writing_the_report_exits_1_with_the_cause_and_the_log(tmp_path):
    data, out = tmp_path / "data", tmp_path / "reports" / "r"
    write_data(data, range(3))
    limit = 100_000  # bytes per file: the dataset reads, the report's page does not fit

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "dashboards.cli", "--experiment", EXPERIMENT, "--data-dir",
         str(data), "--no-export", "--out", str(out), *QUICK],
        cwd=ROOT, capture_output=True, text=True, preexec_fn=small_files, timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"report: error: disk full writing {out} (File too large)")
    log = Path(lines[0].rsplit("(traceback in ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path and "Traceback" in log.read_text()
    assert not out.exists(), "a half-written report was left behind"


def test_a_missing_tracking_store_exits_2_and_creates_none(tmp_path, capsys):
    db = tmp_path / "nowhere.db"
    argv = ["--experiment", "x", "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path)]
    assert report_cli.main(argv) == 2
    assert "no MLflow database at" in _one_line(capsys) and not db.exists()


@pytest.mark.parametrize("how", ["truncated", "malformed"])
def test_a_corrupt_tracking_store_exits_2_naming_it(tmp_path, capsys, how):
    db = _store(tmp_path, "e")
    capsys.readouterr()  # MLflow's own lines as it made the store
    data = bytearray(db.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # a whole file whose pages are garbage: only sqlite itself can tell
        data[4096:-4096] = bytes(range(256)) * ((len(data) - 8192) // 256) + b"\0" * (
            (len(data) - 8192) % 256
        )
    db.write_bytes(bytes(data))
    argv = ["--experiment", "e", "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "r")]
    assert report_cli.main(argv) == 2
    line = _one_line(capsys)
    assert f"tracking store {db}" in line and ("truncated" in line or "corrupt" in line), line
    assert not (tmp_path / "r").exists()


def test_a_truncated_parquet_file_exits_2_naming_it(tmp_path, capsys):
    data = tmp_path / "data"
    write_data(data, range(2))
    part = sorted(data.rglob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:40])
    argv = ["--experiment", EXPERIMENT, "--data-dir", str(data), "--no-export", *QUICK]
    assert report_cli.main([*argv, "--out", str(tmp_path / "r")]) == 2
    assert f"dataset file {part} is unreadable" in _one_line(capsys)
    assert not (tmp_path / "r").exists()


def test_a_corrupt_dataset_state_exits_2_naming_it(tmp_path, capsys):
    db, data = _store(tmp_path, EXPERIMENT), tmp_path / "data"
    write_data(data, range(2))
    state = dataset.experiment_dir(data, EXPERIMENT) / dataset.STATE_FILE
    state.write_text(state.read_text()[:20])
    capsys.readouterr()  # MLflow's own lines as it made the store
    argv = ["--experiment", EXPERIMENT, "--tracking-uri", f"sqlite:///{db}", "--data-dir"]
    assert report_cli.main([*argv, str(data), "--out", str(tmp_path / "r"), *QUICK]) == 2
    assert f"dataset state {state} is not valid JSON" in _one_line(capsys)
    assert not (tmp_path / "r").exists()
