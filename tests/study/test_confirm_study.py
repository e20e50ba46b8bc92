"""Confirmation on fresh seeds and the study's correction, end to end (issue 20): a tiny
copying grid search of two h-detach configurations on real local Ray, Optuna and an MLflow
sqlite store, then the selected configuration and vanilla on seeds the search never saw."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.confirm import fresh_seeds, selected
from study.options import OptionsError, StudyOptions
from trainables.contract import (
    ADJUSTED_DECISION_TAG,
    CONFIRM_STAGE,
    CONFIRM_SUFFIX,
    CONFIRMED,
    CORRECTION_TAG,
    FAMILY_CHILD_METRICS,
    H_DETACH,
    P_ADJUSTED_METRIC,
    P_VALUE_METRIC,
    SELECTION_BIASED,
    SELECTION_TAG,
    STAGE_TAG,
    VANILLA,
)

ROOT = Path(__file__).resolve().parents[2]
GRID = """\
search: grid
trials: 2
p_values: [0.25, 0.5]
lr_values: [0.01]
clip_values: [true]
"""
TINY = ["--task", "copying", "--preset", "smoke", "--seeds", "2", "--cpus-per-trial", "1"]
TINY += ["--max-concurrent", "2", "--set", "train_size=400", "--set", "val_size=100"]
TINY += ["--set", "transfer_size=50", "--set", "batches_per_epoch=5", "--epochs", "2"]


def _study(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    config = tmp_path / "grid.yaml"
    config.write_text(GRID)
    args = [sys.executable, str(ROOT / "study" / "run.py"), "--config", str(config), *TINY]
    args += ["--storage-path", str(tmp_path / "runs"), "--experiment", "tiny", "--verbose", "1"]
    args += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *extra]
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)


def _runs(client: MlflowClient, experiment: str, kind: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    return client.search_runs([exp.experiment_id], f"tags.run_kind = '{kind}'", max_results=500)


@pytest.mark.slow
def test_the_selected_configuration_is_confirmed_on_fresh_seeds(tmp_path):
    done = _study(tmp_path, "--confirm-seeds", "2", "--correction", "bh")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    search = _runs(client, "tiny", "child")
    confirm = _runs(client, "tiny" + CONFIRM_SUFFIX, "child")
    search_seeds = {int(r.data.tags["seed"]) for r in search}
    confirm_seeds = {int(r.data.tags["seed"]) for r in confirm}
    assert search_seeds == {0, 1} and confirm_seeds == {2, 3}
    assert {r.data.tags["arm"] for r in confirm} == {VANILLA, H_DETACH}
    assert all(r.data.tags[STAGE_TAG] == CONFIRM_STAGE for r in confirm)
    parents = {r.data.tags["config_id"]: r for r in _runs(client, "tiny", "parent")}
    chosen = [r for r in parents.values() if r.data.tags.get(SELECTION_TAG) == CONFIRMED]
    assert len(chosen) == 1
    confirmed_hd = {r.data.tags["config_id"] for r in confirm if r.data.tags["arm"] != VANILLA}
    assert confirmed_hd == {chosen[0].data.tags["config_id"]}
    for r in parents.values():  # raw and adjusted p-values on each h-detach parent
        if r.data.tags["arm"] == VANILLA:
            continue
        assert r.data.tags[CORRECTION_TAG] == "bh"
        assert r.data.metrics[P_ADJUSTED_METRIC] >= r.data.metrics[P_VALUE_METRIC]
        assert r.data.tags[ADJUSTED_DECISION_TAG] == "undecided"  # 2 seeds decide nothing
    for r in search:  # the same figures on each h-detach child run: the report reads them
        if r.data.tags["arm"] == VANILLA:
            continue
        parent = parents[r.data.tags["config_id"]].data
        for metric, key in FAMILY_CHILD_METRICS.items():
            if key != ADJUSTED_DECISION_TAG:
                assert r.data.metrics[metric] == parent.metrics[key]
        assert r.data.tags[CORRECTION_TAG] == "bh"
    assert "biased upward" in done.stdout
    assert "Confirmation on 2 fresh seeds (2..3" in done.stdout
    assert "Verdict (confirmed on fresh seeds): undecided" in done.stdout
    assert "correction bh" in done.stdout
    # resumed after it finished: the confirmation is taken up again, not run a second time
    again = _study(tmp_path, "--confirm-seeds", "2", "--correction", "bh", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = _runs(client, "tiny" + CONFIRM_SUFFIX, "child")
    assert sorted(r.info.run_id for r in rerun) == sorted(r.info.run_id for r in confirm)
    assert "Confirmation on 2 fresh seeds (2..3" in again.stdout


def test_confirmation_seeds_follow_every_seed_the_search_may_use():
    assert fresh_seeds(StudyOptions(seeds=3, seed_offset=10, confirm_seeds=4)) == [13, 14, 15, 16]
    auto = StudyOptions(seeds="auto", min_seeds=4, max_seeds=12, confirm_seeds=2)
    assert fresh_seeds(auto) == [12, 13]
    listed = StudyOptions(seeds=2, seed_list=[7, 3], confirm_seeds=2)
    assert fresh_seeds(listed) == [8, 9]


def test_only_a_search_of_several_configurations_selects_one():
    rows = [
        {"config_id": "hd_a", "arm": "h_detach", "objective": 0.9},
        {"config_id": "vanilla", "arm": "vanilla", "objective": 0.95},
        {"config_id": "hd_b", "arm": "h_detach", "objective": 0.8},
    ]
    assert selected(rows)["config_id"] == "hd_a"
    assert selected(rows[:2]) is None


@pytest.mark.parametrize("value", [1, -1, True, 2.5])
def test_bad_confirm_seeds_are_rejected_naming_the_value(value):
    with pytest.raises(OptionsError, match="confirm_seeds must be 0"):
        StudyOptions(confirm_seeds=value).validate()


def test_the_label_without_confirmation_is_selection_biased():
    assert SELECTION_BIASED == "selection-biased"
