"""``--seeds auto`` end to end: a real tiny study on local Ray decides one configuration at
its first look and runs the other to ``--max-seeds``; killed between looks, it resumes to the
same decisions on the same seeds.

The two configurations are chosen so that the answer is known in advance: with the decision
metric ``detached_fraction`` (the share of steps whose h_{t-1} was blocked, at the last
epoch), p_detach=1 differs from its vanilla baseline by exactly 1 on every seed, and
p_detach=1e-9 blocks no step in a run this short, so it equals the baseline on every seed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pairedstats import shape
from tests.study.test_study import ENV, ROOT, RUN, _children, _kill_session, _start, _steps

CONFIGS = """\
search: fixed
configs:
  - {p_detach: 1.0, lr: 0.01, clip: true}
  - {p_detach: 1.0e-9, lr: 0.01, clip: true}
"""
CLEAR, NULL = "hd_p1_lr1.000e-02_clip", "hd_p1e-09_lr1.000e-02_clip"
BASELINE = "vanilla_p0_lr1.000e-02_clip"
EPOCHS = 2


def _args(tmp_path: Path, uri: str, experiment: str) -> list[str]:
    (tmp_path / "study.yaml").write_text(CONFIGS)
    return [
        *RUN, "--config", str(tmp_path / "study.yaml"), "--task", "copying",
        "--preset", "smoke", "--seeds", "auto", "--min-seeds", "6", "--seed-block", "2",
        "--max-seeds", "8", "--decision-metric", "detached_fraction",
        "--seeds-per-trial", "2", "--cpus-per-trial", "1", "--max-concurrent", "2",
        "--epochs", str(EPOCHS), "--set", "batches_per_epoch=15", "--set", "train_size=500",
        "--set", "val_size=100", "--set", "transfer_size=50", "--set", "hidden_size=16",
        "--tracking-uri", uri, "--experiment", experiment,
        "--storage-path", str(tmp_path / "runs"), "--verbose", "0",
    ]  # fmt: skip


def _parents(client: MlflowClient, experiment: str) -> dict:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.run_kind = 'parent'")
    return {r.data.tags["config_id"]: r for r in runs}


def _seeds_by_config(client: MlflowClient, experiment: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for child in _children(client, experiment):
        out.setdefault(child.data.tags["config_id"], []).append(int(child.data.tags["seed"]))
    return {k: sorted(v) for k, v in out.items()}


def _check_outcome(client: MlflowClient, experiment: str) -> None:
    seeds = _seeds_by_config(client, experiment)
    assert seeds == {CLEAR: list(range(6)), NULL: list(range(8)), BASELINE: list(range(8))}
    for child in _children(client, experiment):  # each epoch exactly once
        assert child.info.status == "FINISHED"
        assert _steps(client, child.info.run_id, "val_acc") == list(range(1, EPOCHS + 1))
    parents = _parents(client, experiment)
    clear, null = parents[CLEAR], parents[NULL]
    assert clear.data.tags["decision"] == "better" and clear.data.tags["stopped_by"] == "decided"
    assert clear.data.metrics["decided_at_look"] == 1 and clear.data.metrics["seeds_used"] == 6
    assert clear.data.metrics["mean_difference"] == pytest.approx(1.0)
    assert clear.data.metrics["trial_seconds"] > 0
    assert null.data.tags["decision"] == "undecided"
    assert null.data.tags["stopped_by"] == "max_seeds" and null.data.metrics["seeds_used"] == 8
    assert null.data.tags["seeds"] == ",".join(map(str, range(8)))
    assert all(p.info.status == "FINISHED" for p in parents.values())


@pytest.mark.slow
def test_a_clear_configuration_stops_at_the_first_look_a_null_one_at_max_seeds(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        _args(tmp_path, uri, "auto"), cwd=tmp_path, env=ENV, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _check_outcome(MlflowClient(uri), "auto")

    # The report shows the outcome: decision, look, seeds, compute and the fixed design.
    report = [str(Path(sys.executable).with_name("hdetach-study")), "report", "--experiment"]
    out = tmp_path / "report"
    made = subprocess.run(
        [*report, "auto", "--tracking-uri", uri, "--out", str(out)],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    html = (out / "index.html").read_text()
    table = html[
        html.index('id="sequential-table"') : html.index(
            "</table>", html.index('id="sequential-table"')
        )
    ]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 2, table
    clear = next(r for r in rows if CLEAR in r)
    assert "<td>better</td><td>decided</td>" in clear and '<td class="num">6</td>' in clear
    null = next(r for r in rows if NULL in r)
    assert "<td>undecided</td><td>max_seeds</td>" in null and '<td class="num">8</td>' in null
    _the_planner_reads_the_study_as_a_pilot(tmp_path, uri)


def _the_planner_reads_the_study_as_a_pilot(tmp_path: Path, uri: str) -> None:
    """``hdetach-study plan`` on the finished study (its own pilot run would cost 40 s of CI):
    seeds and hours per configuration, the shape gate's floor, one-line refusals."""
    plan = [sys.executable, "-m", "study.plan", "--tracking-uri", uri]
    out = subprocess.run(
        [*plan, "--experiment", "auto", "--effect", "0.01", "--json", str(tmp_path / "p.json")],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = {r["config_id"]: r for r in json.loads((tmp_path / "p.json").read_text())}
    assert set(rows) == {CLEAR, NULL}
    assert rows[CLEAR]["pairs"] == 6 and rows[NULL]["pairs"] == 8
    for row in rows.values():
        assert row["effect"] == 0.01 and row["seconds_per_seed"] > 0
        # the shape gate's count from the pilot's pooled skewness (both configurations)
        assert row["pilot_pooled_values"] == 14
        if row["pilot_skewness"] is not None:
            need = math.ceil(max(2, shape.K * row["pilot_skewness"] ** 2))
            assert row["gate_pairs_needed"] == need
        if row["sd_difference"] > 0:
            assert row["fixed_seeds"] >= 2 and 0 <= row["sequential_power"] <= 1
            floor = max(row["power_seeds"] or 0, row["gate_pairs_needed"] or 0)
            assert row["fixed_seeds"] >= floor
            assert row["fixed_hours"] == pytest.approx(
                2 * row["fixed_seeds"] * row["seconds_per_seed"] / 3600
            )
    assert CLEAR in out.stdout and NULL in out.stdout
    if rows[CLEAR]["pilot_skewness"] is not None:
        assert "shape gate: the pilot's differences have pooled skewness" in out.stdout

    for extra, needle in (
        (["--experiment", "nope"], "no experiment 'nope'"),
        (["--experiment", "auto", "--power", "1.5"], "power must be in (0, 1), got 1.5"),
    ):
        bad = subprocess.run([*plan, *extra], cwd=ROOT, env=ENV, capture_output=True, text=True)
        assert bad.returncode == 2 and needle in bad.stderr and len(bad.stderr.splitlines()) == 1
    missing = tmp_path / "none.db"
    bad = subprocess.run(
        [sys.executable, "-m", "study.plan", "--tracking-uri", f"sqlite:///{missing}",
         "--experiment", "auto"], cwd=ROOT, env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "no MLflow database" in bad.stderr and not missing.exists()


@pytest.mark.slow
def test_a_driver_killed_between_looks_resumes_to_the_same_decisions(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    args = _args(tmp_path, uri, "auto-kill")
    proc = _start(args, tmp_path)
    client = MlflowClient(uri)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:  # the first look has decided CLEAR; NULL is mid-way
            if proc.poll() is not None:
                break
            if db.exists() and client.get_experiment_by_name("auto-kill") is not None:
                parent = _parents(client, "auto-kill").get(CLEAR)
                if parent is not None and parent.data.tags.get("decision") == "better":
                    break
            time.sleep(0.2)
        # At once: Tune's last snapshot of the searcher may predate the look, so the resumed
        # driver may take that look again from the same data (and must decide the same).
    finally:
        _kill_session(proc.pid)
    proc.wait(timeout=60)
    finished = [c for c in _children(client, "auto-kill") if c.info.status == "FINISHED"]
    assert sum(c.data.tags["config_id"] == NULL for c in finished) < 8, (
        "the study ended before it could be killed"
    )

    resumed = subprocess.run(
        [*args, "--resume"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _check_outcome(client, "auto-kill")
