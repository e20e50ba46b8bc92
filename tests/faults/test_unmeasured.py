"""Issue 21, failure 4 (last part): a configuration whose every trial failed before measuring
anything (e.g. every checkpoint corrupt) is a failed Optuna trial, not an objective of 0.0.
A real OptunaSearch on a real in-memory Optuna storage, driven as Tune drives it."""

from __future__ import annotations

import math

import optuna

from tests.study.test_searcher import _finals, _searcher


def _hdetach(trials: dict) -> list[str]:
    return [tid for tid, t in trials.items() if t["arm"] == "h-detach"]


def test_a_configuration_that_never_measured_anything_is_failed_for_optuna():
    searcher = _searcher(max_configs=1)
    trials = {f"t{i}": searcher.suggest(f"t{i}") for i in range(4)}
    for tid in _hdetach(trials):
        searcher.on_trial_complete(tid, None, error=True)  # as Tune reports a dead trial
    (trial,) = searcher.searcher._ot_study.trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.value is None


def test_a_configuration_with_one_measured_block_keeps_its_failed_seeds_as_zero():
    searcher = _searcher(max_configs=1)
    trials = {f"t{i}": searcher.suggest(f"t{i}") for i in range(4)}
    first, second = _hdetach(trials)
    searcher.on_trial_complete(first, _finals([0.9, 0.8]))
    searcher.on_trial_complete(second, None, error=True)
    (trial,) = searcher.searcher._ot_study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and math.isfinite(trial.value)
