"""Confirmation of a search's selected configuration on fresh seeds (``--confirm-seeds N``).

A configuration chosen because it looked best is biased upward on the seeds that chose it
(the winner's curse: in ``benchmarks/calibration_study.py`` the best of 8 configurations
with no true effect shows +0.24 to +0.36 SD on its search seeds, and its search-stage verdict
says "better" up to twice as often as alpha). So after a search that tested more than one
h-detach configuration, the selected configuration (the first by the objective Optuna
maximised) and its vanilla baseline run again on ``N`` seeds the search never used (the ``N``
seeds after the search's last one) as a study of their own: MLflow experiment
``<study>-confirm`` (``trainables.contract.CONFIRM_SUFFIX``), Tune experiment beside the
search's. Its verdict (one configuration, so no family to correct) is the study's verdict;
the search-stage effect is shown beside it, labelled as biased upward.

With ``--confirm-seeds 0`` nothing runs, and the selected configuration's parent run and the
summary say ``selection-biased``. A resumed study resumes its confirmation too (or starts it,
if the search had not finished).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from study.options import StudyOptions
from study.tracking import StudyTracker
from trainables.contract import (
    CONFIRM_STAGE,
    CONFIRM_SUFFIX,
    CONFIRMED,
    PARENT,
    SELECTION_BIASED,
    SELECTION_TAG,
    STAGE_TAG,
    TERMINAL_STATUSES,
    VANILLA,
)


def selected(rows: list[dict]) -> dict | None:
    """The search's selected configuration: the best h-detach row by objective (``rows`` come
    best first from ``ranked_summary``); None unless the search tested more than one."""
    tested = [r for r in rows if r["arm"] != VANILLA and math.isfinite(r["objective"])]
    return tested[0] if len(tested) > 1 else None


def fresh_seeds(options: StudyOptions) -> list[int]:
    """The ``confirm_seeds`` seeds after every seed the search may use."""
    start = max(options.seed_values) + 1
    return list(range(start, start + options.confirm_seeds))


def confirmation_options(options: StudyOptions, row: dict) -> StudyOptions:
    """The confirmation study: the selected configuration (and, paired with it, vanilla) on
    fresh seeds, a fixed number of them, in its own MLflow and Tune experiment."""
    from ray.tune import Tuner

    config = {
        "p_detach": float(row["p_detach"]),
        "lr": float(row["lr"]),
        "clip": str(row["clip"]).lower() in ("true", "1"),
    }
    seeds = fresh_seeds(options)
    out = dataclasses.replace(
        options,
        search="fixed",
        configs=[config],
        trials=1,
        seeds=len(seeds),
        seed_offset=seeds[0],
        seed_list=None,
        experiment=options.experiment_name + CONFIRM_SUFFIX,
        asha=False,
        confirm_seeds=0,
        resume=False,
    )
    return dataclasses.replace(out, resume=Tuner.can_restore(out.experiment_dir))


def confirm_selected(
    options: StudyOptions,
    tracker: StudyTracker,
    rows: list[dict],
    run_study: Callable[[StudyOptions], Any],
):
    """Run (or label) the confirmation after a search; returns ``(confirmation, text)``:
    ``confirmation`` a dict (selected, seeds, the search-stage and confirmed rows) or None
    when there is nothing to confirm; ``text`` the lines for the console summary.
    ``run_study`` runs the confirmation study (``study.run.run_study``, passed in by its
    caller so that this module sits below the driver, not in a cycle with it)."""
    row = selected(rows)
    if row is None:
        return None, ""
    search_effect = row.get("mean", math.nan) - row.get("baseline_mean", math.nan)
    label = CONFIRMED if options.confirm_seeds else SELECTION_BIASED
    _tag_parent(tracker, row["config_id"], {SELECTION_TAG: label})
    head = (
        f"Selected configuration {row['config_id']}: search-stage difference "
        f"{search_effect:+.4g} on its {row.get('pairs', row['seeds'])} search seeds "
        "(biased upward: it was chosen because it looked best on them)"
    )
    if not options.confirm_seeds:
        return (
            {"selected": row["config_id"], "label": label, "search": row},
            f"{head}\nVerdict: {row.get('decision_adjusted') or '-'} ({SELECTION_BIASED}: "
            "not confirmed on fresh seeds, --confirm-seeds 0)",
        )
    from trainables.locking import StudyLock

    confirm = confirmation_options(options, row)
    # its own experiment: held like the search's, so no second driver runs it at once
    with StudyLock(confirm.tracking_uri, confirm.experiment_name):
        result = run_study(confirm)
    confirm_tracker = StudyTracker(confirm.tracking_uri, confirm.experiment_name)
    confirm_tracker.start()
    for run in confirm_tracker.find_runs(None):
        if run.status in TERMINAL_STATUSES:
            confirm_tracker.finish(run.run_id, {}, run.status, tags={STAGE_TAG: CONFIRM_STAGE})
    mine = next((r for r in result.configurations if r["config_id"] == row["config_id"]), {})
    seeds = confirm.seed_values
    effect = mine.get("mean", math.nan) - mine.get("baseline_mean", math.nan)
    verdict = mine.get("decision") or "undecided"
    text = (
        f"{head}\nConfirmation on {len(seeds)} fresh seeds ({seeds[0]}..{seeds[-1]}, MLflow "
        f"experiment {confirm.experiment_name}): difference {effect:+.4g}, p = "
        f"{mine.get('p_value', math.nan):.4g}\nVerdict ({CONFIRMED} on fresh seeds): {verdict}"
    )
    return (
        {
            "selected": row["config_id"],
            "label": label,
            "seeds": seeds,
            "experiment": confirm.experiment_name,
            "search": row,
            "confirmation": mine,
            "verdict": verdict,
            "errors": result.errors,
        },
        text,
    )


def _tag_parent(tracker: StudyTracker, cid: str, tags: dict) -> None:
    for run in tracker.find_runs(PARENT, config_id=cid):
        if run.status in TERMINAL_STATUSES:
            tracker.finish(run.run_id, {}, run.status, tags=tags)
