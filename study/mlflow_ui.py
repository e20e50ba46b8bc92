"""What a person sees on opening a study in the MLflow UI: the experiment opens on its training
runs, the console says where they are, and each parent run says in a few lines what it is.

* MLflow 3 opens an experiment on its GenAI overview (traces, token usage: empty here). The
  experiment's ``mlflow.experimentKind`` tag set to ``custom_model_development`` (the UI's
  machine-learning kind) opens it on its runs in UIs that read the tag (``experiment_tags``).
  The 3.17 UI has a GenAI / Model training switch instead, which decides and defaults to GenAI
  (the tag is then ignored; seen in headless Chromium, tests/study/test_mlflow_ui.py); its
  ``workflowType=machine_learning`` URL parameter selects Model training for that page.
* ``runs_location``: the runs table's address,
  ``<tracking ui>/#/experiments/<id>/runs?workflowType=machine_learning``, for an http(s)
  tracking server; for a local store (sqlite, files) the ``mlflow ui`` command that serves it,
  then that page on the command's default address.
* ``describe_parents``: each parent run's ``mlflow.note.content`` (the run page's
  description, Markdown): the configuration, its seeds and its verdict against vanilla, from
  the rows of the end-of-study summary (``study/summary.py``), so the note and the console
  table say the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from study.tracking import StudyTracker
from trainables.contract import PARENT, TERMINAL_STATUSES, VANILLA

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: The MLflow 3 UI's machine-learning experiment kind (its other kinds are GenAI ones).
TRAINING_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"
#: Where ``mlflow ui`` serves when given no --host/--port.
MLFLOW_UI_DEFAULT = "http://127.0.0.1:5000"

__all__ = ["describe_parents", "experiment_tags", "parent_note", "runs_location"]


def experiment_tags() -> dict[str, str]:
    """Experiment tags that make the MLflow UI open the study on its runs."""
    return {EXPERIMENT_KIND_TAG: TRAINING_KIND}


def runs_location(tracking_uri: str, experiment_id: str) -> str:
    """Where the study's runs table is: a URL, or the command that serves it and the URL."""
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {tracking_uri}, then open {MLFLOW_UI_DEFAULT}/{page}"


def parent_note(row: Mapping[str, object], task: str, preset: str) -> str:
    """The description of one configuration's parent run (Markdown), from its summary row."""
    arm = str(row.get("arm", "?"))
    lines = [
        f"**{row['config_id']}**: {arm}"
        + ("" if arm == VANILLA else f" p={row.get('p_detach', '?')}")
        + f", lr {row.get('lr', '?')}, clip {row.get('clip', '?')}; {task}, preset {preset}."
    ]
    seeds = int(row.get("seeds", 0) or 0)
    seeds_line = f"Seeds: {seeds}"
    if row.get("baseline"):
        seeds_line += f", {row.get('pairs', 0)} paired with vanilla `{row['baseline']}`"
    lines.append(seeds_line + ".")
    metric = str(row.get("metric", "best_val_acc"))
    mean, base = _number(row.get("mean")), _number(row.get("baseline_mean"))
    if math.isfinite(mean):
        value = f"Mean {metric} over seeds {_show(metric, mean)}"
        if math.isfinite(base):
            value += f", vanilla {_show(metric, base)}"
        if math.isfinite(_number(row.get("p_better"))):
            value += f", P(better than vanilla) {float(row['p_better']):.2f}"
        lines.append(value + ".")
    lines.append(_verdict(row, arm))
    return "  \n".join(lines)


def describe_parents(
    tracker: StudyTracker, rows: Sequence[Mapping[str, object]], task: str, preset: str
) -> int:
    """Write each finished parent run's note from its summary row; returns how many."""
    parents = {p.config_id: p for p in tracker.find_runs(PARENT)}
    written = 0
    for row in rows:
        parent = parents.get(str(row["config_id"]))
        # A parent still running (an interrupted study) gets its note when the study ends.
        if parent is None or parent.status not in TERMINAL_STATUSES:
            continue
        note = parent_note(row, task, preset)
        tracker.finish(parent.run_id, {}, parent.status, tags={NOTE_TAG: note})
        written += 1
    return written


def _verdict(row: Mapping[str, object], arm: str) -> str:
    if arm == VANILLA:
        return "Verdict: none (the vanilla baseline the h-detach configurations pair with)."
    decision = row.get("decision_adjusted") or row.get("decision")
    if not decision:
        return "Verdict: not tested (fewer than two paired seeds)."
    p, q = _number(row.get("p_value")), _number(row.get("p_adjusted"))
    tests = f"p = {p:.3g}" if math.isfinite(p) else ""
    if math.isfinite(q):
        tests += f", {row.get('correction', 'adjusted')}-adjusted {q:.3g}"
    return f"Verdict against vanilla: {decision}" + (f" ({tests})." if tests else ".")


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _show(metric: str, value: float) -> str:
    return f"{100 * value:.2f}%" if metric == "best_val_acc" else f"{value:.4g}"
