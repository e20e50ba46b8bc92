"""The MLflow UI as a person opens a study: the experiment opens on its runs (checked in the
real UI, served by a real ``mlflow server``, in headless Chromium), the console's runs address
is right for a server and for a local store, and each parent run carries its description."""

from __future__ import annotations

import time
import uuid

import pytest
from mlflow.tracking import MlflowClient

from study.mlflow_ui import (
    EXPERIMENT_KIND_TAG,
    NOTE_TAG,
    TRAINING_KIND,
    describe_parents,
    experiment_tags,
    runs_location,
)
from study.summary import ranked_summary
from study.tracking import StudyTracker
from tests.browser import DevTools


def test_runs_location_for_a_server_and_for_a_local_store():
    page = "#/experiments/7/runs?workflowType=machine_learning"
    assert runs_location("http://10.0.0.5:5000/", "7") == f"http://10.0.0.5:5000/{page}"
    assert runs_location("https://mlflow.lab", "7") == f"https://mlflow.lab/{page}"
    local = runs_location("sqlite:///runs/mlflow.db", "7")
    assert local == (
        f"mlflow ui --backend-store-uri sqlite:///runs/mlflow.db, then open "
        f"http://127.0.0.1:5000/{page}"
    )


def _study(uri: str, tags: dict | None) -> tuple[StudyTracker, list[dict]]:
    """A finished two-configuration study (vanilla and h-detach on three paired seeds)."""
    tracker = StudyTracker(uri, f"ui-{uuid.uuid4().hex[:8]}")
    tracker.start(tags=tags)
    for config_id, p in (("vanilla_p0", 0.0), ("hd_p0.25", 0.25)):
        arm = "h-detach" if p else "vanilla"
        params = {"task": "copying", "arm": arm, "p_detach": p, "lr": 1e-3, "clip": True}
        tags = {"task": "copying", "arm": arm}
        if p:
            tags["baseline_config_id"] = "vanilla_p0"
        parent = tracker.parent_run(config_id, params, tags)
        for seed in range(3):
            child = tracker.child_run(config_id, seed, {**params, "seed": seed}, tags)
            tracker.log_epochs(child, [{"epoch": 1, "val_acc": 0.5 + p + seed / 100}])
            tracker.finish(child, {"best_val_acc": 0.5 + p + seed / 100, "last_epoch": 1})
        tracker.finish(parent, {"objective": 0.5 + p})
    rows, _ = ranked_summary(tracker)
    return tracker, rows


@pytest.mark.slow
def test_parent_runs_carry_configuration_seeds_and_verdict(mlflow_server: str):
    tracker, rows = _study(mlflow_server, experiment_tags())
    assert describe_parents(tracker, rows, "copying", "smoke") == 2
    client = MlflowClient(mlflow_server)
    notes = {
        run.data.tags["config_id"]: run.data.tags.get(NOTE_TAG, "")
        for run in client.search_runs([tracker.experiment_id], "tags.run_kind = 'parent'")
    }
    hd = notes["hd_p0.25"]
    assert hd.startswith("**hd_p0.25**: h-detach p=0.25, lr 0.001, clip True; copying, preset")
    assert "Seeds: 3, 3 paired with vanilla `vanilla_p0`" in hd
    assert "Mean best_val_acc over seeds 76.00%, vanilla 51.00%, P(better than vanilla) 1.00" in hd
    row = next(r for r in rows if r["config_id"] == "hd_p0.25")
    assert f"Verdict against vanilla: {row['decision']}" in hd
    assert "Verdict: none (the vanilla baseline" in notes["vanilla_p0"]


def _landing_hash(chromium: DevTools, url: str, timeout_s: float = 60.0) -> str:
    """Where the MLflow UI ends up after opening ``url`` (its route, once it stops moving)."""
    chromium.send("Page.enable")
    chromium.send("Page.navigate", url=url)
    chromium.wait_for("Page.loadEventFired")
    deadline, last, stable = time.monotonic() + timeout_s, None, 0
    while time.monotonic() < deadline:
        state = chromium.evaluate(
            "location.hash + ' | ' + (document.querySelector('[role=tablist], nav') ? "
            "document.body.innerText.slice(0, 400) : '')"
        )
        stable = stable + 1 if state == last and "|  " not in state else 0
        if stable >= 4:
            return state
        last = state
        time.sleep(0.5)
    return last or ""


@pytest.mark.slow
def test_the_ui_opens_the_study_on_its_runs(mlflow_server: str, chromium: DevTools):
    tracker, _ = _study(mlflow_server, experiment_tags())
    experiment = MlflowClient(mlflow_server).get_experiment(tracker.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    # The printed address lands on the runs table in the UI's Model training mode, whose
    # navigation has Runs and Models (the GenAI mode's starts with Overview, Observability).
    state = _landing_hash(chromium, runs_location(mlflow_server, tracker.experiment_id))
    route, _, text = state.partition(" | ")
    assert route.startswith(f"#/experiments/{tracker.experiment_id}/runs?"), state
    nav = text.split(experiment.name)[1]
    assert "Runs\nModels" in nav and "Overview" not in nav, text
