"""PairedSeedSearcher with a real OptunaSearch and a real (in-memory) Optuna storage."""

from __future__ import annotations

import math
import pickle

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study.searcher import OBJECTIVE, PairedSeedSearcher, config_id, objective_value


def _searcher(max_configs=2, blocks=((0, 1), (2, 3)), space=None, sampler=None, storage=None):
    space = space or {
        "p_detach": CategoricalDistribution([0.25, 0.5]),
        "lr": FloatDistribution(1e-4, 1e-2, log=True),
        "clip": CategoricalDistribution([True]),
    }
    inner = OptunaSearch(
        space=space,
        metric=OBJECTIVE,
        mode="max",
        sampler=sampler or optuna.samplers.TPESampler(seed=0),
        study_name="test",
        storage=storage or optuna.storages.InMemoryStorage(),
    )
    return PairedSeedSearcher(inner, seed_blocks=[list(b) for b in blocks], max_configs=max_configs)


def _finals(values):
    return {"finals": [{"best_val_acc": v, "best_val_score": v} for v in values]}


def test_each_configuration_runs_on_every_seed_block_after_its_baseline():
    searcher = _searcher(max_configs=1)
    trials = [searcher.suggest(f"t{i}") for i in range(4)]
    assert searcher.suggest("t4") == Searcher.FINISHED
    arms = [t["arm"] for t in trials]
    assert arms == ["vanilla", "vanilla", "h-detach", "h-detach"]  # baseline first
    assert [t["seeds"] for t in trials] == [[0, 1], [2, 3], [0, 1], [2, 3]]
    vanilla, hdetach = trials[0], trials[2]
    assert vanilla["p_detach"] == 0.0
    assert (vanilla["lr"], vanilla["clip"]) == (hdetach["lr"], hdetach["clip"])  # paired
    assert hdetach["config_id"] == config_id("h-detach", hdetach["p_detach"], hdetach["lr"], True)


def test_optuna_hears_one_seed_robust_value_when_all_blocks_are_done():
    searcher = _searcher(max_configs=1)
    trials = {f"t{i}": searcher.suggest(f"t{i}") for i in range(4)}
    study = searcher.searcher._ot_study
    hd = [tid for tid, t in trials.items() if t["arm"] == "h-detach"]
    searcher.on_trial_complete(hd[0], _finals([0.9, 0.8]))
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING  # one block is not enough
    searcher.on_trial_complete(hd[1], _finals([0.7, math.nan]))  # a diverged seed counts 0
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[0].value == pytest.approx(objective_value([0.9, 0.8, 0.7, 0.0]))
    assert len(study.trials) == 1  # the baseline is not an Optuna trial


def test_a_shared_baseline_is_scheduled_once():
    searcher = _searcher(
        max_configs=2,
        blocks=((0,),),
        space={
            "p_detach": CategoricalDistribution([0.25, 0.5]),
            "lr": CategoricalDistribution([0.01]),
            "clip": CategoricalDistribution([True]),
        },
        sampler=optuna.samplers.GridSampler(
            {"p_detach": [0.25, 0.5], "lr": [0.01], "clip": [True]}, seed=0
        ),
    )
    trials = []
    while (t := searcher.suggest(f"t{len(trials)}")) not in (None, Searcher.FINISHED):
        trials.append(t)
    ids = [t["config_id"] for t in trials]
    assert sorted(ids) == sorted(
        ["vanilla_p0_lr1.000e-02_clip", "hd_p0.25_lr1.000e-02_clip", "hd_p0.5_lr1.000e-02_clip"]
    )


def test_a_censored_block_is_scored_on_its_last_validation_accuracy():
    searcher = _searcher(max_configs=1, blocks=((0,),))
    trials = {f"t{i}": searcher.suggest(f"t{i}") for i in range(2)}
    hd = next(tid for tid, t in trials.items() if t["arm"] == "h-detach")
    searcher.on_trial_complete(
        hd, {"members": [{"val_acc": 0.4, "val_score": 0.4}]}
    )  # no finals: stopped early
    assert searcher.searcher._ot_study.trials[0].value == pytest.approx(0.4)


def test_state_round_trips_without_the_inner_searcher():
    searcher = _searcher(max_configs=1)
    searcher.suggest("t0")
    state = searcher.get_state()
    assert "searcher" not in state
    fresh = _searcher(max_configs=1)
    fresh.set_state(state)
    assert fresh.trials == searcher.trials and fresh.queue == searcher.queue


def test_a_configuration_drawn_after_the_last_snapshot_is_taken_up_again_on_resume(tmp_path):
    """Tune restores the searcher from its last periodic snapshot; the Optuna journal holds
    every draw. A configuration drawn after the snapshot (an Optuna trial still RUNNING that
    the restored searcher does not know) comes back with the same parameters in the same
    slot, instead of a fresh sample that would leave it half-run."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = str(tmp_path / "study.journal")

    def driver():
        return _searcher(blocks=((0,),), storage=JournalStorage(JournalFileBackend(journal)))

    killed = driver()
    before = [killed.suggest("t0"), killed.suggest("t1")]  # config-0 and its baseline
    state, inner = pickle.dumps(killed.get_state()), tmp_path / "inner.pkl"
    killed.save(str(inner))  # the last snapshot, pickled as Tune pickles it
    after = [killed.suggest("t2"), killed.suggest("t3")]  # config-1 drawn; then the kill
    assert after[1]["config_id"] != before[1]["config_id"]

    resumed = driver()
    resumed.set_state(pickle.loads(state))
    resumed.restore(str(inner))
    assert [resumed.suggest("t2"), resumed.suggest("t3")] == after
    study = resumed.searcher._ot_study
    assert len(study.trials) == 2  # nothing drawn afresh
    resumed.on_trial_complete("t3", _finals([0.5]))
    assert study.trials[1].state == optuna.trial.TrialState.COMPLETE  # told, not orphaned
    assert resumed.suggest("t4") in (None, Searcher.FINISHED)


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("mean", 0.5),
        ("worst", 0.2),
        ("mean-se", 0.5 - math.sqrt(((0.3**2) * 2 + 0) / 2) / math.sqrt(3)),
        ("iqm", 0.5),
    ],
)
def test_objective_value(kind, expected):
    assert objective_value([0.2, 0.5, 0.8], kind) == pytest.approx(expected)


def test_objective_counts_failures_as_zero():
    assert objective_value([1.0, math.nan], "mean") == 0.5
